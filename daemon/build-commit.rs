// (Included, not a crate.) Shared by the `build.rs` of `tetherd` and `tether` (each `include!`s this file): sets
// `TETHER_COMMIT` for `--version` and `tether status`. The commit is, in order: the
// `TETHER_COMMIT` environment variable (for packagers building from a tarball), else
// `git rev-parse --short=12 HEAD`, else `unknown`
// — a source tree without `.git` or without git still builds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TETHER_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var("TETHER_COMMIT").ok().filter(|c| !c.trim().is_empty()) {
        Some(c) => c.trim().to_owned(),
        None => match git(&dir, &["rev-parse", "--short=12", "HEAD"]) {
            Some(head) => {
                // Rebuild when HEAD moves: a checkout (HEAD) or a commit (the branch's ref).
                if let Some(p) = git(&dir, &["rev-parse", "--git-path", "HEAD"]) {
                    println!("cargo:rerun-if-changed={}", dir.join(p).display());
                }
                if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"])
                    && let Some(p) = git(&dir, &["rev-parse", "--git-path", &r])
                {
                    println!("cargo:rerun-if-changed={}", dir.join(p).display());
                }
                head
            }
            None => "unknown".to_owned(),
        },
    };
    println!("cargo:rustc-env=TETHER_COMMIT={commit}");
}
