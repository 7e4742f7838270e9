use tether_vault::{BackendChoice, VaultConfig};

#[test]
fn defaults_and_unknown_keys() {
    let c: VaultConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c, VaultConfig::default());
    assert_eq!(c.backend, BackendChoice::Auto);
    assert!(c.secure_memory_required);
    assert_eq!(c.keyring_service, "tether");
    let c: VaultConfig =
        serde_json::from_str(r#"{"backend":"credentials","secure_memory_required":false}"#)
            .unwrap();
    assert_eq!(c.backend, BackendChoice::Credentials);
    assert!(!c.secure_memory_required);
    let e =
        serde_json::from_str::<VaultConfig>(r#"{"backend":"file","keyfile":"/x"}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field `keyfile`"), "{e}");
    let e = serde_json::from_str::<VaultConfig>(r#"{"backend":"vault"}"#).unwrap_err();
    assert!(e.to_string().contains("unknown variant `vault`"), "{e}");
}

#[test]
fn validate_rejects_relative_paths_and_bad_names() {
    let c = VaultConfig {
        key_file: Some("rel/key".into()),
        ..VaultConfig::default()
    };
    let (field, reason) = c.validate().unwrap_err();
    assert_eq!(field, "vault.key_file", "{reason}");
    let c = VaultConfig {
        keyring_service: "a b".into(),
        ..VaultConfig::default()
    };
    assert_eq!(c.validate().unwrap_err().0, "vault.keyring_service");
    let c = VaultConfig {
        key_credential: Some("../x".into()),
        ..VaultConfig::default()
    };
    assert_eq!(c.validate().unwrap_err().0, "vault.key_credential");
}
