use std::os::unix::fs::{MetadataExt, PermissionsExt};

use tether_vault::{BackendKind, Vault, VaultError, key_len};

use crate::{contains, file_config, open_file_vault, secret};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn round_trip_list_remove_and_reopen() {
    let state = tempfile::tempdir().unwrap();
    let v = open_file_vault(state.path());
    assert_eq!(v.backend(), BackendKind::File);
    assert!(v.get("slack").unwrap().is_none());
    assert!(v.list().unwrap().is_empty());
    assert!(
        !v.key_location().exists(),
        "key is created on first write, not on open"
    );

    let info = v
        .set("slack", secret(b"https://hooks.slack.example/abc"))
        .unwrap();
    assert_eq!(
        (info.version, info.generated, info.rotated),
        (1, false, None)
    );
    assert_eq!(mode(&v.key_location()), 0o400);
    assert_eq!(mode(v.dir()), 0o700);
    let file = v.file_path("slack").unwrap();
    assert_eq!(mode(&file), 0o600);
    assert!(
        v.get("slack")
            .unwrap()
            .unwrap()
            .ct_eq_bytes(b"https://hooks.slack.example/abc")
    );

    // Replace: version bumps, created stays, rotated set.
    let info2 = v.set("slack", secret(b"new-value")).unwrap();
    assert_eq!(info2.version, 2);
    assert_eq!(info2.created, info.created);
    assert!(info2.rotated.is_some());

    // A fresh handle (daemon restart) sees the same data.
    drop(v);
    let v = open_file_vault(state.path());
    assert!(v.get("slack").unwrap().unwrap().ct_eq_bytes(b"new-value"));
    let list = v.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].backend, list[0].version),
        ("slack", BackendKind::File, 2)
    );

    v.remove("slack").unwrap();
    assert!(v.get("slack").unwrap().is_none());
    assert!(!file.exists());
    let e = v.remove("slack").unwrap_err();
    assert!(matches!(e, VaultError::NotFound { .. }), "{e}");
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(v.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn generate_rotate_and_refusals() {
    let state = tempfile::tempdir().unwrap();
    let v = open_file_vault(state.path());
    let k1 = v
        .get_or_generate("audit-hmac", key_len::HMAC_SHA256)
        .unwrap();
    assert_eq!(k1.len(), 32);
    let again = v.get_or_generate("audit-hmac", 32).unwrap();
    assert_eq!(k1, again, "get_or_generate returns the stored key");
    let info = v.rotate("audit-hmac").unwrap();
    assert!(info.generated && info.version == 2 && info.rotated.is_some());
    let k2 = v.get("audit-hmac").unwrap().unwrap();
    assert_eq!(k2.len(), 32);
    assert_ne!(k1, k2);

    v.set("webhook", secret(b"operator-set")).unwrap();
    let e = v.rotate("webhook").unwrap_err();
    assert!(
        matches!(e, VaultError::NotGenerated { .. })
            && e.to_string().contains("tether secret set webhook"),
        "{e}"
    );
    assert!(matches!(
        v.rotate("nope").unwrap_err(),
        VaultError::NotFound { .. }
    ));
    let e = v.set("empty", secret(b"")).unwrap_err();
    assert!(matches!(e, VaultError::EmptySecret { .. }), "{e}");
    let e = v.set("bad/name", secret(b"x")).unwrap_err();
    assert!(
        matches!(e, VaultError::InvalidName { .. }) && e.to_string().contains("bad/name"),
        "{e}"
    );
    assert!(matches!(
        v.get("").unwrap_err(),
        VaultError::InvalidName { .. }
    ));
}

#[test]
fn concurrent_get_or_generate_yields_one_key() {
    let state = tempfile::tempdir().unwrap();
    let v = open_file_vault(state.path());
    let keys: Vec<_> = (0..4)
        .map(|_| {
            let v = v.clone();
            std::thread::spawn(move || v.get_or_generate("invite-key", 32).unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]));
    assert_eq!(v.list().unwrap()[0].version, 1);
}

#[test]
fn every_write_uses_a_fresh_nonce_and_no_plaintext_on_disk() {
    let state = tempfile::tempdir().unwrap();
    let v = open_file_vault(state.path());
    let plain = b"PLAINTEXT-MARKER-0123456789";
    v.set("a", secret(plain)).unwrap();
    let f1 = std::fs::read(v.file_path("a").unwrap()).unwrap();
    v.set("a", secret(plain)).unwrap();
    let f2 = std::fs::read(v.file_path("a").unwrap()).unwrap();
    assert_eq!(&f1[..8], b"TTHRVLT1");
    assert_ne!(f1[16..28], f2[16..28], "nonce reused");
    assert_eq!(f1.len(), 8 + 8 + 12 + plain.len() + 16);
    for entry in walk(state.path()) {
        let data = std::fs::read(&entry).unwrap();
        assert!(
            !contains(&data, plain),
            "plaintext found in {}",
            entry.display()
        );
    }
}

/// All files under `dir`.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

fn assert_corrupt(v: &Vault, name: &str, path: &std::path::Path, needle: &str) {
    let before = std::fs::read(path).unwrap();
    let e = v.get(name).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, VaultError::CorruptFile { .. }), "{msg}");
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains(needle),
        "{msg}"
    );
    // get_or_generate and rotate refuse too; nothing is overwritten.
    assert!(v.get_or_generate(name, 32).is_err());
    assert!(v.rotate(name).is_err());
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "a corrupt file was modified"
    );
}

