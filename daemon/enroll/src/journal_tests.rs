//! The journaled file backends against real files in temp dirs: replay equals memory after
//! random operation sequences (across compactions), torn tails, corruption, crash windows
//! around compaction, the pre-journal layout, and a full disk.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use proptest::prelude::*;

use super::CrashPoint;
use crate::error::EnrollError;
use crate::inventory::{
    FileInventoryStore, HOSTS_FILE, HOSTS_JOURNAL, HostRecord, HostState, Inventory, OverlayNet,
};
use crate::store::{FileInviteStore, INVITES_FILE, INVITES_JOURNAL};
use crate::token::{InviteRecord, InviteState};

fn host(i: u16, key_version: u32, pad: usize) -> HostRecord {
    let mut tags = BTreeMap::new();
    tags.insert(
        "env".to_owned(),
        if i.is_multiple_of(2) {
            "prod"
        } else {
            "staging"
        }
        .to_owned(),
    );
    if pad > 0 {
        tags.insert("pad".to_owned(), "x".repeat(pad));
    }
    HostRecord {
        name: format!("h{i}"),
        overlay_ip: Ipv4Addr::new(10, 99, (i >> 8) as u8, (i & 0xff) as u8 + 2),
        wg_public_key: format!("wg-{i}-{key_version}"),
        ssh_host_key: format!("not-a-key-{i}"),
        hostname: format!("machine-{i}"),
        tags,
        groups: vec!["web".to_owned()],
        enrolled_at: 1_000 + u64::from(i),
        last_seen: None,
        state: HostState::Active,
        revoked_at: None,
        ssh_user: None,
    }
}

fn open_inventory(dir: &Path) -> Inventory {
    Inventory::with_store(
        Box::new(FileInventoryStore::open(dir).unwrap()),
        OverlayNet::default(),
    )
    .unwrap()
}

fn reopened(dir: &Path) -> Vec<HostRecord> {
    open_inventory(dir).list()
}

#[derive(Debug, Clone)]
enum HostOp {
    Insert(u16),
    Remove(u16),
    Revoke(u16),
    Touch(u16, u64),
    Rekey(u16, u32),
}

fn host_op() -> impl Strategy<Value = HostOp> {
    prop_oneof![
        4 => (0u16..40).prop_map(HostOp::Insert),
        1 => (0u16..40).prop_map(HostOp::Remove),
        1 => (0u16..40).prop_map(HostOp::Revoke),
        // Steps of 100 s: every forward move is persisted (`touch` coalesces moves < 60 s, which
        // then live in memory only, by design).
        2 => ((0u16..40), (1u64..100)).prop_map(|(i, t)| HostOp::Touch(i, t * 100)),
        1 => ((0u16..40), (0u32..1000)).prop_map(|(i, v)| HostOp::Rekey(i, v)),
    ]
}

