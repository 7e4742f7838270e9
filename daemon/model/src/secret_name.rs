//! The syntax of secret names, shared by the vault (which stores under them) and the config
//! checks (which name them offline, without linking the vault).

/// The namespace of the daemon's own keys (WireGuard, SSH, invite and audit keys). Names in it
/// are reserved: the secrets API, the CLI and plugin manifests can neither write nor grant them,
/// in any letter case (a backend may fold case).
pub const RESERVED_SECRET_PREFIX: &str = "tetherd.";

/// Why a reserved name is refused, and what to do instead; shared by every refusal.
pub const RESERVED_SECRET_HINT: &str = "names starting with \"tetherd.\" are the daemon's own keys: they are created and rotated only by tetherd itself; pick another name for your secret";

/// True when `name` lies in the daemon's reserved namespace ([`RESERVED_SECRET_PREFIX`]),
/// compared without regard to ASCII case.
pub fn is_reserved_secret_name(name: &str) -> bool {
    name.len() >= RESERVED_SECRET_PREFIX.len()
        && name.as_bytes()[..RESERVED_SECRET_PREFIX.len()]
            .eq_ignore_ascii_case(RESERVED_SECRET_PREFIX.as_bytes())
}

/// Longest accepted secret name.
pub const MAX_SECRET_NAME_LEN: usize = 64;

/// Checks a secret name: 1–64 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit (a safe path component for every backend). The error says what is wrong.
pub fn check_secret_name(name: &str) -> Result<(), &'static str> {
    let Some(first) = name.chars().next() else {
        return Err("it is empty");
    };
    if name.len() > MAX_SECRET_NAME_LEN {
        return Err("it is too long");
    }
    if !first.is_ascii_alphanumeric() {
        return Err("it must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("it contains a character outside A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_namespace_is_reserved_in_any_case() {
        for n in [
            "tetherd.audit-hmac",
            "TETHERD.x",
            "TetherD.invite-key",
            "tetherd.",
        ] {
            assert!(is_reserved_secret_name(n), "{n}");
        }
        for n in [
            "tetherd",
            "tetherdx",
            "my-tetherd.key",
            "slack",
            "",
            "tether.x",
        ] {
            assert!(!is_reserved_secret_name(n), "{n}");
        }
    }
}
