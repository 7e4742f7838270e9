//! The secret's bytes never show up in Debug/Display, errors, metadata, or files on disk.

use tether_vault::{SecretBox, Vault, VaultError};

use crate::file_backend::walk;
use crate::{contains, open_file_vault, secret};

const CANARY: &[u8] = b"S3CR3T-canary-value-7f1e";

fn check_text(what: &str, s: &str) {
    assert!(
        !contains(s.as_bytes(), CANARY),
        "{what} leaks the secret: {s}"
    );
    assert!(
        !s.contains("S3CR3T"),
        "{what} leaks part of the secret: {s}"
    );
}

fn check_err(what: &str, e: &VaultError) {
    check_text(what, &e.to_string());
    check_text(what, &format!("{e:?}"));
}

#[test]
fn no_leaks_in_debug_errors_metadata_or_files() {
    let state = tempfile::tempdir().unwrap();
    let v = open_file_vault(state.path());
    let b = secret(CANARY);
    check_text(
        "SecretBox Debug",
        &format!("{b:?} {b} {:?} {:#?}", Some(&b), vec![&b]),
    );
    v.set("canary", b).unwrap();
    let got = v.get("canary").unwrap();
    check_text("get Debug", &format!("{got:?}"));
    check_text("Vault Debug", &format!("{v:?}"));
    check_text(
        "list JSON",
        &serde_json::to_string(&v.list().unwrap()).unwrap(),
    );
    check_text("info", &format!("{:?}", v.info("canary").unwrap()));

    // Error paths that handle the value.
    let too_big = [CANARY, &vec![b'x'; tether_vault::MAX_SECRET_LEN]].concat();
    check_err(
        "TooLarge",
        &SecretBox::from_reader(&too_big[..], tether_vault::MAX_SECRET_LEN).unwrap_err(),
    );
    check_err(
        "TooLarge from_slice",
        &SecretBox::from_slice(&too_big).unwrap_err(),
    );
    let path = v.file_path("canary").unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    check_err("CorruptFile", &v.get("canary").unwrap_err());
    check_err("rotate", &v.rotate("canary").unwrap_err());
    std::fs::write(&path, &good).unwrap();
    check_err("set empty", &v.set("canary", secret(b"")).unwrap_err());

    // Nothing on disk holds the plaintext: secret files, index, key.
    for f in walk(state.path()) {
        let data = std::fs::read(&f).unwrap();
        assert!(
            !contains(&data, CANARY),
            "{} holds the plaintext",
            f.display()
        );
    }
    drop(v);
    let v: Vault = open_file_vault(state.path());
    assert!(v.get("canary").unwrap().unwrap().ct_eq_bytes(CANARY));
}