fn apply_host_op(inv: &Inventory, op: &HostOp) {
    // Refusals (name taken, no such host, key taken) are part of the sequence.
    let _ = match *op {
        HostOp::Insert(i) => inv.insert(host(i, 0, 40)).map(drop),
        HostOp::Remove(i) => inv.remove(&format!("h{i}")).map(drop),
        HostOp::Revoke(i) => inv.mark_revoked(&format!("h{i}"), 5_000).map(drop),
        HostOp::Touch(i, t) => inv.touch(&format!("h{i}"), t),
        HostOp::Rekey(i, v) => inv
            .set_wg_key(&format!("h{i}"), &format!("wg-{i}-r{v}"))
            .map(drop),
    };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// After any sequence of changes (crossing compactions: the journal limit is 4 KiB in
    /// tests), a reopened inventory equals the one in memory, and so does the next one after a
    /// crash between the compaction's snapshot and its truncate.
    #[test]
    fn inventory_replay_equals_memory(ops in proptest::collection::vec(host_op(), 1..160), crash_at in 0usize..160) {
        let d = tempfile::tempdir().unwrap();
        {
            let store = FileInventoryStore::open(d.path()).unwrap();
            store.crash_at(if crash_at % 2 == 0 { CrashPoint::BeforeTruncate } else { CrashPoint::BeforeRename });
            let inv = Inventory::with_store(Box::new(store), OverlayNet::default()).unwrap();
            for op in &ops[..crash_at.min(ops.len())] {
                apply_host_op(&inv, op);
            }
            // Everything acknowledged so far, even if a compaction "crashed".
            prop_assert_eq!(reopened(d.path()), inv.list());
        }
        let inv = open_inventory(d.path());
        for op in &ops[crash_at.min(ops.len())..] {
            apply_host_op(&inv, op);
        }
        prop_assert_eq!(reopened(d.path()), inv.list());
        prop_assert!(std::fs::read_dir(d.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp.")));
    }

    /// The same for invites: add, consume, revoke, with time moving so that compactions drop
    /// expired records.
    #[test]
    fn invite_replay_equals_memory(ops in proptest::collection::vec((0u8..3, 0u16..30, 0u64..50), 1..200)) {
        let d = tempfile::tempdir().unwrap();
        let mut store = FileInviteStore::open(d.path()).unwrap();
        let mut now = 1_000u64;
        for (k, (op, i, dt)) in ops.iter().enumerate() {
            now += dt;
            let _ = match op {
                0 => store.add(invite(k, *i, now, 30 + dt * 10), now).map(drop),
                1 => {
                    let hash = store.all().iter().filter(|r| r.state == InviteState::Pending).nth(usize::from(*i)).map(|r| r.nonce_hash.clone());
                    match hash {
                        Some(h) => store.consume(&h, now).map(drop),
                        None => store.consume("unknown", now).map(drop),
                    }
                }
                _ => store.revoke_name(&format!("h{i}"), now).map(drop),
            };
            if k % 37 == 0 {
                prop_assert_eq!(FileInviteStore::open(d.path()).unwrap().all().to_vec(), store.all().to_vec());
            }
        }
        prop_assert_eq!(FileInviteStore::open(d.path()).unwrap().all().to_vec(), store.all().to_vec());
    }
}

fn invite(k: usize, i: u16, now: u64, ttl: u64) -> InviteRecord {
    InviteRecord {
        nonce_hash: format!("{k:064x}"),
        name: format!("h{i}"),
        overlay_ip: Ipv4Addr::new(10, 99, 0, 2 + (i as u8)),
        issued_at: now,
        expires_at: now + ttl,
        state: InviteState::Pending,
    }
}

#[test]
fn a_torn_journal_tail_is_discarded_and_appends_continue() {
    let d = tempfile::tempdir().unwrap();
    let inv = open_inventory(d.path());
    inv.insert(host(1, 0, 0)).unwrap();
    inv.insert(host(2, 0, 0)).unwrap();
    let journal = d.path().join(HOSTS_JOURNAL);
    let good = std::fs::read(&journal).unwrap();
    // A crash in the middle of the third append.
    let mut torn = good.clone();
    torn.extend_from_slice(b"5d0c1e7a22b4f0e9 3 {\"put\":{\"name\":\"h3\",\"overl");
    std::fs::write(&journal, &torn).unwrap();
    let inv = open_inventory(d.path());
    assert_eq!(
        inv.list()
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>(),
        ["h1", "h2"]
    );
    assert_eq!(std::fs::read(&journal).unwrap(), good, "the tail was cut");
    inv.insert(host(3, 0, 0)).unwrap();
    assert_eq!(reopened(d.path()), inv.list());
    assert_eq!(inv.list().len(), 3);

    // The same for invites.
    let mut store = FileInviteStore::open(d.path()).unwrap();
    store.add(invite(1, 1, 100, 1000), 100).unwrap();
    let ij = d.path().join(INVITES_JOURNAL);
    let mut bytes = std::fs::read(&ij).unwrap();
    bytes.extend_from_slice(b"0123");
    std::fs::write(&ij, &bytes).unwrap();
    let store = FileInviteStore::open(d.path()).unwrap();
    assert_eq!(store.all().len(), 1);
}

#[test]
fn corruption_in_the_middle_is_refused_naming_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let inv = open_inventory(d.path());
    for i in 1..=3 {
        inv.insert(host(i, 0, 0)).unwrap();
    }
    let journal = d.path().join(HOSTS_JOURNAL);
    let text = std::fs::read_to_string(&journal).unwrap();
    let altered = text.replacen("machine-2", "machine-X", 1);
    assert_ne!(altered, text);
    std::fs::write(&journal, &altered).unwrap();
    let e = FileInventoryStore::open(d.path()).unwrap_err();
    assert!(matches!(e, EnrollError::CorruptState { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&journal.display().to_string()) && msg.contains("line 2: "),
        "{msg}"
    );
    // Refused, not repaired: the file is as it was.
    assert_eq!(std::fs::read_to_string(&journal).unwrap(), altered);

    // A line whose checksum verifies but whose change does not apply is refused too.
    let d = tempfile::tempdir().unwrap();
    let mut store = FileInviteStore::open(d.path()).unwrap();
    store.add(invite(1, 1, 100, 1000), 100).unwrap();
    let ij = d.path().join(INVITES_JOURNAL);
    drop(store);
    // Hand-craft line 2: consume an invite that does not exist.
    let (mut j, _) = tether_durable::journal::Journal::open(&ij, 0o600, 0).unwrap();
    j.append(&[br#"{"consume":{"nonce_hash":"nope","at":5}}"#])
        .unwrap();
    let msg = FileInviteStore::open(d.path()).unwrap_err().to_string();
    assert!(
        msg.contains("invites.journal") && msg.contains("line 2: ") && msg.contains("nope"),
        "{msg}"
    );
}

#[test]
fn crashes_around_compaction_lose_and_repeat_nothing() {
    for at in [CrashPoint::BeforeRename, CrashPoint::BeforeTruncate] {
        let d = tempfile::tempdir().unwrap();
        let store = FileInventoryStore::open(d.path()).unwrap();
        store.crash_at(at);
        let inv = Inventory::with_store(Box::new(store), OverlayNet::default()).unwrap();
        let journal = d.path().join(HOSTS_JOURNAL);
        let mut i = 0;
        // Until a compaction was attempted (and "crashed").
        while std::fs::metadata(&journal).map_or(0, |m| m.len()) < super::MIN_COMPACT_BYTES {
            inv.insert(host(i, 0, 200)).unwrap();
            i += 1;
        }
        inv.insert(host(i, 0, 200)).unwrap();
        let expected = inv.list();
        drop(inv);
        let snap: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join(HOSTS_FILE)).unwrap_or_default())
                .unwrap_or_default();
        match at {
            CrashPoint::BeforeRename => assert!(snap.is_null(), "no snapshot yet"),
            CrashPoint::BeforeTruncate => {
                // The snapshot holds a prefix whose lines are still in the journal.
                assert!(snap["last_seq"].as_u64().unwrap() > 0);
                assert!(std::fs::metadata(&journal).unwrap().len() >= super::MIN_COMPACT_BYTES)
            }
        }
        let inv = open_inventory(d.path());
        assert_eq!(inv.list(), expected, "{at:?}");
        // The stale temp file of the interrupted snapshot is gone.
        assert!(
            std::fs::read_dir(d.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp."))
        );
        // Later changes compact normally and still replay to the same state.
        for j in i + 1..i + 40 {
            inv.insert(host(j, 0, 200)).unwrap();
        }
        inv.remove("h0").unwrap();
        assert_eq!(reopened(d.path()), inv.list(), "{at:?}");
        assert!(std::fs::metadata(&journal).unwrap().len() < 3 * super::MIN_COMPACT_BYTES);
    }
}

#[test]
fn a_state_dir_from_before_journals_opens_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let hosts = vec![host(1, 0, 0), host(2, 0, 0)];
    let old =
        serde_json::to_vec_pretty(&serde_json::json!({"version": 1, "hosts": hosts})).unwrap();
    std::fs::write(d.path().join(HOSTS_FILE), &old).unwrap();
    let invites = vec![invite(1, 3, 100, u64::MAX / 2)];
    let old_inv =
        serde_json::to_vec_pretty(&serde_json::json!({"version": 1, "invites": invites})).unwrap();
    std::fs::write(d.path().join(INVITES_FILE), &old_inv).unwrap();

    let inv = open_inventory(d.path());
    assert_eq!(inv.list(), hosts);
    let mut store = FileInviteStore::open(d.path()).unwrap();
    assert_eq!(store.all(), &invites[..]);
    // Opening wrote nothing.
    assert!(!d.path().join(HOSTS_JOURNAL).exists());
    assert!(!d.path().join(INVITES_JOURNAL).exists());
    assert_eq!(std::fs::read(d.path().join(HOSTS_FILE)).unwrap(), old);

    // The first change starts the journal over the old snapshot.
    inv.insert(host(3, 0, 0)).unwrap();
    store.consume(&invites[0].nonce_hash, 200).unwrap();
    assert!(d.path().join(HOSTS_JOURNAL).exists());
    assert_eq!(std::fs::read(d.path().join(HOSTS_FILE)).unwrap(), old);
    assert_eq!(reopened(d.path()).len(), 3);
    assert_eq!(
        FileInviteStore::open(d.path()).unwrap().all()[0].state,
        InviteState::Used { at: 200 }
    );
}

/// A small tmpfs as the state dir (root only; skipped otherwise).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let d = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(d.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(d))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    /// Fills the file system to the last byte.
    fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_disk_fails_the_change_precisely_and_changes_nothing() {
    let Some(fs) = Tmpfs::mount("256k") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let inv = open_inventory(fs.path());
    inv.insert(host(1, 0, 0)).unwrap();
    let mut store = FileInviteStore::open(fs.path()).unwrap();
    store.add(invite(1, 1, 100, 1000), 100).unwrap();
    let before = inv.list();
    let invites_before = store.all().to_vec();
    let journal = fs.path().join(HOSTS_JOURNAL);
    let len = std::fs::metadata(&journal).unwrap().len();
    fs.fill();

    // A line longer than a page: it needs a block the disk no longer has.
    let e = inv.insert(host(2, 0, 6000)).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, EnrollError::Io { .. })
            && msg.contains(&journal.display().to_string())
            && msg.contains("free space"),
        "{msg}"
    );
    assert_eq!(inv.list(), before, "memory unchanged");
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len(),
        len,
        "file cut back"
    );
    let big = InviteRecord {
        name: "x".repeat(5000),
        ..invite(2, 2, 100, 1000)
    };
    assert!(matches!(store.add(big, 100), Err(EnrollError::Io { .. })));
    assert_eq!(store.all(), &invites_before[..]);

    // Space again: the next change works, and the state replays as acknowledged.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    inv.insert(host(3, 0, 0)).unwrap();
    store.consume(&invites_before[0].nonce_hash, 200).unwrap();
    assert_eq!(reopened(fs.path()), inv.list());
    assert_eq!(inv.list().len(), 2);
    assert_eq!(FileInviteStore::open(fs.path()).unwrap().all(), store.all());
}

