//! Every escape class on a real directory tree.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

struct Tree {
    _tmp: tempfile::TempDir,
    root: String,
    outside: String,
}

/// `T/root` (allowed) with `a.txt`, `sub/b.txt`, `secret/key`; `T/outside/passwd`.
fn tree() -> Tree {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().to_string_lossy().into_owned();
    let root = format!("{base}/root");
    let outside = format!("{base}/outside");
    std::fs::create_dir_all(format!("{root}/sub")).expect("mkdir");
    std::fs::create_dir_all(format!("{root}/secret")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(format!("{root}/a.txt"), b"hello").expect("write");
    std::fs::write(format!("{root}/sub/b.txt"), b"bee").expect("write");
    std::fs::write(format!("{root}/secret/key"), b"k").expect("write");
    std::fs::write(format!("{outside}/passwd"), b"root:x:0:0").expect("write");
    Tree {
        _tmp: tmp,
        root,
        outside,
    }
}

fn confined(t: &Tree) -> Confined {
    Confined::new(&Settings {
        allowed_roots: vec![t.root.clone()],
        deny_paths: vec!["/secret(/|$)".to_owned()],
        max_file_size: 1024,
    })
    .expect("confined")
}

fn read(c: &Confined, p: &str) -> Result<Vec<u8>, FilesError> {
    use std::io::Read;
    let (mut f, _) = c.open_read(p)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).expect("read");
    Ok(v)
}

#[test]
fn reads_stats_and_lists_inside_the_root() {
    let t = tree();
    let c = confined(&t);
    assert_eq!(
        read(&c, &format!("{}/a.txt", t.root)).expect("read"),
        b"hello"
    );
    assert_eq!(
        read(&c, &format!("{}//sub/./b.txt", t.root)).expect("read"),
        b"bee"
    );
    let m = c.stat(&format!("{}/sub", t.root)).expect("stat");
    assert_eq!(m.kind, Kind::Dir);
    let names: Vec<String> = c
        .list(&t.root)
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect();
    // `secret` is hidden by deny_paths.
    assert_eq!(names, ["a.txt", "sub"]);
    // `..` that stays inside is fine.
    assert_eq!(
        read(&c, &format!("{}/sub/../a.txt", t.root)).expect("read"),
        b"hello"
    );
}

#[test]
fn dot_dot_out_of_the_root_is_an_escape() {
    let t = tree();
    let c = confined(&t);
    let e = read(&c, &format!("{}/../outside/passwd", t.root)).unwrap_err();
    assert!(matches!(e, FilesError::Escape { .. }), "{e}");
    let e = read(&c, &format!("{}/sub/../../outside/passwd", t.root)).unwrap_err();
    assert!(matches!(e, FilesError::Escape { .. }), "{e}");
}

#[test]
fn paths_outside_every_root_and_relative_paths_are_refused() {
    let t = tree();
    let c = confined(&t);
    assert!(matches!(
        read(&c, &format!("{}/passwd", t.outside)),
        Err(FilesError::OutsideRoots { .. })
    ));
    assert!(matches!(
        read(&c, "a.txt"),
        Err(FilesError::InvalidPath { .. })
    ));
    // A sibling whose name starts with the root's is not below it.
    assert!(matches!(
        read(&c, &format!("{}x/a", t.root)),
        Err(FilesError::OutsideRoots { .. })
    ));
}

#[test]
fn absolute_symlinks_are_an_escape() {
    let t = tree();
    let c = confined(&t);
    symlink(format!("{}/passwd", t.outside), format!("{}/abs", t.root)).expect("symlink");
    let e = read(&c, &format!("{}/abs", t.root)).unwrap_err();
    assert!(matches!(e, FilesError::Escape { .. }), "{e}");
    // Even an absolute link pointing back inside is refused (RESOLVE_BENEATH).
    symlink(format!("{}/a.txt", t.root), format!("{}/abs-in", t.root)).expect("symlink");
    assert!(matches!(
        read(&c, &format!("{}/abs-in", t.root)),
        Err(FilesError::Escape { .. })
    ));
}

