//! Integration tests with real components built by `plugins/build.sh` (wasm32-wasip2).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tether_model::Role;
use tether_model::selector::HostFacts;
use tether_plugin_host::*;
use tether_policy::{PluginVote, Request, Vote};
use zeroize::Zeroizing;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const ALL: &[&str] = &[
    "allow_all",
    "deny_all",
    "spin",
    "alloc_bomb",
    "trap",
    "stack_overflow",
    "huge_output",
    "http_probe",
    "secret_probe",
    "alert_recorder",
    "audit_recorder",
    "enroll_tagger",
    "change_window",
    "legacy_v0_1",
    "parse_probe",
    "tcp_probe",
];

/// The built components' directory; runs plugins/build.sh once if any is missing.
fn artifacts() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo().join("plugins/target/wasm32-wasip2/release");
        if ALL.iter().any(|n| !dir.join(format!("{n}.wasm")).is_file()) {
            let st = std::process::Command::new("sh")
                .arg(repo().join("plugins/build.sh"))
                .status()
                .expect("run plugins/build.sh");
            assert!(st.success(), "plugins/build.sh failed");
        }
        dir
    })
}

/// One compile cache for the whole test binary (compiling is the slow part in debug builds).
fn cache_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .join("cache")
}

/// The cache key the tests' hosts use (the daemon's comes from its vault).
struct TestCacheKey([u8; 32]);

impl CacheKey for TestCacheKey {
    fn cache_key(&self) -> Option<Zeroizing<Vec<u8>>> {
        Some(Zeroizing::new(self.0.to_vec()))
    }
}

fn test_key() -> Arc<dyn CacheKey> {
    Arc::new(TestCacheKey([0x5a; 32]))
}

struct Fixture {
    dir: tempfile::TempDir,
    key: PathBuf,
    pubkey: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing.key");
        let info = signing::keygen(&key).unwrap();
        Fixture {
            dir,
            key,
            pubkey: info.public_key,
        }
    }

    /// Copies a built plugin into the fixture dir, signed unless `sign` is false.
    fn plugin(&self, name: &str, sign: bool) -> PathBuf {
        let dst = self.dir.path().join(format!("{name}.wasm"));
        std::fs::copy(artifacts().join(format!("{name}.wasm")), &dst).unwrap();
        if sign {
            signing::sign(&dst, &self.key).unwrap();
        }
        dst
    }

    fn manifest(&self, body: &str) -> PathBuf {
        let p = self.dir.path().join("plugins.toml");
        std::fs::write(&p, format!("trusted_keys = [\"{}\"]\n{body}", self.pubkey)).unwrap();
        p
    }

    fn host(&self, body: &str) -> Result<PluginHost> {
        self.host_with(body, HostOptions::default())
    }

    fn host_with(&self, body: &str, mut opts: HostOptions) -> Result<PluginHost> {
        let m = self.manifest(body);
        opts.cache_dir = Some(cache_dir());
        opts.cache_key = test_key();
        PluginHost::load(&m, opts, &prometheus::Registry::new())
    }
}

fn entry(name: &str, kind: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = \"{}.wasm\"\n{extra}\n",
        name.replace('-', "_")
    )
}

fn req() -> Request {
    Request::exec("systemctl restart nginx")
        .by("alice", Role::Operator)
        .on(HostFacts::named("web1")
            .with_group("web")
            .with_tag("env", "prod"))
}

