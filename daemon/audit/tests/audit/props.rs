//! Property tests: random record sequences round-trip and verify; any single-byte flip is detected.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Value};
use tether_audit::*;

use super::*;

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arb_event() -> impl Strategy<Value = (Event, u64)> {
    (
        prop::sample::select(vec![
            "exec.requested",
            "exec.result",
            "fs.write",
            "audit.read",
            "enroll.accepted",
        ]),
        any::<u32>(),
        "[a-z]{1,8}",
        prop::option::of("[a-z0-9.-]{1,20}"),
        prop::collection::btree_map(".{0,8}", json_value(), 0..5),
        0u64..40_000,
    )
        .prop_map(|(kind, uid, user, host, data, advance)| {
            let ev = Event {
                kind: kind.into(),
                actor: Actor {
                    uid,
                    user,
                    role: Some(tether_model::Role::Operator),
                    via: Via::Mcp,
                },
                host,
                data: Value::Object(data.into_iter().collect()),
            };
            (ev, advance)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn records_round_trip_verify_and_every_byte_flip_is_detected(
        evs in prop::collection::vec(arb_event(), 1..12),
        flip_at in any::<prop::sample::Index>(),
        flip_mask in 1u8..=255,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let k = keys();
        let clock = Arc::new(ManualClock::new(t0()));
        let (log, _) = open(&dir, &k, Some(clock.clone()));
        for (ev, adv) in &evs {
            clock.advance(Duration::from_secs(*adv));
            log.append_blocking(ev).unwrap();
        }
        log.close_blocking();
        let back: Vec<Record> = read_records(&dir, &Filter::default()).unwrap().map(|r| r.unwrap()).collect();
        prop_assert_eq!(back.len(), evs.len());
        for (i, (r, (ev, _))) in back.iter().zip(&evs).enumerate() {
            prop_assert_eq!(r.seq, i as u64 + 1);
            prop_assert_eq!(&r.kind, &ev.kind);
            prop_assert_eq!(&r.actor, &ev.actor);
            prop_assert_eq!(&r.host, &ev.host);
            prop_assert_eq!(&r.data, &ev.data);
        }
        let rep = verify(&dir, &k, None, None).unwrap();
        prop_assert!(rep.is_ok(), "{:?}", rep.broken);
        prop_assert_eq!(rep.records, evs.len() as u64);

        // Flip one byte anywhere in the day files or the head.
        let mut files = day_files(&dir);
        files.push(dir.join("head"));
        let sizes: Vec<usize> = files.iter().map(|p| std::fs::metadata(p).unwrap().len() as usize).collect();
        let mut pos = flip_at.index(sizes.iter().sum());
        let mut fi = 0;
        while pos >= sizes[fi] {
            pos -= sizes[fi];
            fi += 1;
        }
        let mut data = std::fs::read(&files[fi]).unwrap();
        data[pos] ^= flip_mask;
        std::fs::write(&files[fi], &data).unwrap();
        let rep = verify(&dir, &k, None, None).unwrap();
        prop_assert!(!rep.is_ok(), "flip of byte {} in {:?} went unnoticed", pos, files[fi]);
    }
}
