//! Policy decision through one WASM hook (allow_all) vs a trivial native Rust hook, reload
//! (= verify + instantiate) from the precompiled cache, and memory per loaded plugin.
//! Needs `plugins/build.sh` to have run (it is run here if the components are missing).
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group};
use tether_model::Role;
use tether_model::selector::HostFacts;
use tether_plugin_host::*;
use tether_policy::{Request, Vote};

fn artifacts() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = repo.join("plugins/target/wasm32-wasip2/release");
    if !dir.join("allow_all.wasm").is_file() || !dir.join("deny_all.wasm").is_file() {
        let ok = std::process::Command::new("sh")
            .arg(repo.join("plugins/build.sh"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "plugins/build.sh failed");
    }
    dir
}

struct Env {
    _dir: tempfile::TempDir,
    manifest: PathBuf,
    cache: PathBuf,
}

/// `n` signed copies of `plugin`, named p0..pN.
fn env(plugin: &str, n: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let info = signing::keygen(&key).unwrap();
    let wasm = dir.path().join(format!("{plugin}.wasm"));
    std::fs::copy(artifacts().join(format!("{plugin}.wasm")), &wasm).unwrap();
    signing::sign(&wasm, &key).unwrap();
    let mut m = format!("trusted_keys = [\"{}\"]\n", info.public_key);
    for i in 0..n {
        m += &format!("[[plugin]]\nname = \"p{i}\"\nkind = \"policy\"\npath = \"{plugin}.wasm\"\n");
    }
    let manifest = dir.path().join("plugins.toml");
    std::fs::write(&manifest, m).unwrap();
    let cache = dir.path().join("cache");
    Env {
        _dir: dir,
        manifest,
        cache,
    }
}

fn host(e: &Env) -> PluginHost {
    let opts = HostOptions {
        cache_dir: Some(e.cache.clone()),
        ..HostOptions::default()
    };
    PluginHost::load(&e.manifest, opts, &prometheus::Registry::new()).unwrap()
}

fn request() -> Request {
    Request::exec("systemctl restart nginx")
        .by("alice", Role::Operator)
        .on(HostFacts::named("web1")
            .with_group("web")
            .with_tag("env", "prod"))
        .with_ticket("CHG-1234")
}

/// The baseline: the same decision as a native Rust function behind a trait object.
trait NativeHook {
    fn evaluate(&self, req: &Request) -> Vote;
}
struct NativeAllow;
impl NativeHook for NativeAllow {
    fn evaluate(&self, req: &Request) -> Vote {
        if req.user.is_empty() {
            Vote::Deny("no user".into())
        } else {
            Vote::Allow
        }
    }
}

fn decision(c: &mut Criterion) {
    let req = request();
    let mut g = c.benchmark_group("policy_decision");
    let native: Box<dyn NativeHook> = Box::new(NativeAllow);
    g.bench_function("native_rust_hook", |b| {
        b.iter(|| black_box(native.evaluate(black_box(&req))))
    });
    let e = env("allow_all", 1);
    let h = host(&e);
    g.bench_function("wasm_hook_allow_all", |b| {
        b.iter(|| black_box(h.evaluate(black_box(&req))))
    });
    let e2 = env("deny_all", 1);
    let h2 = host(&e2);
    g.bench_function("wasm_hook_deny_all_with_reason", |b| {
        b.iter(|| black_box(h2.evaluate(black_box(&req))))
    });
    g.finish();
    let info = &h.list()[0];
    println!(
        "host-side stats allow_all: calls {} p50 {:?} us p99 {:?} us (last 1024 calls, incl. timing)",
        info.calls, info.p50_us, info.p99_us
    );
}

fn instantiate(c: &mut Criterion) {
    let e = env("allow_all", 1);
    let h = host(&e); // warms the cache
    let mut g = c.benchmark_group("load");
    g.sample_size(30);
    g.bench_function(
        "reload_1_plugin_from_cache (read+sha256+verify+deserialize+instantiate)",
        |b| b.iter(|| h.reload().unwrap()),
    );
    g.finish();
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn memory_per_plugin() {
    const N: usize = 32;
    let e = env("allow_all", N);
    drop(host(&e)); // compile + cache once, so the measurement is the loaded state only
    let one = env("allow_all", 1);
    let h1 = host(&one); // engine, pools, runtime: fixed cost
    h1.evaluate(&request());
    let before = rss_bytes();
    let h = host(&e);
    h.evaluate(&request());
    let after = rss_bytes();
    println!(
        "memory: {N} loaded allow_all plugins (each called once) add {:.1} MiB RSS = {:.0} KiB per plugin",
        (after.saturating_sub(before)) as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / 1024.0 / N as f64
    );
    drop(h);
    drop(h1);
}

criterion_group!(benches, decision, instantiate);

fn main() {
    benches();
    memory_per_plugin();
    Criterion::default().configure_from_args().final_summary();
}
