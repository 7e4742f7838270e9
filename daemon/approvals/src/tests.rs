#![allow(clippy::unwrap_used)]

use tether_model::Role;

use crate::*;

const MIN: u64 = 60_000;

fn p(uid: u32, name: &str) -> Principal {
    Principal {
        uid,
        name: name.to_owned(),
    }
}

fn alice() -> Principal {
    p(1000, "alice")
}

fn exec(cmd: &str, hosts: &[&str]) -> Subject {
    Subject::exec(cmd, hosts.iter().map(|h| (*h).to_owned()))
}

fn id(n: u8) -> String {
    format!("apr-{:016x}", n)
}

fn new(a: &mut Approvals, who: Principal, s: Subject, n: u8, now: u64) -> Record {
    match a
        .request(who, s, "rule needs approval", id(n), now)
        .unwrap()
    {
        Requested::New(c) => {
            assert_eq!(
                c.event,
                if matches!(c.record.subject, Subject::Exec { .. }) {
                    "approval.requested"
                } else {
                    "access.requested"
                }
            );
            c.record
        }
        Requested::Existing(r) => panic!("expected a new record, got {}", r.id),
    }
}

#[test]
fn binding_covers_caller_command_sorted_targets_and_expiry() {
    let s = exec("systemctl restart nginx", &["web2", "web1", "web1"]);
    assert_eq!(
        s,
        Subject::Exec {
            command: "systemctl restart nginx".into(),
            targets: vec!["web1".into(), "web2".into()]
        }
    );
    let b = binding(&alice(), &s, 1000);
    assert_eq!(b.len(), 64);
    assert_eq!(
        b,
        binding(
            &alice(),
            &exec("systemctl restart nginx", &["web1", "web2"]),
            1000
        ),
        "target order does not matter"
    );
    for other in [
        binding(&p(1001, "alice"), &s, 1000),
        binding(&p(1000, "bob"), &s, 1000),
        binding(
            &alice(),
            &exec("systemctl restart nginx ", &["web1", "web2"]),
            1000,
        ),
        binding(&alice(), &exec("systemctl restart nginx", &["web1"]), 1000),
        binding(
            &alice(),
            &exec("systemctl restart nginx", &["web1", "web2", "web3"]),
            1000,
        ),
        binding(&alice(), &s, 1001),
    ] {
        assert_ne!(b, other);
    }
    // No separator can be forged: a host name containing "," is another target list.
    assert_ne!(
        binding(&alice(), &exec("x", &["a,b"]), 1),
        binding(&alice(), &exec("x", &["a", "b"]), 1)
    );
}

#[test]
fn pending_granted_used_and_never_again() {
    let mut a = Approvals::new(Settings::default(), []);
    let s = exec("reboot", &["db1"]);
    let r = new(&mut a, alice(), s.clone(), 1, 0);
    assert_eq!(r.state, State::Pending);
    assert_eq!(r.expires_at_ms, 15 * MIN, "default expiry 15 min");
    // The same request again finds the pending one.
    match a.request(alice(), s.clone(), "again", id(2), 10).unwrap() {
        Requested::Existing(e) => assert_eq!(e.id, r.id),
        Requested::New(_) => panic!("duplicate pending request"),
    }
    // Not yet granted: refused.
    assert!(matches!(
        a.check_use(&r.id, &alice(), &s, 20),
        Err(ApprovalError::WrongState {
            wanted: "granted",
            ..
        })
    ));
    let c = a
        .approve(
            &r.id,
            p(2000, "bob"),
            Role::Operator,
            Some("ok".into()),
            None,
            30,
        )
        .unwrap();
    assert_eq!(c.event, "approval.granted");
    assert_eq!(c.record.state, State::Granted);
    let used = a.mark_used(&r.id, &alice(), &s, 40).unwrap();
    assert_eq!(
        (used.event, used.record.state),
        ("approval.used", State::Used)
    );
    // Replay: refused.
    assert!(matches!(
        a.mark_used(&r.id, &alice(), &s, 50),
        Err(ApprovalError::WrongState { state: "used", .. })
    ));
}

#[test]
fn no_self_approval_even_for_admins_and_root() {
    let mut a = Approvals::new(Settings::default(), []);
    let root = p(0, "root");
    let r = new(&mut a, root.clone(), exec("reboot", &["db1"]), 1, 0);
    assert_eq!(
        a.approve(&r.id, root.clone(), Role::Admin, None, None, 1),
        Err(ApprovalError::SelfApproval { uid: 0 })
    );
    // Same uid under another name is still the same person.
    assert_eq!(
        a.approve(&r.id, p(0, "toor"), Role::Admin, None, None, 1),
        Err(ApprovalError::SelfApproval { uid: 0 })
    );
    assert_eq!(a.get(&r.id).unwrap().state, State::Pending);
    assert!(
        a.get(&r.id).unwrap().reviews.is_empty(),
        "a refusal changes nothing"
    );
}

