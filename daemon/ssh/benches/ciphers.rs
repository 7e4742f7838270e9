//! The SSH ciphers' cost per byte (bench binary, `cargo bench -p tether-ssh --bench ciphers`):
//! seal + open of full-size SSH packets (32 KiB) with the two AEADs `algorithms::CIPHERS` allows,
//! through the same `ring` primitives russh uses for them (`chacha20_poly1305_openssh` and
//! `AES_256_GCM`), in one run, with the ratio. Decides the order of `algorithms::CIPHERS`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use nix::sys::resource::{UsageWho, getrusage};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, chacha20_poly1305_openssh};

const PACKET: usize = 32 * 1024;
const TOTAL: usize = 1 << 30;

/// This thread's CPU time (user + system) in seconds: the machine is shared, wall time is not
/// what the cipher costs.
fn cpu_now() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn chacha() -> f64 {
    let key = [7u8; chacha20_poly1305_openssh::KEY_LEN];
    let seal = chacha20_poly1305_openssh::SealingKey::new(&key);
    let open = chacha20_poly1305_openssh::OpeningKey::new(&key);
    let mut buf = vec![0u8; PACKET];
    let mut tag = [0u8; chacha20_poly1305_openssh::TAG_LEN];
    let start = cpu_now();
    for seq in 0..(TOTAL / PACKET) as u32 {
        buf[..4].copy_from_slice(&((PACKET - 4) as u32).to_be_bytes());
        seal.seal_in_place(seq, &mut buf, &mut tag);
        let plain = open.open_in_place(seq, &mut buf, &tag).unwrap();
        black_box(plain);
    }
    cpu_now() - start
}

fn aes_gcm() -> f64 {
    let key = [7u8; 32];
    let k = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, &key).unwrap());
    let mut buf = vec![0u8; PACKET];
    let start = cpu_now();
    for seq in 0..(TOTAL / PACKET) as u64 {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        // The packet length is the additional data, as in RFC 5647.
        let aad = ((PACKET - 4) as u32).to_be_bytes();
        let tag = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(aad),
                &mut buf[4..],
            )
            .unwrap();
        let plain = k
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(aad),
                tag,
                &mut buf[4..],
                0..,
            )
            .unwrap();
        black_box(plain);
    }
    cpu_now() - start
}

fn main() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    let gb = TOTAL as f64 / 1e9;
    // Warm up, then alternate so both see the same machine.
    chacha();
    aes_gcm();
    let mut c = Vec::new();
    let mut a = Vec::new();
    for _ in 0..3 {
        c.push(chacha());
        a.push(aes_gcm());
    }
    c.sort_by(f64::total_cmp);
    a.sort_by(f64::total_cmp);
    let (c, a) = (c[1], a[1]);
    println!(
        "chacha20-poly1305@openssh.com  seal+open {:.2} CPU-s/GB  {:.0} MB per CPU-s",
        c / gb,
        gb * 1e3 / c
    );
    println!(
        "aes256-gcm@openssh.com         seal+open {:.2} CPU-s/GB  {:.0} MB per CPU-s",
        a / gb,
        gb * 1e3 / a
    );
    println!("aes256-gcm / chacha20-poly1305 CPU time: {:.2}x", a / c);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at end: {}", load.trim());
}