#[test]
fn tampered_truncated_swapped_and_rolled_back_files() {
    let state = tempfile::tempdir().unwrap();
    let v = open_file_vault(state.path());
    v.get_or_generate("k1", 32).unwrap();
    v.get_or_generate("k2", 32).unwrap();
    let p1 = v.file_path("k1").unwrap();
    let p2 = v.file_path("k2").unwrap();
    let good1 = std::fs::read(&p1).unwrap();

    // One flipped ciphertext bit.
    let mut bad = good1.clone();
    bad[30] ^= 1;
    std::fs::write(&p1, &bad).unwrap();
    assert_corrupt(&v, "k1", &p1, "authentication failed");
    // Edited version field (AAD binds it).
    let mut bad = good1.clone();
    bad[15] ^= 1;
    std::fs::write(&p1, &bad).unwrap();
    assert_corrupt(&v, "k1", &p1, "authentication failed");
    // Truncated: tag cut off, and down to a few bytes.
    std::fs::write(&p1, &good1[..good1.len() - 5]).unwrap();
    assert_corrupt(&v, "k1", &p1, "authentication failed");
    std::fs::write(&p1, &good1[..20]).unwrap();
    assert_corrupt(&v, "k1", &p1, "truncated: 20 bytes");
    std::fs::write(&p1, b"").unwrap();
    assert_corrupt(&v, "k1", &p1, "truncated: 0 bytes");
    // Bad magic.
    let mut bad = good1.clone();
    bad[0] = b'X';
    std::fs::write(&p1, &bad).unwrap();
    assert_corrupt(&v, "k1", &p1, "bad magic");
    // Another secret's file copied over this one (AAD binds the name).
    std::fs::copy(&p2, &p1).unwrap();
    assert_corrupt(&v, "k1", &p1, "authentication failed");

    // Restore: works again.
    std::fs::write(&p1, &good1).unwrap();
    assert_eq!(v.get("k1").unwrap().unwrap().len(), 32);

    // Rollback: rotate, then put the old (authentic) file back.
    v.rotate("k1").unwrap();
    std::fs::write(&p1, &good1).unwrap();
    let e = v.get("k1").unwrap_err();
    assert!(
        matches!(
            e,
            VaultError::Rollback {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(&p1.display().to_string()));

    // Missing file the index lists: precise, and never silently regenerated.
    std::fs::remove_file(&p2).unwrap();
    let e = v.get_or_generate("k2", 32).unwrap_err();
    assert!(
        matches!(e, VaultError::Inconsistent { .. }) && e.to_string().contains("is missing"),
        "{e}"
    );
    assert!(!p2.exists());
}

#[test]
fn key_file_permissions_and_shape_are_enforced() {
    let state = tempfile::tempdir().unwrap();
    let v = open_file_vault(state.path());
    v.set("x", secret(b"value")).unwrap();
    let key = v.key_location();
    drop(v);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = open_file_vault(state.path())
        .get("x")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mode 0644") && e.contains(&format!("chmod 0400 {}", key.display())),
        "{e}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o440)).unwrap();
    assert!(
        open_file_vault(state.path())
            .get("x")
            .unwrap_err()
            .to_string()
            .contains("mode 0440")
    );

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let good = std::fs::read(&key).unwrap();
    std::fs::write(&key, &good[..16]).unwrap();
    let e = open_file_vault(state.path())
        .get("x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("16 bytes, expected exactly 32"), "{e}");
    std::fs::write(&key, [&good[..], b"\n"].concat()).unwrap();
    assert!(
        open_file_vault(state.path())
            .get("x")
            .unwrap_err()
            .to_string()
            .contains("33 bytes")
    );

    // A different 32-byte key: authentication fails, file untouched.
    std::fs::write(&key, [1u8; 32]).unwrap();
    let v = open_file_vault(state.path());
    let e = v.get("x").unwrap_err().to_string();
    assert!(e.contains("different key"), "{e}");

    // Configured key file path that doesn't exist yet: created 0400 on first write.
    let cfg = tether_vault::VaultConfig {
        key_file: Some(state.path().join("keys/custom.key")),
        ..file_config()
    };
    let v = Vault::open(&cfg, &state.path().join("other")).unwrap();
    v.set("y", secret(b"v")).unwrap();
    assert_eq!(mode(&state.path().join("keys/custom.key")), 0o400);
}

#[test]
fn corrupt_index_is_reported() {
    let state = tempfile::tempdir().unwrap();
    open_file_vault(state.path())
        .set("x", secret(b"value"))
        .unwrap();
    let idx = state.path().join("vault/index.json");
    std::fs::write(&idx, b"{ not json").unwrap();
    let e = Vault::open(&file_config(), state.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("index.json") && e.contains("unreadable"), "{e}");
}
