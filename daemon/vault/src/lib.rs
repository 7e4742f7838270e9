//! Secret vault: locked, sealed memory (memsec) and keyring / systemd-credentials / AES-256-GCM file backends.
