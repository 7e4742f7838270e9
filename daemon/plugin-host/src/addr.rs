//! Which addresses a plugin's `http.send` may reach: one table derived from the IANA IPv4 and
//! IPv6 Special-Purpose Address Registries (RFC 6890 and its updates, as of 2025), plus the
//! IPv6 forms that carry an IPv4 address (mapped, SIIT-translated, NAT64, 6to4), which are
//! judged by the address they carry.
//!
//! IPv6 is an allow-list: only global unicast (`2000::/3`) outside the special ranges is
//! reachable, so a range IANA assigns later from reserved space is refused until it is
//! reviewed. Every special range is refused, including the few the registry marks "globally
//! reachable" (anycast services such as AS112, AMT, PCP/TURN anycast): a webhook has no reason
//! to call them. No maintained crate with this classification builds on Rust 1.95
//! (`std`'s `is_global` is unstable; `ip_network` 0.4 knows no embedded forms), hence the table;
//! `tests` checks the first and last address of every range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How an IPv6 range relates to IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embeds {
    /// Refused outright.
    No,
    /// Carries an IPv4 address in its low 32 bits: judged by that address.
    Low32,
    /// 6to4: carries an IPv4 address in bits 16..48: judged by that address.
    SixToFour,
}

/// IANA IPv4 Special-Purpose Address Registry (+ multicast, reserved, broadcast).
const V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (RFC 791)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (RFC 1918)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "carrier-grade NAT shared space (RFC 6598)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (RFC 1122)"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local / cloud metadata (RFC 3927)",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (RFC 1918)"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments (RFC 6890)",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation TEST-NET-1 (RFC 5737)",
    ),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112 (RFC 7535)"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT (RFC 7450)"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast (RFC 7526)",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private (RFC 1918)"),
    (
        Ipv4Addr::new(192, 175, 48, 0),
        24,
        "AS112 direct delegation (RFC 7534)",
    ),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (RFC 2544)"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation TEST-NET-2 (RFC 5737)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation TEST-NET-3 (RFC 5737)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (RFC 5771)"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved / broadcast (RFC 1112, RFC 919)",
    ),
];

/// IANA IPv6 Special-Purpose Address Registry, most specific first where ranges nest.
const V6: &[(Ipv6Addr, u8, &str, Embeds)] = &[
    (
        Ipv6Addr::UNSPECIFIED,
        128,
        "unspecified (RFC 4291)",
        Embeds::No,
    ),
    (Ipv6Addr::LOCALHOST, 128, "loopback (RFC 4291)", Embeds::No),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped (RFC 4291)",
        Embeds::Low32,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        "IPv4-translated (RFC 2765)",
        Embeds::Low32,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-compatible, deprecated (RFC 4291)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "NAT64 well-known prefix (RFC 6052)",
        Embeds::Low32,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "NAT64 local-use prefix (RFC 8215)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only (RFC 6666)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        "dummy prefix (RFC 9780)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        "Teredo (RFC 4380)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments (RFC 2928)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation (RFC 3849)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "6to4 (RFC 3056)",
        Embeds::SixToFour,
    ),
    (
        Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0),
        48,
        "AS112 direct delegation (RFC 7534)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation (RFC 9637)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "SRv6 SIDs (RFC 9602)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local (RFC 4193; incl. fd00:ec2::254 metadata)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local (RFC 4291)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local, deprecated (RFC 3879)",
        Embeds::No,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (RFC 4291)",
        Embeds::No,
    ),
];

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// Why `ip` may not be contacted without an explicit `allow_private` entry (`None`: a global
/// unicast address outside every special-purpose range).
pub(crate) fn forbidden(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4).map(str::to_string),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4.iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<String> {
    let bits = u128::from(ip);
    match V6.iter().find(|(net, len, _, _)| in_v6(ip, *net, *len)) {
        Some((_, _, why, Embeds::No)) => Some((*why).to_string()),
        Some((_, _, why, embeds)) => {
            let v4 = Ipv4Addr::from(match embeds {
                Embeds::SixToFour => (bits >> 80) as u32,
                _ => bits as u32,
            });
            forbidden_v4(v4).map(|inner| format!("{why} of {v4}: {inner}"))
        }
        None if !in_v6(ip, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) => {
            Some("reserved, not global unicast (outside 2000::/3)".to_string())
        }
        None => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn last_v4(net: Ipv4Addr, len: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(net) | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0))
    }

    fn last_v6(net: Ipv6Addr, len: u8) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(net) | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0))
    }

    /// The first and last address of every IPv4 range, and the neighbours just outside it
    /// (unless another range starts there).
    #[test]
    fn every_v4_range_is_refused_at_both_ends() {
        for (net, len, why) in V4 {
            let last = last_v4(*net, *len);
            assert_eq!(forbidden_v4(*net), Some(*why), "{net}/{len}");
            assert_eq!(forbidden_v4(last), Some(*why), "{last} in {net}/{len}");
            // the same range seen through every IPv6 form that carries IPv4
            for v6 in [
                net.to_ipv6_mapped(),
                Ipv6Addr::from((0xffffu128 << 48) | u128::from(u32::from(*net))),
                Ipv6Addr::from((0x64_ff9bu128 << 96) | u128::from(u32::from(last))),
                Ipv6Addr::from((0x2002u128 << 112) | (u128::from(u32::from(*net)) << 80)),
            ] {
                let r = forbidden_v6(v6).unwrap_or_default();
                assert!(r.ends_with(why), "{v6} carries {net}: {r:?}");
            }
        }
    }

    #[test]
    fn every_v6_range_is_refused_at_both_ends() {
        for (net, len, why, embeds) in V6 {
            if *embeds != Embeds::No {
                continue; // judged by the carried address, checked above
            }
            let last = last_v6(*net, *len);
            for ip in [*net, last] {
                let r = forbidden_v6(ip).unwrap();
                // a nested range may answer with its more specific name
                assert!(
                    r == *why || V6.iter().any(|(n, l, w, _)| *w == r && in_v6(ip, *n, *l)),
                    "{ip} in {net}/{len}: {r:?}"
                );
            }
        }
    }

    /// A corpus of concrete addresses, forbidden and allowed.
    #[test]
    fn corpus() {
        let forbidden_ones = [
            "0.0.0.0",
            "0.1.2.3",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "233.252.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::1.2.3.4",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2620:4f:8000::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff05::1:3",
            "4000::1",
            "100:0:0:2::1",
            "8000::1",
        ];
        for a in forbidden_ones {
            assert!(
                forbidden(a.parse().unwrap()).is_some(),
                "{a} must be refused"
            );
        }
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.3.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:4860:4860::8888",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for a in allowed {
            assert_eq!(forbidden(a.parse().unwrap()), None, "{a} must be reachable");
        }
        // the reason names the carried address
        let r = forbidden("2002:c0a8:101::1".parse().unwrap()).unwrap();
        assert!(
            r.contains("6to4") && r.contains("192.168.1.1") && r.contains("private"),
            "{r}"
        );
    }
}