fn one(host: &PluginHost) -> PluginVote {
    let mut v = host.evaluate(&req());
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

mod basic {
    use super::*;

    #[test]
    fn allow_and_deny_votes_in_manifest_order() {
        let f = Fixture::new();
        f.plugin("allow_all", true);
        f.plugin("deny_all", true);
        let host = f
            .host(&(entry("allow_all", "policy", "") + &entry("deny_all", "policy", "")))
            .unwrap();
        let votes = host.evaluate(&req());
        assert_eq!(votes.len(), 2);
        assert_eq!(votes[0].plugin, "allow_all");
        assert_eq!(votes[0].outcome(), Ok(&Vote::Allow));
        assert_eq!(votes[1].vote, Vote::Deny("deny-all says no".into()));
        let list = host.list();
        assert_eq!(list[0].calls, 1);
        assert_eq!(list[0].errors, 0);
        assert!(list[0].signer.is_some());
        assert_eq!(list[0].sha256.len(), 64);
        assert!(list[0].p99_us.is_some());
        // no sinks/hooks of other kinds: they are not called
        assert!(
            host.deliver_alert(&tether_model::Alert::new(
                "x",
                tether_model::Severity::Info,
                "m"
            ))
            .is_empty()
        );
        assert!(host.has(PluginKind::Policy) && !host.has(PluginKind::AuditSink));
    }

    #[test]
    fn sinks_and_enrollment_hook() {
        let f = Fixture::new();
        for n in ["alert_recorder", "audit_recorder", "enroll_tagger"] {
            f.plugin(n, true);
        }
        let host = f
            .host(
                &(entry("alert_recorder", "alert_sink", "")
                    + &entry("audit_recorder", "audit_sink", "")
                    + &entry("enroll_tagger", "enrollment_hook", "")),
            )
            .unwrap();
        let ok = host.deliver_alert(&tether_model::Alert::new(
            "host_revoked",
            tether_model::Severity::Warning,
            "web1 revoked",
        ));
        assert_eq!(ok[0].outcome, Ok(()));
        let bad = host.deliver_alert(&tether_model::Alert::new(
            "fail-me",
            tether_model::Severity::Info,
            "x",
        ));
        assert_eq!(
            bad[0].outcome.as_ref().unwrap_err().kind,
            ErrorKind::Rejected
        );
        let rec = |seq: u64, kind: &str| AuditRecord {
            seq,
            ts: "2026-11-23T10:00:00Z".into(),
            kind: kind.into(),
            actor_uid: 1000,
            actor_user: "alice".into(),
            actor_role: Some("operator".into()),
            via: "cli".into(),
            host: Some("web1".into()),
            data_json: "{}".into(),
        };
        assert_eq!(
            host.deliver_audit_batch(&[rec(1, "exec.requested"), rec(2, "exec.result")])[0].outcome,
            Ok(())
        );
        assert_eq!(
            host.deliver_audit_batch(&[rec(3, "fail-me")])[0]
                .outcome
                .as_ref()
                .unwrap_err()
                .kind,
            ErrorKind::Rejected
        );
        let mut er = EnrollRequest {
            name: "web2".into(),
            hostname: "web2.local".into(),
            overlay_ip: "10.77.0.5".into(),
            tags: vec![],
            groups: vec![],
            peer: Some("127.0.0.1:5555".into()),
        };
        assert_eq!(
            host.on_enroll(&er)[0].effective,
            EnrollDecision::Approve(vec![("approved-by".into(), "plugin".into())])
        );
        er.name = "evil1".into();
        assert!(matches!(
            host.on_enroll(&er)[0].effective,
            EnrollDecision::Deny(_)
        ));
        // a rejected delivery is an error, but never a reason to quarantine
        let alert_info = host
            .list()
            .into_iter()
            .find(|p| p.name == "alert_recorder")
            .unwrap();
        assert_eq!(
            (alert_info.calls, alert_info.errors, alert_info.quarantined),
            (2, 1, false)
        );
    }

    #[test]
    fn wrong_kind_is_refused_with_the_world_named() {
        let f = Fixture::new();
        f.plugin("allow_all", true);
        let e = f
            .host(&entry("allow_all", "alert_sink", ""))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("allow_all") && e.contains("alert-sink"), "{e}");
    }

    #[test]
    fn precompiled_artifact_is_cached_by_content_hash() {
        let f = Fixture::new();
        f.plugin("deny_all", true);
        let host = f.host(&entry("deny_all", "policy", "")).unwrap();
        let sha = host.list()[0].sha256.clone();
        let cached: Vec<_> = std::fs::read_dir(cache_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&sha))
            .collect();
        assert_eq!(
            cached.len(),
            1,
            "one .cwasm named by the component's sha256"
        );
        drop(host);
        let t = Instant::now();
        let host = f.host(&entry("deny_all", "policy", "")).unwrap();
        eprintln!("load from cache: {:?}", t.elapsed());
        assert_eq!(one(&host).vote, Vote::Deny("deny-all says no".into()));
    }

    /// The cache file of the component with this hash.
    fn cached_file(dir: &Path, sha: &str) -> PathBuf {
        let mut hits: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(sha))
            .collect();
        assert_eq!(hits.len(), 1, "{hits:?}");
        hits.remove(0)
    }

    /// A file written into the cache never runs: another component's entry (valid, but MAC'd
    /// for another hash), a raw artifact without a MAC, a byte flip, garbage and an entry made
    /// with another key are all refused and recompiled from the signed component.
    #[test]
    fn a_planted_cache_entry_never_runs() {
        let f = Fixture::new();
        f.plugin("deny_all", true);
        f.plugin("allow_all", true);
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let load = |name: &str, key: Arc<dyn CacheKey>| {
            let m = f.manifest(&entry(name, "policy", ""));
            let opts = HostOptions {
                cache_dir: Some(cache.clone()),
                cache_key: key,
                ..HostOptions::default()
            };
            PluginHost::load(&m, opts, &prometheus::Registry::new()).unwrap()
        };
        let deny = load("deny_all", test_key());
        let deny_sha = deny.list()[0].sha256.clone();
        drop(deny);
        let allow = load("allow_all", test_key());
        let allow_sha = allow.list()[0].sha256.clone();
        drop(allow);
        let deny_file = cached_file(&cache, &deny_sha);
        let allow_entry = std::fs::read(cached_file(&cache, &allow_sha)).unwrap();
        let deny_entry = std::fs::read(&deny_file).unwrap();
        let mut flipped = deny_entry.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        let planted: Vec<(&str, Vec<u8>)> = vec![
            ("another component's entry", allow_entry.clone()),
            ("a raw artifact without a MAC", allow_entry[40..].to_vec()),
            ("a flipped byte", flipped),
            ("garbage", b"TCWASM01 not native code at all".to_vec()),
        ];
        for (what, bytes) in planted {
            std::fs::write(&deny_file, &bytes).unwrap();
            let host = load("deny_all", test_key());
            assert_eq!(
                one(&host).vote,
                Vote::Deny("deny-all says no".into()),
                "{what} was loaded instead of the signed component"
            );
            assert_ne!(
                std::fs::read(&deny_file).unwrap(),
                bytes,
                "{what} stays in the cache"
            );
        }
        // an entry sealed with another key (a cache copied from another daemon) is refused too
        let other: Arc<dyn CacheKey> = Arc::new(TestCacheKey([0x11; 32]));
        std::fs::write(&deny_file, &allow_entry).unwrap();
        let host = load("deny_all", other);
        assert_eq!(one(&host).vote, Vote::Deny("deny-all says no".into()));
        // without a key nothing is cached
        let empty = dir.path().join("nokey");
        let m = f.manifest(&entry("deny_all", "policy", ""));
        let opts = HostOptions {
            cache_dir: Some(empty.clone()),
            ..HostOptions::default()
        };
        let host = PluginHost::load(&m, opts, &prometheus::Registry::new()).unwrap();
        assert_eq!(one(&host).vote, Vote::Deny("deny-all says no".into()));
        assert!(!empty.exists(), "no cache without a key");
    }

    #[test]
    fn metrics_are_exported() {
        let f = Fixture::new();
        f.plugin("trap", true);
        f.plugin("allow_all", true);
        let registry = prometheus::Registry::new();
        let m = f.manifest(&(entry("trap", "policy", "") + &entry("allow_all", "policy", "")));
        let opts = HostOptions {
            cache_dir: Some(cache_dir()),
            cache_key: test_key(),
            ..HostOptions::default()
        };
        let host = PluginHost::load(&m, opts, &registry).unwrap();
        host.evaluate(&req());
        let text = {
            use prometheus::Encoder;
            let mut buf = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains("tether_plugin_errors_total{kind=\"trap\",plugin=\"trap\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tether_plugin_calls_total{plugin=\"allow_all\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tether_plugin_call_duration_seconds_bucket"),
            "{text}"
        );
    }
}

mod hostile {
    use super::*;

