//! `tether plugin keygen|sign|verify|new`: the real CLI on real files, real components from
//! plugins/build.sh, scaffolds built with cargo for wasm32-wasip2, and real daemons loading what
//! the CLI signed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tether_e2e::{Daemon, bin, code, plugin_component, repo, stderr, stdout};

/// Runs `tether ARGS` in `dir` (no daemon involved).
fn tether(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("tether"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run tether")
}

/// Runs `tether --json ARGS` in `dir`, asserts exit 0 and returns the JSON.
fn tether_json(dir: &Path, args: &[&str]) -> Value {
    let out = tether(dir, &[&["--json"], args].concat());
    assert_eq!(
        code(&out),
        0,
        "tether {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// A key made with `tether plugin keygen --json --out DIR/NAME`.
fn keygen(dir: &Path, name: &str) -> Value {
    tether_json(dir, &["plugin", "keygen", "--out", name])
}

/// A copy of a built test component in `dir`.
fn component_copy(dir: &Path, crate_name: &str) -> PathBuf {
    let dst = dir.join(format!("{crate_name}.wasm"));
    std::fs::copy(plugin_component(crate_name), &dst).unwrap();
    dst
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn manifest_top(manifest: &Path) -> String {
    format!("plugins_manifest = {:?}\n", manifest.display().to_string())
}

#[test]
fn keygen_sign_verify_round_trip_with_json() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();

    let key = keygen(dir, "signing.key");
    let kid = key["key_id"].as_str().unwrap().to_owned();
    let public = key["public_key"].as_str().unwrap().to_owned();
    assert!(is_hex(&kid, 16), "{key}");
    assert_eq!(key["private_key_file"], "signing.key");
    assert_eq!(key["public_key_file"], "signing.key.pub");
    assert_eq!(
        key["trusted_keys_line"],
        format!("trusted_keys = [\"{public}\"]")
    );
    let mode = std::fs::metadata(dir.join("signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "private key mode {mode:o}");
    assert_eq!(
        std::fs::read_to_string(dir.join("signing.key.pub"))
            .unwrap()
            .trim(),
        public
    );
    // The private key is never printed.
    let private = std::fs::read_to_string(dir.join("signing.key")).unwrap();
    let seed = private.lines().nth(1).unwrap();
    assert!(!key.to_string().contains(seed));

    // Text mode prints the id, the public key and the line to paste.
    let text = tether(dir, &["plugin", "keygen", "--out", "other.key"]);
    assert_eq!(code(&text), 0, "{}", stderr(&text));
    let other_pub = std::fs::read_to_string(dir.join("other.key.pub")).unwrap();
    assert!(
        stdout(&text).contains(&format!("trusted_keys = [\"{}\"]", other_pub.trim())),
        "{}",
        stdout(&text)
    );

    // Sign, then verify: without trusted keys (integrity + signature), with the key, with --json.
    let wasm = component_copy(dir, "allow_all");
    let signed = tether_json(
        dir,
        &["plugin", "sign", "allow_all.wasm", "--key", "signing.key"],
    );
    assert_eq!(signed["key_id"], kid.as_str());
    assert_eq!(signed["file"], "allow_all.wasm");
    assert_eq!(signed["signature_file"], "allow_all.wasm.sig");
    let sha = signed["sha256"].as_str().unwrap().to_owned();
    assert!(is_hex(&sha, 64), "{signed}");
    assert!(wasm.with_extension("wasm.sig").is_file());

    let ok = tether(dir, &["plugin", "verify", "allow_all.wasm"]);
    assert_eq!(code(&ok), 0, "{}{}", stdout(&ok), stderr(&ok));
    assert!(
        stdout(&ok).starts_with(&format!("OK signed by {kid}")),
        "{}",
        stdout(&ok)
    );
    assert!(stdout(&ok).contains("not checked against trusted keys"));

    let v = tether_json(
        dir,
        &[
            "plugin",
            "verify",
            "allow_all.wasm",
            "--trusted-key",
            &public,
        ],
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["key_id"], kid.as_str());
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(v["trust_checked"], true);
    assert_eq!(v["signature_file"], "allow_all.wasm.sig");
    // A .pub file works as --trusted-key too, and so does a manifest's trusted_keys.
    std::fs::write(
        dir.join("plugins.toml"),
        format!("{}\n", key["trusted_keys_line"].as_str().unwrap()),
    )
    .unwrap();
    for args in [
        &["--trusted-key", "signing.key.pub"][..],
        &["--manifest", "plugins.toml"][..],
    ] {
        let v = tether_json(
            dir,
            &[&["plugin", "verify", "allow_all.wasm"], args].concat(),
        );
        assert_eq!(
            (v["ok"].as_bool(), v["trust_checked"].as_bool()),
            (Some(true), Some(true))
        );
    }

    // A signature written elsewhere is found with --sig.
    let s = tether_json(
        dir,
        &[
            "plugin",
            "sign",
            "allow_all.wasm",
            "--key",
            "signing.key",
            "--out",
            "elsewhere.sig",
        ],
    );
    assert_eq!(s["signature_file"], "elsewhere.sig");
    let v = tether_json(
        dir,
        &[
            "plugin",
            "verify",
            "allow_all.wasm",
            "--sig",
            "elsewhere.sig",
        ],
    );
    assert_eq!(v["ok"], true);
}

#[test]
fn keygen_never_overwrites_a_key_without_force() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let first = keygen(dir, "k");
    let before = std::fs::read(dir.join("k")).unwrap();

    let again = tether(dir, &["plugin", "keygen", "--out", "k"]);
    assert_eq!(code(&again), 2, "{}", stdout(&again));
    assert!(
        stderr(&again).contains("already exists") && stderr(&again).contains("--force"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(dir.join("k")).unwrap(),
        before,
        "key untouched"
    );

    // The default path is ./tether-plugin.key; a stray .pub blocks it as well.
    std::fs::write(dir.join("tether-plugin.key.pub"), "stale\n").unwrap();
    let stray = tether(dir, &["plugin", "keygen"]);
    assert_eq!(code(&stray), 2, "{}", stderr(&stray));
    assert!(!dir.join("tether-plugin.key").exists());

    let forced = tether_json(dir, &["plugin", "keygen", "--out", "k", "--force"]);
    assert_eq!(forced["replaced"], true);
    assert_ne!(forced["key_id"], first["key_id"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("k"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "replaced key mode {mode:o}");
    assert_ne!(std::fs::read(dir.join("k")).unwrap(), before);
}

#[test]
fn verify_names_each_failure_and_exits_1() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let key = keygen(dir, "k");
    let stranger = keygen(dir, "stranger");
    component_copy(dir, "deny_all");

    // No signature file.
    let out = tether(dir, &["plugin", "verify", "deny_all.wasm"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stderr(&out).contains("is not signed"), "{}", stderr(&out));

    tether_json(dir, &["plugin", "sign", "deny_all.wasm", "--key", "k"]);

    // Signed by a key that is not trusted: named, with its key id.
    let stranger_pub = stranger["public_key"].as_str().unwrap();
    let out = tether(
        dir,
        &[
            "plugin",
            "verify",
            "deny_all.wasm",
            "--trusted-key",
            stranger_pub,
        ],
    );
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let kid = key["key_id"].as_str().unwrap();
    assert!(
        stderr(&out).contains("not trusted") && stderr(&out).contains(kid),
        "{}",
        stderr(&out)
    );
    let out = tether(
        dir,
        &[
            "--json",
            "plugin",
            "verify",
            "deny_all.wasm",
            "--trusted-key",
            stranger_pub,
        ],
    );
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "untrusted_key");
    assert_eq!(v["key_id"], kid);
    // ... also when the trusted keys come from a manifest (an empty list trusts nobody).
    std::fs::write(dir.join("plugins.toml"), "trusted_keys = []\n").unwrap();
    let out = tether(
        dir,
        &[
            "plugin",
            "verify",
            "deny_all.wasm",
            "--manifest",
            "plugins.toml",
        ],
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("trusted_keys of plugins.toml"),
        "{}",
        stderr(&out)
    );

    // A forged signature file (digest edited): bad signature.
    let sig_path = dir.join("deny_all.wasm.sig");
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    let forged: String = sig
        .lines()
        .map(|l| {
            if l.starts_with("sha256: ") {
                format!("sha256: {}\n", "0".repeat(64))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&sig_path, forged).unwrap();
    let out = tether(dir, &["--json", "plugin", "verify", "deny_all.wasm"]);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["error"]["code"], "bad_signature", "{v}");
    std::fs::write(&sig_path, sig).unwrap();

    // The component changed after signing: tampered, both digests named.
    let mut bytes = std::fs::read(dir.join("deny_all.wasm")).unwrap();
    bytes.extend_from_slice(b"\0\0\0\0");
    std::fs::write(dir.join("deny_all.wasm"), &bytes).unwrap();
    let pub_key = key["public_key"].as_str().unwrap();
    let out = tether(
        dir,
        &[
            "plugin",
            "verify",
            "deny_all.wasm",
            "--trusted-key",
            pub_key,
        ],
    );
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("modified after signing") && stderr(&out).contains("sha256"),
        "{}",
        stderr(&out)
    );
    let out = tether(dir, &["--json", "plugin", "verify", "deny_all.wasm"]);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["error"]["code"], "tampered", "{v}");

    // Wrong inputs are usage errors (2), not verification failures.
    let out = tether(dir, &["plugin", "verify", "missing.wasm"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = tether(
        dir,
        &["plugin", "verify", "deny_all.wasm", "--trusted-key", "nope"],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = tether(dir, &["plugin", "sign", "k.pub", "--key", "k"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("not a WASM component"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_daemon_loads_a_plugin_signed_by_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let key = keygen(dir, "k");
    component_copy(dir, "deny_all");
    tether_json(dir, &["plugin", "sign", "deny_all.wasm", "--key", "k"]);
    let manifest = dir.join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "{}\n\n[[plugin]]\nname = \"deny-all\"\nkind = \"policy\"\npath = \"deny_all.wasm\"\n",
            key["trusted_keys_line"].as_str().unwrap()
        ),
    )
    .unwrap();
    // What the CLI says about it is what the daemon does.
    let v = tether_json(
        dir,
        &[
            "plugin",
            "verify",
            "deny_all.wasm",
            "--manifest",
            "plugins.toml",
        ],
    );
    assert_eq!(v["ok"], true);

    let daemon = Daemon::start_top("hub", &manifest_top(&manifest), "");
    let list = daemon.tether(&["--json", "plugin", "list"]);
    let v: Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(v["plugins"][0]["name"], "deny-all", "{v}");
    assert_eq!(v["plugins"][0]["signer"], key["key_id"], "{v}");
    let out = daemon.tether(&["policy", "check", "--", "uptime"]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("deny-all says no"),
        "{}",
        stdout(&out)
    );
}

/// Builds a scaffolded crate for wasm32-wasip2 into plugins/target, where plugins/build.sh has
/// already compiled the SDK's dependencies (same lock file, same toolchain, so nothing but the
/// new crate is compiled, offline). Returns a copy of the component in `out_dir`.
fn build_scaffold(crate_dir: &Path, crate_name: &str, out_dir: &Path) -> PathBuf {
    plugin_component("allow_all");
    let repo = repo();
    std::fs::copy(
        repo.join("plugins/Cargo.lock"),
        crate_dir.join("Cargo.lock"),
    )
    .unwrap();
    std::fs::copy(
        repo.join("rust-toolchain.toml"),
        crate_dir.join("rust-toolchain.toml"),
    )
    .unwrap();
    let target = repo.join("plugins/target");
    let out = Command::new("cargo")
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-wasip2",
        ])
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building the scaffold failed:\n{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("warning"),
        "the scaffold builds with warnings:\n{}",
        stderr(&out)
    );
    let built = target
        .join("wasm32-wasip2/release")
        .join(format!("{crate_name}.wasm"));
    let header = std::fs::read(&built).unwrap();
    assert_eq!(
        header[..8],
        [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00],
        "{} is not a component",
        built.display()
    );
    let dst = out_dir.join(format!("{crate_name}.wasm"));
    std::fs::copy(&built, &dst).unwrap();
    dst
}

#[test]
fn a_scaffolded_policy_plugin_builds_signs_loads_and_answers() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let v = tether_json(
        dir,
        &[
            "plugin",
            "new",
            "e2e-scaffold-policy",
            "--kind",
            "policy",
            "--dir",
            "scaffold",
        ],
    );
    assert_eq!(v["kind"], "policy");
    assert!(
        v["manifest_entry"]
            .as_str()
            .unwrap()
            .contains("kind = \"policy\""),
        "{v}"
    );
    let sdk = std::fs::canonicalize(repo().join("plugin-sdk")).unwrap();
    assert_eq!(v["sdk_path"], sdk.display().to_string());
    for f in ["Cargo.toml", "README.md", ".gitignore", "src/lib.rs"] {
        assert!(dir.join("scaffold").join(f).is_file(), "{f}");
    }
    let steps = v["next_steps"].to_string();
    assert!(
        steps.contains("rustup target add wasm32-wasip2")
            && steps.contains("cargo build --target wasm32-wasip2 --release")
            && steps.contains("tether plugin sign"),
        "{steps}"
    );

    build_scaffold(&dir.join("scaffold"), "e2e_scaffold_policy", dir);
    let key = keygen(dir, "k");
    tether_json(
        dir,
        &["plugin", "sign", "e2e_scaffold_policy.wasm", "--key", "k"],
    );
    let manifest = dir.join("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "{}\n\n[[plugin]]\nname = \"e2e-scaffold-policy\"\nkind = \"policy\"\npath = \"e2e_scaffold_policy.wasm\"\n[plugin.config]\nforbidden = \"reboot\"\n",
            key["trusted_keys_line"].as_str().unwrap()
        ),
    )
    .unwrap();
    let daemon = Daemon::start_top("hub", &manifest_top(&manifest), "");
    let out = daemon.tether(&["policy", "check", "--", "reboot"]);
    assert_eq!(code(&out), 2, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("`reboot` is not allowed"),
        "{}",
        stdout(&out)
    );
    let out = daemon.tether(&["policy", "check", "--", "uptime"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn every_kind_scaffolds_builds_and_loads_as_its_world() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let key = keygen(dir, "k");
    let mut manifest = format!("{}\n", key["trusted_keys_line"].as_str().unwrap());
    for (kind, manifest_kind) in [
        ("alert-sink", "alert_sink"),
        ("audit-sink", "audit_sink"),
        ("enrollment-hook", "enrollment_hook"),
    ] {
        let name = format!("e2e-scaffold-{kind}");
        let crate_name = name.replace('-', "_");
        let v = tether_json(
            dir,
            &["plugin", "new", &name, "--kind", kind, "--dir", &name],
        );
        assert!(
            v["manifest_entry"]
                .as_str()
                .unwrap()
                .contains(&format!("kind = \"{manifest_kind}\"")),
            "{v}"
        );
        build_scaffold(&dir.join(&name), &crate_name, dir);
        let wasm = format!("{crate_name}.wasm");
        tether_json(dir, &["plugin", "sign", &wasm, "--key", "k"]);
        manifest += &format!(
            "\n[[plugin]]\nname = \"{name}\"\nkind = \"{manifest_kind}\"\npath = \"{wasm}\"\n"
        );
    }
    let path = dir.join("plugins.toml");
    std::fs::write(&path, manifest).unwrap();
    // The daemon refuses a component that does not implement its kind's world: loading proves
    // each template exports the right one.
    let daemon = Daemon::start_top("hub", &manifest_top(&path), "");
    let list = daemon.tether(&["--json", "plugin", "list"]);
    let v: Value = serde_json::from_str(&stdout(&list)).unwrap();
    let kinds: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["alert_sink", "audit_sink", "enrollment_hook"],
        "{v}"
    );
}

#[test]
fn new_refuses_bad_names_and_non_empty_dirs() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    for bad in ["Bad", "under_score", "1st", "trailing-", "../up"] {
        let out = tether(dir, &["plugin", "new", bad, "--kind", "policy"]);
        assert_eq!(code(&out), 2, "{bad}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("lowercase letters, digits and '-'"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    std::fs::create_dir(dir.join("taken")).unwrap();
    std::fs::write(dir.join("taken/keep.txt"), "mine").unwrap();
    let out = tether(
        dir,
        &["plugin", "new", "p", "--kind", "policy", "--dir", "taken"],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(dir.join("taken")).unwrap().count(),
        1,
        "nothing written"
    );
    // An empty directory is fine.
    std::fs::create_dir(dir.join("empty")).unwrap();
    let out = tether(
        dir,
        &[
            "plugin",
            "new",
            "p",
            "--kind",
            "audit-sink",
            "--dir",
            "empty",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(dir.join("empty/src/lib.rs").is_file());
    // --sdk-path must be the SDK.
    let out = tether(
        dir,
        &["plugin", "new", "q", "--kind", "policy", "--sdk-path", "."],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--sdk-path"), "{}", stderr(&out));
}

#[test]
fn the_cli_never_links_wasmtime() {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["tree", "--offline", "-p", "tether", "-e", "normal"])
        .current_dir(repo())
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree: {}", stderr(&out));
    let tree = stdout(&out);
    assert!(tree.contains("tether-plugin-sign"), "{tree}");
    assert!(
        !tree.contains("wasmtime"),
        "the tether CLI must not link wasmtime:\n{tree}"
    );
}