/// The SSH host key index follows every change: a key is taken while a host (active or revoked)
/// holds it, free once that host is removed, and rebuilt at open.
#[test]
fn ssh_host_keys_stay_unique_through_changes_and_reopen() {
    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINXREtEmFoLqswjEYtVLvVkJE5oD6KZMNLVQeaadzZGH a";
    const KEY_A_OTHER_COMMENT: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINXREtEmFoLqswjEYtVLvVkJE5oD6KZMNLVQeaadzZGH b";
    let d = tempfile::tempdir().unwrap();
    let inv = open_inventory(d.path());
    let with_key = |i, key: &str| HostRecord {
        ssh_host_key: key.to_owned(),
        ..host(i, 0, 0)
    };
    inv.insert(with_key(1, KEY_A)).unwrap();
    let taken = |inv: &Inventory, i| {
        matches!(
            inv.insert(with_key(i, KEY_A_OTHER_COMMENT)),
            Err(EnrollError::KeyTaken { which: "SSH host key", ref by }) if by == "h1"
        )
    };
    assert!(taken(&inv, 2));
    inv.mark_revoked("h1", 10).unwrap();
    assert!(taken(&inv, 2), "a revoked host still holds its key");
    assert!(taken(&open_inventory(d.path()), 2), "rebuilt at open");
    inv.remove("h1").unwrap();
    inv.insert(with_key(2, KEY_A_OTHER_COMMENT)).unwrap();
    let reopened = open_inventory(d.path());
    assert!(matches!(
        reopened.insert(with_key(3, KEY_A)),
        Err(EnrollError::KeyTaken { ref by, .. }) if by == "h2"
    ));
}