#[test]
fn any_change_of_caller_command_or_targets_is_refused() {
    let mut a = Approvals::new(Settings::default(), []);
    let s = exec("reboot", &["db1", "db2"]);
    let r = new(&mut a, alice(), s.clone(), 1, 0);
    a.approve(&r.id, p(2000, "bob"), Role::Operator, None, None, 1)
        .unwrap();
    for (who, other) in [
        (alice(), exec("reboot -f", &["db1", "db2"])),
        (alice(), exec("reboot", &["db1"])),
        (alice(), exec("reboot", &["db1", "db2", "db3"])),
    ] {
        assert!(
            matches!(
                a.check_use(&r.id, &who, &other, 2),
                Err(ApprovalError::Mismatch { .. })
            ),
            "{other:?}"
        );
    }
    // Another caller cannot even see it.
    assert!(matches!(
        a.check_use(&r.id, &p(2000, "bob"), &s, 2),
        Err(ApprovalError::NotFound { .. })
    ));
    // Same uid, other principal name: the binding differs.
    assert!(matches!(
        a.check_use(&r.id, &p(1000, "mallory"), &s, 2),
        Err(ApprovalError::Mismatch { .. })
    ));
    assert_eq!(a.get(&r.id).unwrap().state, State::Granted);
    a.mark_used(&r.id, &alice(), &s, 3).unwrap();
}

#[test]
fn expiry_refuses_approval_and_use_and_the_sweep_records_it() {
    let mut a = Approvals::new(Settings::default(), []);
    let s = exec("reboot", &["db1"]);
    let r = new(&mut a, alice(), s.clone(), 1, 0);
    assert_eq!(
        a.approve(&r.id, p(2000, "bob"), Role::Operator, None, None, 15 * MIN),
        Err(ApprovalError::Expired { id: r.id.clone() })
    );
    let (changes, gone) = a.sweep(15 * MIN);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].event, "approval.expired");
    assert!(gone.is_empty());
    // Granted but not used in time.
    let r2 = new(&mut a, alice(), s.clone(), 2, 20 * MIN);
    a.approve(&r2.id, p(2000, "bob"), Role::Operator, None, None, 21 * MIN)
        .unwrap();
    assert!(matches!(
        a.mark_used(&r2.id, &alice(), &s, 35 * MIN),
        Err(ApprovalError::Expired { .. })
    ));
    // Final records are forgotten after the retention.
    let (_, gone) = a.sweep(15 * MIN + Settings::default().retain_ms);
    assert_eq!(gone, vec![r.id.clone()]);
}

#[test]
fn quorum_of_two_distinct_reviewers() {
    let settings = Settings {
        quorum: vec![
            QuorumRule {
                role: Role::Operator,
                count: 1,
            },
            QuorumRule {
                role: Role::Admin,
                count: 1,
            },
        ],
        ..Settings::default()
    };
    let mut a = Approvals::new(settings, []);
    let r = new(&mut a, alice(), exec("reboot", &["db1"]), 1, 0);
    let c = a
        .approve(&r.id, p(2000, "bob"), Role::Operator, None, None, 1)
        .unwrap();
    assert_eq!(
        (c.event, c.record.state),
        ("approval.reviewed", State::Pending)
    );
    assert_eq!(
        a.approve(&r.id, p(2000, "bob"), Role::Operator, None, None, 2),
        Err(ApprovalError::AlreadyReviewed { uid: 2000 })
    );
    // A second operator does not fill the admin slot.
    let c = a
        .approve(&r.id, p(2001, "carol"), Role::Operator, None, None, 3)
        .unwrap();
    assert_eq!(c.record.state, State::Pending);
    assert!(matches!(
        a.approve(&r.id, p(2002, "dave"), Role::ReadOnly, None, None, 4),
        Err(ApprovalError::NotEligible { .. })
    ));
    let c = a
        .approve(&r.id, p(0, "root"), Role::Admin, None, None, 5)
        .unwrap();
    assert_eq!(
        (c.event, c.record.state),
        ("approval.granted", State::Granted)
    );
}

#[test]
fn a_denial_ends_it_and_the_requester_may_withdraw() {
    let mut a = Approvals::new(Settings::default(), []);
    let r = new(&mut a, alice(), exec("reboot", &["db1"]), 1, 0);
    let c = a
        .deny(
            &r.id,
            p(2000, "bob"),
            Role::Operator,
            Some("not now".into()),
            1,
        )
        .unwrap();
    assert_eq!(
        (c.event, c.record.state),
        ("approval.denied", State::Denied)
    );
    assert!(matches!(
        a.approve(&r.id, p(2001, "carol"), Role::Operator, None, None, 2),
        Err(ApprovalError::WrongState {
            state: "denied",
            ..
        })
    ));
    let r2 = new(&mut a, alice(), exec("reboot", &["db2"]), 2, 3);
    let c = a.deny(&r2.id, alice(), Role::Operator, None, 4).unwrap();
    assert_eq!(c.record.state, State::Denied);
}