    #[test]
    fn spin_is_stopped_at_the_deadline_and_the_next_call_works() {
        let f = Fixture::new();
        f.plugin("spin", true);
        f.plugin("allow_all", true);
        let host = f
            .host(
                &(entry("spin", "policy", "[plugin.limits]\ntimeout_ms = 50")
                    + &entry("allow_all", "policy", "")),
            )
            .unwrap();
        for _ in 0..2 {
            let t = Instant::now();
            let votes = host.evaluate(&req());
            let took = t.elapsed();
            let err = votes[0].outcome().unwrap_err().clone();
            assert_eq!(err.kind, ErrorKind::Timeout.as_str(), "{err}");
            assert!(took >= Duration::from_millis(50), "{took:?}");
            assert!(
                took < Duration::from_millis(1000),
                "stopped near the deadline, took {took:?}"
            );
            // fail_closed (policy default)
            assert!(matches!(&votes[0].vote, Vote::Deny(r) if r.contains("timeout")));
            assert_eq!(votes[1].outcome(), Ok(&Vote::Allow));
        }
    }

    #[test]
    fn fail_open_abstains() {
        let f = Fixture::new();
        f.plugin("trap", true);
        let host = f
            .host(&entry("trap", "policy", "on_error = \"fail_open\""))
            .unwrap();
        let v = one(&host);
        assert_eq!(v.vote, Vote::Abstain);
        assert_eq!(v.outcome().unwrap_err().kind, ErrorKind::Trap.as_str());
    }

    #[test]
    fn alloc_bomb_is_stopped_at_the_memory_cap() {
        let f = Fixture::new();
        f.plugin("alloc_bomb", true);
        let host = f
            .host(&entry(
                "alloc_bomb",
                "policy",
                "[plugin.limits]\nmemory_mb = 16\ntimeout_ms = 2000",
            ))
            .unwrap();
        for _ in 0..2 {
            let e = one(&host).outcome().unwrap_err().clone();
            assert_eq!(e.kind, ErrorKind::Memory.as_str(), "{e}");
        }
    }

    #[test]
    fn trap_and_stack_overflow_are_contained() {
        let f = Fixture::new();
        f.plugin("trap", true);
        f.plugin("stack_overflow", true);
        let host = f
            .host(
                &(entry("trap", "policy", "")
                    + &entry(
                        "stack_overflow",
                        "policy",
                        "[plugin.limits]\ntimeout_ms = 2000",
                    )),
            )
            .unwrap();
        for _ in 0..2 {
            let v = host.evaluate(&req());
            assert_eq!(v[0].outcome().unwrap_err().kind, ErrorKind::Trap.as_str());
            let so = v[1].outcome().unwrap_err().clone();
            // Rust's wasm stack lives in linear memory (below the data): overflowing it is an
            // out-of-bounds access trap; a native-stack overflow would be wasmtime's StackOverflow.
            assert_eq!(so.kind, ErrorKind::Trap.as_str(), "{so}");
            assert!(
                so.message.contains("out of bounds") || so.message.contains("call stack exhausted"),
                "{so}"
            );
        }
    }

    #[test]
    fn huge_output_is_refused() {
        let f = Fixture::new();
        f.plugin("huge_output", true);
        // Enough memory to build the 64 MiB reason, so the output limit is what refuses it.
        let host = f
            .host(&entry(
                "huge_output",
                "policy",
                "[plugin.limits]\nmemory_mb = 200\ntimeout_ms = 5000",
            ))
            .unwrap();
        let e = one(&host).outcome().unwrap_err().clone();
        assert_eq!(e.kind, ErrorKind::OutputTooLarge.as_str(), "{e}");
        // with the default 16 MiB it cannot even build it
        let host = f
            .host(&entry(
                "huge_output",
                "policy",
                "[plugin.limits]\ntimeout_ms = 5000",
            ))
            .unwrap();
        assert_eq!(
            one(&host).outcome().unwrap_err().kind,
            ErrorKind::Memory.as_str()
        );
    }

    #[test]
    fn quarantine_after_repeated_failures_raises_an_alert() {
        struct Rec(Mutex<Vec<tether_model::Alert>>);
        impl tether_model::AlertSink for Rec {
            fn raise(&self, a: tether_model::Alert) {
                self.0.lock().unwrap().push(a);
            }
        }
        struct Events(Mutex<Vec<Quarantined>>);
        impl PluginEvents for Events {
            fn quarantined(&self, e: &Quarantined) {
                self.0.lock().unwrap().push(e.clone());
            }
        }
        let alerts = Arc::new(Rec(Mutex::new(Vec::new())));
        let events = Arc::new(Events(Mutex::new(Vec::new())));
        let f = Fixture::new();
        f.plugin("trap", true);
        let opts = HostOptions {
            alerts: alerts.clone(),
            events: events.clone(),
            quarantine_after: 3,
            ..HostOptions::default()
        };
        let host = f.host_with(&entry("trap", "policy", ""), opts).unwrap();
        // failures on the inputs of two callers (a plugin broken for everyone)
        for user in ["alice", "bob", "alice"] {
            let mut v = host.evaluate(&req().by(user, Role::Operator));
            assert_eq!(
                v.remove(0).outcome().unwrap_err().kind,
                ErrorKind::Trap.as_str()
            );
        }
        assert_eq!(alerts.0.lock().unwrap().len(), 1);
        assert_eq!(alerts.0.lock().unwrap()[0].kind, "plugin_quarantined");
        {
            let ev = events.0.lock().unwrap();
            assert_eq!(ev.len(), 1, "the daemon is told once");
            assert_eq!(
                (ev[0].plugin.as_str(), ev[0].kind, ev[0].failures),
                ("trap", PluginKind::Policy, 3)
            );
            assert_eq!(ev[0].last_error.kind, ErrorKind::Trap);
            assert!(!ev[0].last_error.message.is_empty());
        }
        let v = one(&host);
        assert_eq!(
            v.outcome().unwrap_err().kind,
            ErrorKind::Quarantined.as_str()
        );
        assert!(
            matches!(v.vote, Vote::Deny(_)),
            "a quarantined fail_closed hook keeps denying"
        );
        assert!(host.list()[0].quarantined);
        assert_eq!(alerts.0.lock().unwrap().len(), 1, "alerted once");
        assert_eq!(events.0.lock().unwrap().len(), 1, "recorded once");
        host.reload().unwrap();
        assert!(!host.list()[0].quarantined, "reload clears quarantine");
    }
}