#[test]
fn relative_symlinks_out_are_an_escape_and_in_are_followed() {
    let t = tree();
    let c = confined(&t);
    symlink("../outside/passwd", format!("{}/rel", t.root)).expect("symlink");
    let e = read(&c, &format!("{}/rel", t.root)).unwrap_err();
    assert!(matches!(e, FilesError::Escape { .. }), "{e}");
    symlink("../a.txt", format!("{}/sub/up", t.root)).expect("symlink");
    assert_eq!(
        read(&c, &format!("{}/sub/up", t.root)).expect("in-root link"),
        b"hello"
    );
}

#[test]
fn symlinked_directories_out_are_an_escape() {
    let t = tree();
    let c = confined(&t);
    symlink(&t.outside, format!("{}/dirlink", t.root)).expect("symlink");
    symlink("../outside", format!("{}/reldir", t.root)).expect("symlink");
    for p in ["dirlink/passwd", "reldir/passwd", "reldir"] {
        let e = read(&c, &format!("{}/{p}", t.root)).unwrap_err();
        assert!(matches!(e, FilesError::Escape { .. }), "{p}: {e}");
    }
    assert!(matches!(
        c.list(&format!("{}/reldir", t.root)),
        Err(FilesError::Escape { .. })
    ));
    // Uploading through a symlinked directory is refused too, and creates nothing outside.
    let e = c
        .begin_upload(&format!("{}/reldir/new", t.root), None)
        .unwrap_err();
    assert!(matches!(e, FilesError::Escape { .. }), "{e}");
    assert_eq!(std::fs::read_dir(&t.outside).expect("ls").count(), 1);
}

#[test]
fn proc_self_root_is_an_escape() {
    let t = tree();
    let c = confined(&t);
    symlink("/proc/self/root/etc/passwd", format!("{}/proc", t.root)).expect("symlink");
    assert!(matches!(
        read(&c, &format!("{}/proc", t.root)),
        Err(FilesError::Escape { .. })
    ));
    // With /proc itself as a root, the magic link is still refused (RESOLVE_NO_MAGICLINKS).
    let p = Confined::new(&Settings {
        allowed_roots: vec!["/proc".to_owned()],
        ..Settings::default()
    })
    .expect("proc root");
    let e = read(&p, "/proc/self/root/etc/passwd").unwrap_err();
    assert!(matches!(e, FilesError::Escape { .. }), "{e}");
}

#[test]
fn hard_links_are_refused_for_reading_and_replacing() {
    let t = tree();
    let c = confined(&t);
    std::fs::hard_link(format!("{}/passwd", t.outside), format!("{}/hard", t.root)).expect("link");
    let e = read(&c, &format!("{}/hard", t.root)).unwrap_err();
    assert!(matches!(e, FilesError::HardLinked { links: 2, .. }), "{e}");
    let e = c
        .begin_upload(&format!("{}/hard", t.root), None)
        .unwrap_err();
    assert!(matches!(e, FilesError::HardLinked { .. }), "{e}");
    assert_eq!(
        std::fs::read(format!("{}/passwd", t.outside)).expect("read"),
        b"root:x:0:0"
    );
}

#[test]
fn deny_paths_apply_to_the_asked_and_the_resolved_path() {
    let t = tree();
    let c = confined(&t);
    assert!(matches!(
        read(&c, &format!("{}/secret/key", t.root)),
        Err(FilesError::Denied { .. })
    ));
    // An in-root symlink to the denied file is refused by its real path.
    symlink("secret/key", format!("{}/innocent", t.root)).expect("symlink");
    let e = read(&c, &format!("{}/innocent", t.root)).unwrap_err();
    assert!(matches!(e, FilesError::Denied { .. }), "{e}");
    assert!(
        c.begin_upload(&format!("{}/secret/new", t.root), None)
            .is_err()
    );
}

#[test]
fn special_files_are_not_read() {
    let t = tree();
    let c = confined(&t);
    let fifo = format!("{}/fifo", t.root);
    nix::unistd::mkfifo(fifo.as_str(), Mode::from_bits_truncate(0o600)).expect("mkfifo");
    assert!(matches!(read(&c, &fifo), Err(FilesError::WrongType { .. })));
    assert!(matches!(
        read(&c, &format!("{}/sub", t.root)),
        Err(FilesError::WrongType { .. })
    ));
}