#[test]
fn an_allowance_is_never_wider_than_its_request() {
    let mut a = Approvals::new(Settings::default(), []);
    let s = exec("systemctl restart nginx", &["web1", "web2"]);
    let r = new(&mut a, alice(), s.clone(), 1, 0);
    let bob = || p(2000, "bob");
    let spec = |pattern: &str, hosts: &[&str], ttl: u64| AllowanceSpec {
        pattern: pattern.into(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        ttl_secs: ttl,
    };
    for (bad, field) in [
        (
            spec("systemctl status .*", &["web1"], 60),
            "allowance.pattern",
        ),
        (
            spec("systemctl restart", &["web1"], 60),
            "allowance.pattern",
        ), // anchored
        (
            spec("systemctl restart .*", &["web1", "web3"], 60),
            "allowance.hosts",
        ),
        (spec("systemctl restart .*", &[], 60), "allowance.hosts"),
        (spec("systemctl restart .*", &["web1"], 0), "allowance.ttl"),
        (
            spec("systemctl restart .*", &["web1"], 9 * 3600),
            "allowance.ttl",
        ),
        (spec("(", &["web1"], 60), "allowance.pattern"),
    ] {
        match a.approve(&r.id, bob(), Role::Operator, None, Some(bad.clone()), 1) {
            Err(ApprovalError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(a.get(&r.id).unwrap().state, State::Pending);
    let c = a
        .approve(
            &r.id,
            bob(),
            Role::Operator,
            None,
            Some(spec("systemctl restart [a-z]+", &["web2", "web1"], 600)),
            1000,
        )
        .unwrap();
    let allowance = c.record.allowance.clone().unwrap();
    assert_eq!(allowance.hosts, vec!["web1", "web2"]);
    assert_eq!(allowance.expires_at_ms, 1000 + 600_000);
    // The next matching command on a subset goes through; nothing wider does.
    let next = exec("systemctl restart redis", &["web1"]);
    assert_eq!(a.allowance_for(&alice(), &next, 2000).unwrap().id, r.id);
    for wider in [
        exec("systemctl restart redis", &["web1", "web3"]),
        exec("systemctl stop redis", &["web1"]),
        exec("systemctl restart redis; rm -rf /", &["web1"]),
    ] {
        assert!(
            a.allowance_for(&alice(), &wider, 2000).is_none(),
            "{wider:?}"
        );
    }
    assert!(
        a.allowance_for(&p(2000, "bob"), &next, 2000).is_none(),
        "other caller"
    );
    assert!(
        a.allowance_for(&alice(), &next, 601_000).is_none(),
        "after its TTL"
    );
    // It outlives the single use of the prompting request.
    a.mark_used(&r.id, &alice(), &s, 3000).unwrap();
    assert!(a.allowance_for(&alice(), &next, 4000).is_some());
}

#[test]
fn allowances_with_a_quorum_apply_only_when_every_approver_agrees() {
    let settings = Settings {
        quorum: vec![QuorumRule {
            role: Role::Operator,
            count: 2,
        }],
        ..Settings::default()
    };
    let mut a = Approvals::new(settings, []);
    let r = new(&mut a, alice(), exec("uptime", &["web1"]), 1, 0);
    let spec = AllowanceSpec {
        pattern: "uptime.*".into(),
        hosts: vec!["web1".into()],
        ttl_secs: 60,
    };
    a.approve(&r.id, p(2000, "bob"), Role::Operator, None, Some(spec), 1)
        .unwrap();
    let c = a
        .approve(&r.id, p(2001, "carol"), Role::Operator, None, None, 2)
        .unwrap();
    assert_eq!(c.record.state, State::Granted);
    assert!(c.record.allowance.is_none(), "single use only");
}

#[test]
fn access_grants_lapse_by_themselves_and_can_be_revoked() {
    let mut a = Approvals::new(Settings::default(), []);
    let s = Subject::Access {
        role: Role::Operator,
        duration_secs: 2,
    };
    assert!(matches!(
        a.request(alice(), s.clone(), "  ", id(9), 0),
        Err(ApprovalError::Invalid {
            field: "reason",
            ..
        })
    ));
    let r = new(&mut a, alice(), s, 1, 0);
    assert_eq!(
        r.quorum,
        vec![QuorumRule {
            role: Role::Operator,
            count: 1
        }]
    );
    assert!(matches!(
        a.approve(&r.id, p(2000, "aud"), Role::Auditor, None, None, 1),
        Err(ApprovalError::NotEligible { .. })
    ));
    assert!(matches!(
        a.approve(&r.id, alice(), Role::Admin, None, None, 1),
        Err(ApprovalError::SelfApproval { .. })
    ));
    let c = a
        .approve(&r.id, p(2001, "op"), Role::Operator, None, None, 1000)
        .unwrap();
    assert_eq!(c.event, "access.granted");
    assert_eq!(a.granted_role(1000, 1000), Some(Role::Operator));
    assert_eq!(a.granted_role(1000, 2999), Some(Role::Operator));
    assert_eq!(
        a.granted_role(1000, 3000),
        None,
        "gone at expiry, no sweep needed"
    );
    let (changes, _) = a.sweep(3000);
    assert_eq!(changes[0].event, "access.expired");
    // Revoke: by the holder or an admin only.
    let r2 = new(
        &mut a,
        alice(),
        Subject::Access {
            role: Role::Admin,
            duration_secs: 3600,
        },
        2,
        4000,
    );
    assert!(matches!(
        a.approve(&r2.id, p(2001, "op"), Role::Operator, None, None, 4001),
        Err(ApprovalError::NotEligible { .. })
    ));
    a.approve(&r2.id, p(0, "root"), Role::Admin, None, None, 4002)
        .unwrap();
    assert_eq!(a.granted_role(1000, 5000), Some(Role::Admin));
    assert!(matches!(
        a.revoke(&r2.id, &p(2001, "op"), Role::Operator, 5000),
        Err(ApprovalError::Forbidden(_))
    ));
    let c = a.revoke(&r2.id, &alice(), Role::Admin, 5000).unwrap();
    assert_eq!(c.event, "access.revoked");
    assert_eq!(a.granted_role(1000, 5001), None);
}

#[test]
fn pending_requests_are_bounded() {
    let settings = Settings {
        max_pending_per_caller: 2,
        max_pending: 3,
        ..Settings::default()
    };
    let mut a = Approvals::new(settings, []);
    new(&mut a, alice(), exec("a", &["h"]), 1, 0);
    new(&mut a, alice(), exec("b", &["h"]), 2, 0);
    assert!(matches!(
        a.request(alice(), exec("c", &["h"]), "", id(3), 0),
        Err(ApprovalError::TooManyPending {
            scope: "this caller",
            limit: 2
        })
    ));
    new(&mut a, p(2000, "bob"), exec("c", &["h"]), 4, 0);
    assert!(matches!(
        a.request(p(3000, "carol"), exec("d", &["h"]), "", id(5), 0),
        Err(ApprovalError::TooManyPending {
            scope: "the daemon",
            ..
        })
    ));
    assert!(matches!(
        a.request(alice(), exec("e", &["h"]), "", "../../etc/passwd".into(), 0),
        Err(ApprovalError::BadId { .. })
    ));
}

#[test]
fn the_file_store_survives_a_reopen_and_refuses_odd_ids() {
    let d = tempfile::tempdir().unwrap();
    let store = FileStore::open(d.path().join("approvals")).unwrap();
    let mut a = Approvals::new(Settings::default(), []);
    let r = new(&mut a, alice(), exec("reboot", &["db1"]), 1, 0);
    store.put(&r).unwrap();
    std::fs::write(
        d.path().join("approvals/apr-00000000000000ff.json"),
        b"{not json",
    )
    .unwrap();
    std::fs::write(d.path().join("approvals/notes.txt"), b"x").unwrap();
    let reopened = FileStore::open(d.path().join("approvals")).unwrap();
    let (records, skipped) = reopened.load().unwrap();
    assert_eq!(records, vec![r.clone()]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    // Reloaded records are approvable.
    let mut b = Approvals::new(Settings::default(), records);
    b.approve(&r.id, p(2000, "bob"), Role::Operator, None, None, 1)
        .unwrap();
    assert!(matches!(
        store.remove("../x"),
        Err(ApprovalError::BadId { .. })
    ));
    store.remove(&r.id).unwrap();
    store.remove(&r.id).unwrap();
    assert!(reopened.load().unwrap().0.is_empty());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("approvals"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn final_records_are_capped_oldest_first() {
    let settings = Settings {
        max_final: 2,
        ..Settings::default()
    };
    let mut a = Approvals::new(settings, []);
    for n in 1..=4u8 {
        let r = new(
            &mut a,
            alice(),
            exec(&format!("c{n}"), &["h"]),
            n,
            u64::from(n),
        );
        a.deny(&r.id, alice(), Role::Operator, None, u64::from(n))
            .unwrap();
    }
    assert!(a.due(10));
    let (changes, gone) = a.sweep(10);
    assert!(changes.is_empty());
    assert_eq!(gone, vec![id(1), id(2)]);
    assert_eq!(a.records().count(), 2);
    assert!(!a.due(10));
}