/// A read-only caller cannot quarantine a plugin (issue 14 §3).
mod failure_accounting {
    use super::*;

    /// One caller's input that makes a `fail_closed` plugin fail (every call of `trap` fails,
    /// standing in for a crafted command) denies that caller's requests, and never quarantines
    /// the plugin: other callers keep getting real votes. Once the plugin fails for a second
    /// caller too, it is broken for everyone and is quarantined.
    #[test]
    fn one_callers_input_never_quarantines_a_plugin() {
        let f = Fixture::new();
        f.plugin("trap", true);
        let opts = HostOptions {
            quarantine_after: 3,
            ..HostOptions::default()
        };
        let host = f.host_with(&entry("trap", "policy", ""), opts).unwrap();
        let mallory = req().by("mallory", Role::ReadOnly);
        for _ in 0..20 {
            let v = host.evaluate(&mallory).remove(0);
            assert!(
                matches!(v.vote, Vote::Deny(_)),
                "fail_closed: mallory is denied"
            );
            assert_eq!(v.outcome().unwrap_err().kind, ErrorKind::Trap.as_str());
        }
        let info = &host.list()[0];
        assert!(
            !info.quarantined,
            "20 failures of one caller do not quarantine"
        );
        assert_eq!(info.errors, 20, "they are counted");
        // another caller is still asked (not answered "quarantined")
        let v = host.evaluate(&req().by("bob", Role::Operator)).remove(0);
        assert_eq!(v.outcome().unwrap_err().kind, ErrorKind::Trap.as_str());
        assert!(
            host.list()[0].quarantined,
            "failing for two callers: broken for everyone"
        );
    }

    /// Input over the hard limits never reaches a plugin: no call, no failure counted.
    #[test]
    fn input_over_the_hard_limits_never_reaches_plugins() {
        let f = Fixture::new();
        f.plugin("trap", true);
        f.plugin("allow_all", true);
        let host = f
            .host(&(entry("trap", "policy", "") + &entry("allow_all", "policy", "")))
            .unwrap();
        let big = "x".repeat(tether_policy::MAX_INPUT_BYTES + 1);
        let mut reqs = vec![Request::exec(big.clone()).by("mallory", Role::ReadOnly)];
        let mut r = req();
        r.ticket = Some(big.clone());
        reqs.push(r);
        let mut r = req();
        r.path = Some(format!("/{big}"));
        reqs.push(r);
        for r in &reqs {
            for v in host.evaluate(r) {
                assert!(
                    matches!(&v.vote, Vote::Deny(m) if m.contains("limit")),
                    "{v:?}"
                );
                assert!(v.error.is_none());
            }
        }
        for p in host.list() {
            assert_eq!((p.calls, p.errors), (0, 0), "{} was called", p.name);
        }
    }
}

mod signatures {
    use super::*;

    #[test]
    fn unsigned_is_refused_unless_allowed() {
        let f = Fixture::new();
        f.plugin("allow_all", false);
        let e = f.host(&entry("allow_all", "policy", "")).err().unwrap();
        assert!(
            matches!(
                e,
                Error::Signature(tether_plugin_sign::SignError::Unsigned { .. })
            ),
            "{e}"
        );
        let host = f
            .host(&format!(
                "allow_unsigned = true\n{}",
                entry("allow_all", "policy", "")
            ))
            .unwrap();
        assert_eq!(host.list()[0].signer, None);
        assert_eq!(one(&host).outcome(), Ok(&Vote::Allow));
    }

    #[test]
    fn tampered_after_signing_is_refused_even_with_allow_unsigned() {
        let f = Fixture::new();
        let p = f.plugin("allow_all", true);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(b"\0\0\0\0");
        std::fs::write(&p, bytes).unwrap();
        let e = f
            .host(&format!(
                "allow_unsigned = true\n{}",
                entry("allow_all", "policy", "")
            ))
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                Error::Signature(tether_plugin_sign::SignError::Tampered { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("modified after signing"), "{e}");
    }

    #[test]
    fn signed_by_an_untrusted_key_is_refused() {
        let f = Fixture::new();
        let p = f.plugin("allow_all", false);
        let other = f.dir.path().join("other.key");
        signing::keygen(&other).unwrap();
        signing::sign(&p, &other).unwrap();
        let e = f.host(&entry("allow_all", "policy", "")).err().unwrap();
        assert!(
            matches!(
                e,
                Error::Signature(tether_plugin_sign::SignError::UntrustedKey { .. })
            ),
            "{e}"
        );
    }

    #[test]
    fn reload_with_a_broken_plugin_keeps_the_old_set() {
        let f = Fixture::new();
        f.plugin("allow_all", true);
        f.plugin("deny_all", true);
        let host = f.host(&entry("allow_all", "policy", "")).unwrap();
        // a new manifest with a garbage component: reload fails, nothing changes
        std::fs::write(f.dir.path().join("broken.wasm"), b"\0asm not really").unwrap();
        f.manifest(&format!(
            "allow_unsigned = true\n{}{}",
            entry("deny_all", "policy", ""),
            entry("broken", "policy", "")
        ));
        let e = host.reload().unwrap_err();
        assert!(e.to_string().contains("broken"), "{e}");
        assert_eq!(host.list().len(), 1);
        assert_eq!(one(&host).outcome(), Ok(&Vote::Allow));
        // a bad manifest too
        f.manifest("[[plugin]]\nname = \"x\"\n");
        assert!(host.reload().is_err());
        assert_eq!(one(&host).outcome(), Ok(&Vote::Allow));
        // a good one swaps in
        f.manifest(&entry("deny_all", "policy", ""));
        assert_eq!(host.reload().unwrap(), 1);
        assert_eq!(one(&host).vote, Vote::Deny("deny-all says no".into()));
    }
}

mod capabilities {
    use super::*;

    fn probe(f: &Fixture, url: &str, caps: &str) -> String {
        let host = f
            .host(&entry(
                "http_probe",
                "policy",
                &format!("[plugin.limits]\ntimeout_ms = 3000\n[plugin.capabilities]\n{caps}\n[plugin.config]\nurl = \"{url}\""),
            ))
            .unwrap();
        match one(&host).outcome().unwrap() {
            Vote::Deny(r) => r.clone(),
            v => panic!("{v:?}"),
        }
    }