fn temp_files(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

#[test]
fn uploads_replace_atomically_and_verify_the_hash() {
    let t = tree();
    let c = confined(&t);
    let dest = format!("{}/a.txt", t.root);
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mut up = c.begin_upload(&dest, None).expect("begin");
    up.write_at(0, b"new ").expect("write");
    up.write_at(4, b"content").expect("write");
    // Before commit the old file is untouched.
    assert_eq!(std::fs::read(&dest).expect("read"), b"hello");
    let sha = hex::encode(Sha256::digest(b"new content"));
    let done = up.commit(Some(&sha)).expect("commit");
    assert_eq!((done.size, done.sha256.as_str()), (11, sha.as_str()));
    assert_eq!(std::fs::read(&dest).expect("read"), b"new content");
    // The old file's mode is kept.
    let mode = std::fs::metadata(&dest).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(temp_files(&t.root).is_empty());
    // A new file gets the requested mode.
    let mut up = c
        .begin_upload(&format!("{}/sub/new.sh", t.root), Some(0o755))
        .expect("begin");
    up.write_at(0, b"#!/bin/sh\n").expect("write");
    up.commit(None).expect("commit");
    let mode = std::fs::metadata(format!("{}/sub/new.sh", t.root))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}

#[test]
fn failed_uploads_leave_the_old_file_and_no_temp_file() {
    let t = tree();
    let c = confined(&t);
    let dest = format!("{}/a.txt", t.root);
    // Hash mismatch.
    let mut up = c.begin_upload(&dest, None).expect("begin");
    up.write_at(0, b"evil").expect("write");
    let e = up.commit(Some(&"0".repeat(64))).unwrap_err();
    assert!(matches!(e, FilesError::HashMismatch { .. }), "{e}");
    // Oversized: refused before the bytes are written.
    let mut up = c.begin_upload(&dest, None).expect("begin");
    up.write_at(0, &[7u8; 1000]).expect("write");
    let e = up.write_at(1000, &[7u8; 25]).unwrap_err();
    assert!(matches!(e, FilesError::TooLarge { limit: 1024, .. }), "{e}");
    assert_eq!(up.written(), 1000);
    drop(up);
    // Interrupted (dropped mid-way) and out of order.
    let mut up = c.begin_upload(&dest, None).expect("begin");
    up.write_at(0, b"half").expect("write");
    assert!(matches!(
        up.write_at(10, b"x"),
        Err(FilesError::OutOfOrder { .. })
    ));
    drop(up);
    assert_eq!(std::fs::read(&dest).expect("read"), b"hello");
    assert!(temp_files(&t.root).is_empty());
    // A directory or a symlink as the destination is refused.
    assert!(matches!(
        c.begin_upload(&format!("{}/sub", t.root), None),
        Err(FilesError::WrongType { .. })
    ));
    symlink("a.txt", format!("{}/ln", t.root)).expect("symlink");
    assert!(matches!(
        c.begin_upload(&format!("{}/ln", t.root), None),
        Err(FilesError::WrongType { .. })
    ));
}

#[test]
fn racing_uploads_leave_one_whole_file() {
    let t = tree();
    let c = std::sync::Arc::new(confined(&t));
    let dest = format!("{}/race", t.root);
    let handles: Vec<_> = (0u8..8)
        .map(|i| {
            let (c, dest) = (std::sync::Arc::clone(&c), dest.clone());
            std::thread::spawn(move || {
                let mut up = c.begin_upload(&dest, None).expect("begin");
                for k in 0..10u64 {
                    up.write_at(k * 100, &[i; 100]).expect("write");
                }
                up.commit(None).expect("commit");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let got = std::fs::read(&dest).expect("read");
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(|b| *b == got[0]), "a mix of two uploads");
    assert!(temp_files(&t.root).is_empty());
}

#[test]
fn bad_configuration_is_refused_with_the_entry() {
    let e = Confined::new(&Settings {
        allowed_roots: vec!["relative".to_owned()],
        ..Settings::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("relative"), "{e}");
    let e = Confined::new(&Settings {
        allowed_roots: vec!["/nonexistent-tether-root".to_owned()],
        ..Settings::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent-tether-root"), "{e}");
    let e = Confined::new(&Settings {
        deny_paths: vec!["(".to_owned()],
        ..Settings::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("deny_paths"), "{e}");
    let off = Confined::new(&Settings::default()).expect("empty");
    assert!(matches!(off.stat("/tmp"), Err(FilesError::Disabled)));
}

#[test]
fn changing_operations_stay_beneath_the_root_and_deny_paths() {
    let t = tree();
    let c = confined(&t);
    let r = &t.root;
    symlink(&t.outside, format!("{r}/out")).expect("symlink");
    std::fs::hard_link(format!("{}/passwd", t.outside), format!("{r}/hl")).expect("link");

    c.mkdir(&format!("{r}/new"), Some(0o700)).expect("mkdir");
    assert!(matches!(
        c.mkdir(&format!("{r}/new"), None),
        Err(FilesError::Exists { .. })
    ));
    c.rename(&format!("{r}/a.txt"), &format!("{r}/new/a.txt"))
        .expect("rename");
    assert!(matches!(
        c.rename(&format!("{r}/new/a.txt"), &format!("{r}/sub/b.txt")),
        Err(FilesError::Exists { .. })
    ));
    c.set_attrs(&format!("{r}/new/a.txt"), Some(0o640), Some((5, 7)))
        .expect("setstat");
    let m = std::fs::metadata(format!("{r}/new/a.txt")).expect("meta");
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(m.mtime(), 7);

    // Escapes and denied paths change nothing.
    for (res, what) in [
        (c.mkdir(&format!("{r}/../x"), None), "mkdir ../x"),
        (c.mkdir(&format!("{r}/out/x"), None), "mkdir via symlink"),
        (c.remove(&format!("{r}/out/passwd")), "rm via symlink"),
        (
            c.rename(&format!("{r}/sub/b.txt"), &format!("{r}/out/b.txt")),
            "rename into symlinked dir",
        ),
        (
            c.rename(&format!("{r}/out/passwd"), &format!("{r}/p")),
            "rename out of symlinked dir",
        ),
        (
            c.set_attrs(&format!("{r}/out/passwd"), Some(0o777), None),
            "chmod via symlink",
        ),
    ] {
        assert!(
            matches!(res, Err(FilesError::Escape { .. })),
            "{what}: {res:?}"
        );
    }
    assert!(matches!(
        c.rename(&format!("{r}/sub/b.txt"), &format!("{}/b.txt", t.outside)),
        Err(FilesError::OutsideRoots { .. })
    ));
    assert!(matches!(
        c.remove(&format!("{r}/secret/key")),
        Err(FilesError::Denied { .. })
    ));
    assert!(matches!(
        c.set_attrs(&format!("{r}/hl"), Some(0o777), None),
        Err(FilesError::HardLinked { .. })
    ));
    assert!(matches!(c.rmdir(r), Err(FilesError::NotAnEntry { .. })));
    assert!(matches!(
        c.rmdir(&format!("{r}/new")),
        Err(FilesError::NotEmpty { .. })
    ));
    assert!(matches!(
        c.remove(&format!("{r}/new")),
        Err(FilesError::WrongType { .. })
    ));
    assert_eq!(
        std::fs::read(format!("{}/passwd", t.outside)).expect("read"),
        b"root:x:0:0"
    );
    assert!(std::path::Path::new(&format!("{r}/secret/key")).exists());

    // rm of a symlink removes the link, not its target.
    c.remove(&format!("{r}/out")).expect("rm link");
    assert!(std::path::Path::new(&format!("{}/passwd", t.outside)).exists());
    c.remove(&format!("{r}/new/a.txt")).expect("rm");
    c.rmdir(&format!("{r}/new")).expect("rmdir");
    assert!(!std::path::Path::new(&format!("{r}/new")).exists());
}
