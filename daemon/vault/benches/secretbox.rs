//! What sealed memory costs: `SecretBox::expose` (two mprotect calls) against reading a plain
//! `Vec`, allocation against `Vec`, and a file-backend `get` (read + AES-256-GCM decrypt).
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tether_vault::{BackendChoice, SecretBox, Vault, VaultConfig};

fn benches(c: &mut Criterion) {
    let secret = SecretBox::random(32).unwrap();
    let plain = vec![7u8; 32];
    let mut g = c.benchmark_group("read_32_bytes");
    g.bench_function("plain_vec (baseline)", |b| {
        b.iter(|| black_box(&plain).iter().fold(0u8, |a, x| a ^ x))
    });
    g.bench_function("secretbox_expose", |b| {
        b.iter(|| secret.expose(|s| s.iter().fold(0u8, |a, x| a ^ x)))
    });
    g.finish();

    let mut g = c.benchmark_group("alloc_32_bytes");
    g.bench_function("vec_zeroed (baseline)", |b| {
        b.iter(|| black_box(vec![0u8; 32]))
    });
    g.bench_function("secretbox_zeroed", |b| {
        b.iter(|| black_box(SecretBox::zeroed(32).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("compare_32_bytes");
    let other = secret.try_clone().unwrap();
    g.bench_function("secretbox_ct_eq", |b| b.iter(|| black_box(secret == other)));
    g.finish();

    let state = tempfile::tempdir().unwrap();
    let v = Vault::open(
        &VaultConfig {
            backend: BackendChoice::File,
            ..VaultConfig::default()
        },
        state.path(),
    )
    .unwrap();
    v.get_or_generate("k", 32).unwrap();
    let mut g = c.benchmark_group("vault_get");
    g.bench_function("file_backend_get_32", |b| {
        b.iter(|| black_box(v.get("k").unwrap()))
    });
    g.finish();
}

criterion_group!(vault, benches);
criterion_main!(vault);