    /// A one-shot HTTP server on 127.0.0.1:0; returns its port.
    fn serve_once(body: &'static str) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    /// Serves one request and answers with the Host header it received.
    fn serve_host_echo() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let hosts: Vec<&str> = text
                    .lines()
                    .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
                    .collect();
                let body = hosts.join("|");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    /// `http.send` cannot front another virtual host: `Host` comes from the URL, and a plugin
    /// header naming another host or port (Host, X-Forwarded-Host, Forwarded) is refused
    /// before anything is sent.
    #[test]
    fn a_plugin_cannot_set_host_to_another_name() {
        let f = Fixture::new();
        f.plugin("http_probe", true);
        let caps = "allowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]";
        let run = |headers: &str, port: u16| {
            let host = f
                .host(&entry(
                    "http_probe",
                    "policy",
                    &format!("[plugin.limits]\ntimeout_ms = 3000\n[plugin.capabilities]\n{caps}\n[plugin.config]\nurl = \"http://127.0.0.1:{port}/\"\nheaders = {headers:?}"),
                ))
                .unwrap();
            match one(&host).vote {
                Vote::Deny(r) => r,
                v => panic!("{v:?}"),
            }
        };
        for evil in [
            "Host: metadata.internal",
            "host: 127.0.0.1.evil.example",
            "X-Forwarded-Host: admin.internal",
            "Forwarded: host=admin.internal",
            "HOST: 127.0.0.1:1",
        ] {
            let port = serve_host_echo();
            let r = run(evil, port);
            assert!(r.starts_with("error=not allowed"), "{evil}: {r}");
        }
        // no Host from the plugin, or its own host: the server sees exactly the URL's authority, once
        for ok in ["", "Host: 127.0.0.1"] {
            let port = serve_host_echo();
            let r = run(ok, port);
            assert_eq!(
                r,
                format!("status=200 body=host: 127.0.0.1:{port}"),
                "{ok:?}"
            );
        }
    }

    #[test]
    fn http_destinations_are_checked_after_resolution() {
        let f = Fixture::new();
        f.plugin("http_probe", true);
        // not in allowed_hosts (nothing is resolved or contacted)
        let r = probe(
            &f,
            "http://not-listed.invalid/x",
            "allowed_hosts = [\"other.invalid\"]\nallow_http = true",
        );
        assert!(
            r.starts_with("error=not allowed") && r.contains("not-listed.invalid"),
            "{r}"
        );
        // an allowed NAME that resolves to a forbidden address
        let r = probe(
            &f,
            "http://localhost:9/",
            "allowed_hosts = [\"localhost\"]\nallow_http = true",
        );
        assert!(
            r.starts_with("error=not allowed") && r.contains("loopback"),
            "{r}"
        );
        // an allowed IP literal that is forbidden (metadata) — refused before any connection
        let r = probe(
            &f,
            "http://169.254.169.254/latest",
            "allowed_hosts = [\"169.254.169.254\"]\nallow_http = true",
        );
        assert!(
            r.starts_with("error=not allowed") && r.contains("link-local"),
            "{r}"
        );
        // plain http without allow_http
        let r = probe(
            &f,
            "http://127.0.0.1:9/",
            "allowed_hosts = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1=127.0.0.1\"]",
        );
        assert!(
            r.starts_with("error=not allowed") && r.contains("allow_http"),
            "{r}"
        );
        // positive: explicit loopback allowance, a real server on 127.0.0.1
        let port = serve_once("hello from 127.0.0.1");
        let r = probe(
            &f,
            &format!("http://127.0.0.1:{port}/ok"),
            "allowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]",
        );
        assert_eq!(r, "status=200 body=hello from 127.0.0.1");
    }

    #[test]
    fn http_response_size_limit() {
        let f = Fixture::new();
        f.plugin("http_probe", true);
        let port = serve_once("this body is longer than sixteen bytes");
        let host = f
            .host(&entry(
                "http_probe",
                "policy",
                &format!("[plugin.limits]\ntimeout_ms = 3000\nmax_response_bytes = 16\n[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]\n[plugin.config]\nurl = \"http://127.0.0.1:{port}/\""),
            ))
            .unwrap();
        assert_eq!(one(&host).vote, Vote::Deny("error=too large".into()));
    }

    #[test]
    fn http_is_bounded_by_the_call_deadline() {
        let f = Fixture::new();
        f.plugin("http_probe", true);
        // accepts but never answers
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let host = f
            .host(&entry(
                "http_probe",
                "policy",
                &format!("[plugin.limits]\ntimeout_ms = 200\n[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_http = true\nallow_private = [\"127.0.0.1=127.0.0.1\"]\n[plugin.config]\nurl = \"http://127.0.0.1:{port}/\""),
            ))
            .unwrap();
        let t = Instant::now();
        let v = one(&host);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        // the host answers `timeout` to the guest, which then runs past its own deadline or reports it
        match v.outcome() {
            Ok(Vote::Deny(r)) => assert_eq!(r, "error=timeout"),
            Err(e) => assert_eq!(e.kind, ErrorKind::Timeout.as_str()),
            other => panic!("{other:?}"),
        }
        drop(l);
    }

    struct Vault;
    impl SecretSource for Vault {
        fn get(&self, name: &str) -> Option<Zeroizing<Vec<u8>>> {
            (name == "tok" || name == "other").then(|| Zeroizing::new(b"s3cret".to_vec()))
        }
    }

    #[test]
    fn secrets_only_when_granted() {
        let f = Fixture::new();
        f.plugin("secret_probe", true);
        let opts = || HostOptions {
            secrets: Arc::new(Vault),
            ..HostOptions::default()
        };
        let granted = f
            .host_with(
                &entry(
                    "secret_probe",
                    "policy",
                    "[plugin.capabilities]\nsecrets = [\"tok\"]\n[plugin.config]\nsecret = \"tok\"",
                ),
                opts(),
            )
            .unwrap();
        assert_eq!(one(&granted).outcome(), Ok(&Vote::Allow));
        assert_eq!(granted.list()[0].secret_denials, 0);
        let denied = f
            .host_with(&entry("secret_probe", "policy", "[plugin.capabilities]\nsecrets = [\"tok\"]\n[plugin.config]\nsecret = \"other\""), opts())
            .unwrap();
        assert_eq!(one(&denied).outcome(), Ok(&Vote::Deny("missing".into())));
        assert_eq!(denied.list()[0].secret_denials, 1);
    }
}

/// `https://` through the host: a local rustls server with a CA made by the `openssl` CLI.
mod https {
    use super::*;
    use std::process::Command;

