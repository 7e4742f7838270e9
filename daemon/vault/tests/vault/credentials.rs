use std::os::unix::fs::PermissionsExt;

use tether_vault::{BackendChoice, BackendKind, Vault, VaultConfig, VaultError};

use crate::{open_file_vault, secret};

#[test]
fn read_only_credentials_backend() {
    let state = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(
        creds.path().join("slack-webhook"),
        b"https://hooks.example/T0/B0/abc",
    )
    .unwrap();
    std::fs::write(creds.path().join("not a name"), b"x").unwrap();
    let cfg = VaultConfig {
        backend: BackendChoice::Credentials,
        credentials_dir: Some(creds.path().to_owned()),
        ..VaultConfig::default()
    };
    let v = Vault::open(&cfg, state.path()).unwrap();
    assert_eq!(v.backend(), BackendKind::Credentials);
    let got = v.get("slack-webhook").unwrap().unwrap();
    assert!(got.ct_eq_bytes(b"https://hooks.example/T0/B0/abc"));
    assert!(v.get("absent").unwrap().is_none());
    let names: Vec<_> = v.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["slack-webhook"]);
    let e = v.set("x", secret(b"v")).unwrap_err();
    assert!(
        matches!(
            e,
            VaultError::ReadOnly {
                operation: "set",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("LoadCredentialEncrypted=x"), "{e}");
    assert!(matches!(
        v.remove("slack-webhook").unwrap_err(),
        VaultError::ReadOnly { .. }
    ));
    assert!(matches!(
        v.rotate("slack-webhook").unwrap_err(),
        VaultError::ReadOnly { .. }
    ));
    let e = v.get_or_generate("audit-hmac", 32).unwrap_err().to_string();
    assert!(
        e.contains("systemd-creds encrypt --name=audit-hmac")
            && e.contains("LoadCredentialEncrypted=audit-hmac"),
        "{e}"
    );
}

#[test]
fn credentials_backend_needs_a_directory() {
    let state = tempfile::tempdir().unwrap();
    let cfg = VaultConfig {
        backend: BackendChoice::Credentials,
        credentials_dir: Some(state.path().join("nope")),
        ..VaultConfig::default()
    };
    let e = Vault::open(&cfg, state.path()).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn file_backend_key_from_credential() {
    let state = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let key = creds.path().join("tether-vault-key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let cfg = VaultConfig {
        backend: BackendChoice::File,
        key_credential: Some("tether-vault-key".into()),
        credentials_dir: Some(creds.path().to_owned()),
        ..VaultConfig::default()
    };
    let v = Vault::open(&cfg, state.path()).unwrap();
    v.set("token", secret(b"siem-token-123")).unwrap();
    assert!(
        v.get("token")
            .unwrap()
            .unwrap()
            .ct_eq_bytes(b"siem-token-123")
    );
    assert!(
        !state.path().join("vault/vault.key").exists(),
        "no key file when the key is a credential"
    );
    // The same files do not decrypt with a different (generated) key.
    let other = open_file_vault(state.path());
    let e = other.get("token").unwrap_err().to_string();
    assert!(e.contains("vault.key") && e.contains("missing"), "{e}");

    // Wrong-length credential key: precise error.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key, [7u8; 31]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let v = Vault::open(&cfg, state.path()).unwrap();
    let e = v.get("token").unwrap_err().to_string();
    assert!(e.contains("31 bytes, expected exactly 32"), "{e}");
}