    /// A test CA and a leaf certificate for `localhost` signed by it (PEM files in a temp dir).
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let run = |args: &[&str]| {
                let out = Command::new("openssl")
                    .args(args)
                    .current_dir(d)
                    .output()
                    .expect("the openssl CLI is needed to make test certificates");
                assert!(
                    out.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ];
            run(&[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=Tether Test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat());
            run(&[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "leaf.key",
                    "-out",
                    "leaf.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat());
            std::fs::write(
                d.join("leaf.ext"),
                "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.pem",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ]);
            Pki { dir }
        }

        fn ca(&self) -> PathBuf {
            self.dir.path().join("ca.pem")
        }

        /// A rustls HTTPS server on 127.0.0.1:0 answering every request with `body`.
        fn serve(&self, body: &'static str) -> u16 {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(self.dir.path().join("leaf.pem"))
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_file(self.dir.path().join("leaf.key")).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let l = tokio::net::TcpListener::from_std(l).unwrap();
                    loop {
                        let Ok((s, _)) = l.accept().await else { return };
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // A client that refuses the certificate ends the handshake here.
                            let Ok(mut tls) = acceptor.accept(s).await else { return };
                            let mut req = Vec::new();
                            let mut buf = [0u8; 1024];
                            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                                match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => req.extend_from_slice(&buf[..n]),
                                }
                            }
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = tls.write_all(resp.as_bytes()).await;
                            let _ = tls.shutdown().await;
                        });
                    }
                });
            });
            port
        }
    }

    fn probe(f: &Fixture, url: &str, caps: &str, limits: &str) -> String {
        let host = f
            .host(&entry(
                "http_probe",
                "policy",
                &format!("[plugin.limits]\ntimeout_ms = 3000\n{limits}\n[plugin.capabilities]\n{caps}\n[plugin.config]\nurl = \"{url}\""),
            ))
            .unwrap();
        let v = one(&host);
        assert_eq!(
            host.list()[0].errors,
            0,
            "contained: the plugin call itself succeeded"
        );
        match v.outcome().unwrap() {
            Vote::Deny(r) => r.clone(),
            v => panic!("{v:?}"),
        }
    }

    const LOCALHOST: &str = "allowed_hosts = [\"localhost\"]\nallow_private = [\"localhost=127.0.0.1\", \"localhost=::1\"]";

    #[test]
    fn https_with_the_plugins_ca_file_reaches_the_server_and_limits_apply() {
        let pki = Pki::new();
        let f = Fixture::new();
        f.plugin("http_probe", true);
        let port = pki.serve("hello over tls");
        let url = format!("https://localhost:{port}/ok");
        let ca = format!("ca_file = {:?}", pki.ca().display().to_string());
        let r = probe(&f, &url, &format!("{LOCALHOST}\n{ca}"), "");
        assert_eq!(r, "status=200 body=hello over tls");
        // the response size limit holds over TLS too
        let r = probe(
            &f,
            &url,
            &format!("{LOCALHOST}\n{ca}"),
            "max_response_bytes = 16",
        );
        assert_eq!(r, "error=too large");
    }

    #[test]
    fn https_without_the_ca_is_refused_with_a_precise_certificate_error() {
        let pki = Pki::new();
        let f = Fixture::new();
        f.plugin("http_probe", true);
        let port = pki.serve("must not be read");
        let r = probe(&f, &format!("https://localhost:{port}/"), LOCALHOST, "");
        assert!(
            r.starts_with("error=failed: tls handshake with localhost")
                && r.contains("UnknownIssuer")
                && r.contains("capabilities.ca_file"),
            "{r}"
        );
        assert!(!r.contains("must not be read"), "{r}");
    }

    #[test]
    fn https_to_a_name_the_certificate_does_not_cover_is_refused() {
        let pki = Pki::new();
        let f = Fixture::new();
        f.plugin("http_probe", true);
        let port = pki.serve("must not be read");
        // Trusted CA, but the certificate names `localhost`, not the IP the URL uses.
        let r = probe(
            &f,
            &format!("https://127.0.0.1:{port}/"),
            &format!(
                "allowed_hosts = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1=127.0.0.1\"]\nca_file = {:?}",
                pki.ca().display().to_string()
            ),
            "",
        );
        assert!(
            r.starts_with("error=failed: tls handshake with 127.0.0.1")
                && r.contains("does not name this host"),
            "{r}"
        );
    }

    #[test]
    fn a_tls_handshake_that_never_finishes_is_bounded_by_the_call_deadline() {
        let f = Fixture::new();
        f.plugin("http_probe", true);
        // accepts TCP but never speaks TLS
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let host = f
            .host(&entry(
                "http_probe",
                "policy",
                &format!("[plugin.limits]\ntimeout_ms = 200\n[plugin.capabilities]\n{LOCALHOST}\n[plugin.config]\nurl = \"https://localhost:{port}/\""),
            ))
            .unwrap();
        let t = Instant::now();
        let v = one(&host);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        match v.outcome() {
            Ok(Vote::Deny(r)) => assert_eq!(r, "error=timeout"),
            Err(e) => assert_eq!(e.kind, ErrorKind::Timeout.as_str()),
            other => panic!("{other:?}"),
        }
        drop(l);
    }

    #[test]
    fn an_unusable_ca_file_stops_the_load_naming_the_key() {
        let f = Fixture::new();
        f.plugin("http_probe", true);
        let not_pem = f.dir.path().join("not-a-ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let e = f
            .host(&entry(
                "http_probe",
                "policy",
                &format!(
                    "[plugin.capabilities]\n{LOCALHOST}\nca_file = {:?}",
                    not_pem.display().to_string()
                ),
            ))
            .err()
            .expect("load must fail")
            .to_string();
        assert!(
            e.contains("capabilities.ca_file") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
        let e = f
            .host(&entry(
                "http_probe",
                "policy",
                &format!("[plugin.capabilities]\n{LOCALHOST}\nca_file = \"missing.pem\""),
            ))
            .err()
            .expect("load must fail")
            .to_string();
        assert!(e.contains("ca_file") && e.contains("missing.pem"), "{e}");
    }
}

/// `tether_policy::run_fixtures_with` over a real host: a fixture file checks what
/// `policy check` would say, regex verdict then the plugins' votes.
mod fixtures {
    use super::*;
    use tether_policy::{Policy, PolicySpec, Verdict, run_fixtures, run_fixtures_with};

    fn policy() -> Policy {
        let spec = PolicySpec::from_toml_str(
            "[policy]\n[[policy.deny_commands]]\nid = \"no-reboot\"\npattern = \"^reboot\"\n",
        )
        .unwrap();
        Policy::compile(&spec).unwrap()
    }

    /// change-window with no maintenance window: writes need a `CHG-*` ticket, which only
    /// reaches the plugin through the request's `ticket` (host → WIT in one place).
    #[test]
    fn change_window_votes_are_checked_by_fixtures() {
        let f = Fixture::new();
        f.plugin("change_window", true);
        let host = f
            .host(&entry(
                "change-window",
                "policy",
                "[plugin.config]\nwindows = \"\"\nticket_pattern = \"CHG-*\"",
            ))
            .unwrap();
        let cases = r#"
[[case]]
name = "a restart outside the window needs a ticket"
expect = "deny"
expect_rules = ["plugin:change-window"]
request = { kind = "exec", command = "systemctl restart nginx", user = "alice", host = { name = "web1" } }

[[case]]
name = "with a change ticket the plugin abstains"
expect = "allow"
request = { kind = "exec", command = "systemctl restart nginx", user = "alice", ticket = "CHG-42" }

[[case]]
name = "reads are never its business"
expect = "allow"
request = { kind = "exec", command = "uptime", user = "alice" }

[[case]]
name = "the regex rules still decide first"
expect = "deny"
expect_rules = ["no-reboot"]
request = { kind = "exec", command = "reboot", user = "alice" }
"#;
        let report = run_fixtures_with(&policy(), cases, Some(&host)).unwrap();
        assert!(report.passed(), "{report}");
        assert_eq!(report.total, 4);
        // Without the plugin only the regex rules speak: the first case fails, and says why.
        let regex_only = run_fixtures(&policy(), cases).unwrap();
        assert_eq!(regex_only.mismatches.len(), 1, "{regex_only}");
        assert_eq!(regex_only.mismatches[0].got, Verdict::Allow);
    }

    #[test]
    fn fixtures_see_overrides_and_failing_plugins_like_policy_check() {
        let f = Fixture::new();
        f.plugin("allow_all", true);
        f.plugin("trap", true);
        let host = f
            .host(&entry("allow_all", "policy", "may_override = true"))
            .unwrap();
        let overridden = "[[case]]\nexpect = \"allow\"\nexpect_rules = [\"plugin:allow_all\"]\nrequest = { kind = \"exec\", command = \"reboot\" }\n";
        let report = run_fixtures_with(&policy(), overridden, Some(&host)).unwrap();
        assert!(report.passed(), "{report}");
        let checked = policy().check(&req(), Some(&host));
        assert_eq!(checked.decision.verdict, Verdict::Allow);
        assert_eq!(checked.plugin_votes.len(), 1);

        let host = f.host(&entry("trap", "policy", "")).unwrap();
        let uptime =
            "[[case]]\nexpect = \"allow\"\nrequest = { kind = \"exec\", command = \"uptime\" }\n";
        let report = run_fixtures_with(&policy(), uptime, Some(&host)).unwrap();
        let m = &report.mismatches[0];
        assert_eq!(m.got, Verdict::Deny, "fail_closed by default: {report}");
        assert_eq!(m.got_rules, ["plugin:trap"]);
        assert!(
            report.to_string().contains("plugin trap failed: trap: "),
            "{report}"
        );
    }
}

/// `tether:plugin@0.2.0`: 0.1.0 guests beside 0.2.0 ones, the host's parse as guests see it,
/// and the `tcp` import for sinks.
mod v0_2 {
    use super::*;
    use std::io::BufRead;
    use std::sync::mpsc;

    fn reason(v: &PluginVote) -> String {
        match v.outcome() {
            Ok(Vote::Deny(r)) => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_0_1_0_and_a_0_2_0_guest_load_side_by_side() {
        let f = Fixture::new();
        f.plugin("legacy_v0_1", true);
        f.plugin("parse_probe", true);
        let host = f
            .host(&(entry("legacy_v0_1", "policy", "") + &entry("parse_probe", "policy", "")))
            .unwrap();
        let votes = host.evaluate(&req().with_ticket("CHG-1"));
        assert_eq!(votes.len(), 2, "{votes:?}");
        assert_eq!(
            reason(&votes[0]),
            "legacy 0.1.0 guest: command=systemctl restart nginx ticket=CHG-1"
        );
        assert_eq!(
            reason(&votes[1]),
            "parsed: systemctl restart nginx | ticket=CHG-1 | unparsable="
        );
        assert!(host.list().iter().all(|p| p.errors == 0));
    }

    #[test]
    fn the_parse_probe_sees_the_hosts_parse() {
        let f = Fixture::new();
        f.plugin("parse_probe", true);
        let host = f.host(&entry("parse_probe", "policy", "")).unwrap();
        let ask = |r: Request| {
            let v = host.evaluate(&r);
            assert_eq!(v.len(), 1, "{v:?}");
            reason(&v[0])
        };
        // argv after quote removal, chaining, a redirection with its target as a path
        let r = ask(
            Request::exec("true; sys'tem'ctl \"restart\" nginx > /var/log/x.log")
                .with_ticket("CHG-9"),
        );
        assert!(
            r.starts_with("parsed: true ; systemctl restart nginx [>/var/log/x.log]"),
            "{r}"
        );
        assert!(r.contains("<paths /var/log/x.log>"), "{r}");
        assert!(r.ends_with("| ticket=CHG-9 | unparsable="), "{r}");
        // a wrapper: the wrapped command is listed again, with what runs it
        let r = ask(Request::exec("env systemctl stop x"));
        assert!(
            r.contains("env systemctl stop x ; systemctl stop x (via "),
            "{r}"
        );
        // an unsplittable command: no commands, and why
        let r = ask(Request::exec("echo 'unterminated"));
        assert!(r.starts_with("parsed:  | ticket= | unparsable="), "{r}");
        assert!(!r.ends_with("unparsable="), "{r}");
        // no command: nothing parsed
        let r = ask(Request::file_write("/etc/motd"));
        assert_eq!(r, "parsed:  | ticket= | unparsable=");
    }

    /// A wrapper declared in the policy file (`[[policy.wrappers]]`) is unwrapped for 0.2.0
    /// guests exactly as the regex rules saw it, when the policy asks the plugins: before, the
    /// plugins got the built-in table only and saw `with-lock …` as one opaque command.
    #[test]
    fn plugins_see_the_policys_own_wrappers() {
        let f = Fixture::new();
        f.plugin("parse_probe", true);
        let host = f.host(&entry("parse_probe", "policy", "")).unwrap();
        let policy = tether_policy::Policy::from_toml_str(
            "[policy]\nmode = \"enforce\"\n[[policy.wrappers]]\nname = \"with-lock\"\n\
             value_options = [\"-t\"]\noperands = 1\n",
        )
        .unwrap();
        let req = Request::exec("with-lock -t 5 /run/x.lock systemctl restart nginx");
        let checked = policy.check(&req, Some(&host));
        assert_eq!(checked.plugin_votes.len(), 1, "{checked:?}");
        let r = reason(&checked.plugin_votes[0]);
        assert!(
            r.contains("; systemctl restart nginx (via wrapper: with-lock)"),
            "the wrapped command must be listed with its wrapper: {r}"
        );
        // Without the policy's parser (built-ins only) the wrapper stays opaque.
        let r = reason(&host.evaluate(&req)[0]);
        assert!(!r.contains("with-lock)"), "{r}");
    }

    /// Delivers one alert (`hello`) to the tcp probe; `extra` holds its limits and
    /// capabilities, `config` extra lines of its config.
    fn tcp_probe_with(
        f: &Fixture,
        port: u16,
        extra: &str,
        config: &str,
    ) -> Result<(), PluginError> {
        let host = f
            .host(&entry(
                "tcp_probe",
                "alert_sink",
                &format!(
                    "{extra}\n[plugin.config]\nhost = \"127.0.0.1\"\nport = \"{port}\"\n{config}"
                ),
            ))
            .unwrap();
        let mut d = host.deliver_alert(&tether_model::Alert::new(
            "probe",
            tether_model::Severity::Info,
            "hello",
        ));
        assert_eq!(d.len(), 1);
        d.remove(0).outcome
    }

    fn tcp_probe(f: &Fixture, port: u16, extra: &str) -> Result<(), PluginError> {
        tcp_probe_with(f, port, extra, "")
    }

    const LOOPBACK: &str = "[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = [\"127.0.0.1=127.0.0.1\"]";

    #[test]
    fn tcp_to_an_allowed_listener_and_closed_when_the_call_returns() {
        let f = Fixture::new();
        f.plugin("tcp_probe", true);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            // One write: the probe reads one reply, and `write!` may split it into segments.
            r.get_mut()
                .write_all(format!("ok {line}").as_bytes())
                .unwrap();
            // the host closes the connection when the call returns: EOF
            r.get_mut()
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut rest = Vec::new();
            let eof = r.read_to_end(&mut rest).is_ok();
            tx.send((line, eof)).unwrap();
        });
        let e = tcp_probe(
            &f,
            port,
            &format!("[plugin.limits]\ntimeout_ms = 3000\n{LOOPBACK}"),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("reply: ok hello"), "{e}");
        let (line, eof) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(line, "hello\n");
        assert!(eof, "the connection was not closed after the call");
    }

    #[test]
    fn tcp_destinations_are_checked_like_http() {
        let f = Fixture::new();
        f.plugin("tcp_probe", true);
        // a real listener the plugin must not reach
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        // listed, but loopback without allow_private
        let e = tcp_probe(
            &f,
            port,
            "[plugin.capabilities]\nallowed_hosts = [\"127.0.0.1\"]",
        )
        .unwrap_err();
        assert!(
            e.message.contains("error: destination not allowed") && e.message.contains("loopback"),
            "{e}"
        );
        // not listed at all
        let e = tcp_probe(
            &f,
            port,
            "[plugin.capabilities]\nallowed_hosts = [\"siem.invalid\"]",
        )
        .unwrap_err();
        assert!(
            e.message.contains("error: destination not allowed")
                && e.message.contains("not in allowed_hosts"),
            "{e}"
        );
        assert!(l.accept().is_err(), "a refused destination was contacted");
    }

    #[test]
    fn tcp_bytes_and_time_are_limited() {
        let f = Fixture::new();
        f.plugin("tcp_probe", true);
        // accepts and never answers
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = tcp_probe_with(
            &f,
            port,
            &format!("[plugin.limits]\ntimeout_ms = 3000\nmax_request_bytes = 16\n{LOOPBACK}"),
            "send_bytes = \"100\"",
        )
        .unwrap_err();
        assert!(e.message.contains("error: over the plugin's size"), "{e}");

        // at most 4 connections at once: 3 held + 1 works (the listener's backlog accepts), 4 + 1 doesn't
        let limits = format!("[plugin.limits]\ntimeout_ms = 3000\n{LOOPBACK}");
        let e = tcp_probe_with(&f, port, &limits, "hold = \"4\"").unwrap_err();
        assert!(
            e.message
                .contains("error: over the plugin's size or connection limits"),
            "{e}"
        );
        let limits = format!("[plugin.limits]\ntimeout_ms = 300\n{LOOPBACK}");
        let e = tcp_probe_with(&f, port, &limits, "hold = \"3\"").unwrap_err();
        assert!(!e.message.contains("over the plugin's"), "{e}");
        let t = Instant::now();
        let e = tcp_probe(
            &f,
            port,
            &format!("[plugin.limits]\ntimeout_ms = 200\n{LOOPBACK}"),
        )
        .unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert!(
            e.message.contains("error: timed out") || e.kind == ErrorKind::Timeout,
            "{e}"
        );
        drop(l);
    }
}
