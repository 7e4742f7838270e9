//! Batched UDP I/O for the driver: one system call for many WireGuard datagrams.
//!
//! On Linux the socket asks for UDP generic receive offload (`UDP_GRO`): the kernel hands over
//! several datagrams of one flow as one "super-datagram" plus a `gso_size` control message, and
//! [`UdpIo::recv`] splits it back into the datagrams. Sends group consecutive datagrams to the
//! same destination whose sizes are equal (the last of a group may be shorter) into one
//! `sendmsg` with `UDP_SEGMENT` (generic segmentation offload): the kernel cuts them apart again
//! after one trip through the stack — between two tetherds on one host the receiver's GRO keeps
//! them together all the way. Datagrams that do not fit a group (mixed destinations, odd sizes,
//! or GSO off) go out with `sendmmsg`, many per call.
//!
//! Where the kernel or the socket refuses (no `UDP_SEGMENT`/`UDP_GRO` support, or a GSO send
//! failing with `EIO`/`EINVAL`/… because the route's device cannot segment), the socket falls back
//! for good to plain datagrams and the refused group is sent again without GSO: nothing is lost.
//! Relayed datagrams never come here (the driver hands them to the relay tasks).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmsg,
    sendmmsg, sendmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams in one GSO send (the kernel allows 64 on every kernel with `UDP_SEGMENT`).
const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (an IP packet's payload is at most 65,535 bytes less headers).
const MAX_GSO_BYTES: usize = 65_000;
/// Most datagrams in one `sendmmsg`.
const MAX_MMSG: usize = 64;
/// Receive buffer: the largest UDP payload, which also bounds a GRO super-datagram.
const RECV_BUF: usize = 65_536;

/// Room for one `UDP_GRO` control message (an `int`), aligned as `cmsghdr` requires.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// The driver's UDP socket state: whether GSO/GRO are on, and the receive buffers.
pub(crate) struct UdpIo {
    gso: bool,
    gro: bool,
    buf: Vec<u8>,
    cmsg: Box<CmsgBuf>,
    /// Test hook: the next GSO sends fail as if the kernel had returned `EIO`.
    #[cfg(test)]
    refuse_gso: bool,
}

impl std::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpIo")
            .field("gso", &self.gso)
            .field("gro", &self.gro)
            .finish_non_exhaustive()
    }
}

/// Whether `TETHER_TUNNEL_UDP_OFFLOAD=off` asks for plain datagrams (for comparisons and as an
/// escape hatch on kernels that misbehave).
fn offload_disabled() -> bool {
    std::env::var("TETHER_TUNNEL_UDP_OFFLOAD").is_ok_and(|v| v == "off")
}

impl UdpIo {
    /// Sets up `sock`: turns GRO on and checks that GSO is supported.
    pub(crate) fn new(sock: &UdpSocket) -> UdpIo {
        let off = offload_disabled();
        let gro = !off && setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok();
        // Reading the option succeeds exactly where the kernel knows UDP_SEGMENT.
        let gso = !off && nix::sys::socket::getsockopt(sock, sockopt::UdpGsoSegment).is_ok();
        tracing::debug!(gso, gro, "tunnel UDP offloads");
        UdpIo {
            gso,
            gro,
            buf: vec![0u8; RECV_BUF],
            cmsg: Box::new(CmsgBuf([0u8; 64])),
            #[cfg(test)]
            refuse_gso: false,
        }
    }

    /// Whether sends still use GSO.
    #[cfg(test)]
    pub(crate) fn gso(&self) -> bool {
        self.gso
    }

    /// Whether receives ask for GRO.
    #[cfg(test)]
    pub(crate) fn gro(&self) -> bool {
        self.gro
    }

    /// Test hook: make GSO sends fail as the kernel does when a device cannot segment.
    #[cfg(test)]
    pub(crate) fn refuse_gso(&mut self) {
        self.refuse_gso = true;
    }

    /// Receives what is queued without waiting, up to about `max` datagrams, calling `each` once
    /// per datagram (GRO super-datagrams split by their `gso_size`). Returns how many it
    /// delivered; `Err(WouldBlock)` when nothing was queued.
    pub(crate) fn recv(
        &mut self,
        sock: &UdpSocket,
        max: usize,
        mut each: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        let mut delivered = 0;
        while delivered < max {
            let got = sock.try_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut self.buf)];
                let msg = recvmsg::<SockaddrStorage>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut self.cmsg.0),
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                let mut seg = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::UdpGroSegments(n) = c {
                            seg = usize::try_from(n).ok().filter(|n| *n > 0);
                        }
                    }
                }
                let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                let from = msg.address.as_ref().and_then(to_socket_addr);
                Ok((msg.bytes, seg, from, truncated))
            });
            let (n, seg, from, truncated) = match got {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && delivered > 0 => break,
                Err(e) => return Err(e),
            };
            let Some(from) = from else { continue };
            if truncated {
                tracing::debug!(from = %from, "tunnel UDP datagram truncated; dropped");
                continue;
            }
            let data = &self.buf[..n];
            match seg {
                Some(seg) if seg < n => {
                    for d in data.chunks(seg) {
                        each(from, d);
                        delivered += 1;
                    }
                }
                _ => {
                    each(from, data);
                    delivered += 1;
                }
            }
        }
        Ok(delivered)
    }

    /// Sends `out` in order, waiting while the socket buffer is full. A failed send is logged
    /// and its datagrams dropped, as a lost datagram would be.
    pub(crate) async fn send(&mut self, sock: &UdpSocket, out: &[(SocketAddr, Vec<u8>)]) {
        let mut i = 0;
        while i < out.len() {
            if self.gso {
                let end = gso_run(out, i);
                if end - i > 1 {
                    match self.send_gso(sock, &out[i..end]).await {
                        Ok(()) => {}
                        Err(e) if refused(&e) => {
                            tracing::info!(error = %e, "UDP segmentation offload refused on this socket; sending plain datagrams from now on");
                            self.gso = false;
                            self.send_plain(sock, &out[i..end]).await;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, dst = %out[i].0, "tunnel UDP send failed")
                        }
                    }
                    i = end;
                    continue;
                }
            }
            // Plain datagrams up to the next place a GSO group starts.
            let mut end = i + 1;
            while end < out.len()
                && end - i < MAX_MMSG
                && !(self.gso && gso_run(out, end) > end + 1)
            {
                end += 1;
            }
            self.send_plain(sock, &out[i..end]).await;
            i = end;
        }
    }

    async fn send_gso(
        &mut self,
        sock: &UdpSocket,
        run: &[(SocketAddr, Vec<u8>)],
    ) -> io::Result<()> {
        #[cfg(test)]
        if self.refuse_gso {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        let dst = SockaddrStorage::from(run[0].0);
        let seg = u16::try_from(run[0].1.len()).map_err(|_| io::Error::from(Errno::EMSGSIZE))?;
        let iov: Vec<IoSlice<'_>> = run.iter().map(|(_, p)| IoSlice::new(p)).collect();
        let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
        sock.async_io(Interest::WRITABLE, || {
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_DONTWAIT,
                Some(&dst),
            )
            .map_err(io::Error::from)
        })
        .await
        .map(|_| ())
    }

    async fn send_plain(&mut self, sock: &UdpSocket, batch: &[(SocketAddr, Vec<u8>)]) {
        let mut rest = batch;
        while !rest.is_empty() {
            if rest.len() == 1 {
                if let Err(e) = sock.send_to(&rest[0].1, rest[0].0).await {
                    tracing::debug!(error = %e, dst = %rest[0].0, "tunnel UDP send failed");
                }
                return;
            }
            let r = sock
                .async_io(Interest::WRITABLE, || {
                    let addrs: Vec<Option<SockaddrStorage>> = rest
                        .iter()
                        .map(|(a, _)| Some(SockaddrStorage::from(*a)))
                        .collect();
                    let iovs: Vec<[IoSlice<'_>; 1]> =
                        rest.iter().map(|(_, p)| [IoSlice::new(p)]).collect();
                    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(rest.len(), None);
                    let sent = sendmmsg(
                        sock.as_raw_fd(),
                        &mut hdrs,
                        &iovs,
                        &addrs,
                        [],
                        MsgFlags::MSG_DONTWAIT,
                    )
                    .map_err(io::Error::from)?
                    .count();
                    Ok(sent)
                })
                .await;
            match r {
                Ok(0) => return,
                Ok(n) => rest = &rest[n.min(rest.len())..],
                Err(e) => {
                    // One bad destination must not cost the others: skip it and go on.
                    tracing::debug!(error = %e, dst = %rest[0].0, "tunnel UDP send failed");
                    rest = &rest[1..];
                }
            }
        }
    }
}

#[cfg(test)]
fn libc_eio() -> i32 {
    Errno::EIO as i32
}

/// Errors with which a GSO send says "not here": fall back to plain datagrams for good.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EIO | Errno::EINVAL | Errno::EMSGSIZE | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP)
    )
}

/// The end of the GSO group starting at `start`: consecutive datagrams to the same destination,
/// all as long as the first except possibly the last (shorter) one, within the kernel's limits.
fn gso_run(out: &[(SocketAddr, Vec<u8>)], start: usize) -> usize {
    let (dst, first) = (&out[start].0, &out[start].1);
    let seg = first.len();
    if seg == 0 {
        return start + 1;
    }
    let mut total = seg;
    let mut end = start + 1;
    while end < out.len() && end - start < MAX_GSO_SEGMENTS {
        let (d, p) = (&out[end].0, &out[end].1);
        if d != dst || p.is_empty() || p.len() > seg || total + p.len() > MAX_GSO_BYTES {
            break;
        }
        total += p.len();
        end += 1;
        if p.len() < seg {
            break;
        }
    }
    end
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

#[cfg(test)]
mod tests {
    //! Real sockets on 127.0.0.1 (port 0): what each path puts on the wire and what comes out.
    use super::*;
    use std::time::Duration;

    async fn bound() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0")
    }

    /// Receives until `want` datagrams arrived (or 5 s pass), through [`UdpIo::recv`].
    async fn collect(io: &mut UdpIo, sock: &UdpSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < want {
            let r = tokio::time::timeout_at(deadline, sock.readable()).await;
            assert!(r.is_ok(), "only {} of {want} datagrams arrived", got.len());
            match io.recv(sock, 1024, |from, d| got.push((from, d.to_vec()))) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    fn datagrams(n: usize, len: usize, last: usize, tag: u8) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let l = if i + 1 == n { last } else { len };
                let mut d = vec![tag; l];
                d[0] = u8::try_from(i % 256).unwrap_or(0);
                d
            })
            .collect()
    }

    #[tokio::test]
    async fn gso_send_arrives_as_separate_datagrams_at_a_plain_socket() {
        let (a, b) = (bound().await, bound().await);
        let mut tx = UdpIo::new(&a);
        assert!(tx.gso(), "this kernel supports UDP_SEGMENT (Linux ≥ 4.18)");
        let dst = b.local_addr().expect("addr");
        let sent = datagrams(20, 1452, 300, 7);
        let out: Vec<_> = sent.iter().map(|d| (dst, d.clone())).collect();
        assert_eq!(gso_run(&out, 0), 20, "one GSO group");
        tx.send(&a, &out).await;
        // A plain socket (no GRO) gets every datagram on its own, in order.
        let mut buf = vec![0u8; 65536];
        for (i, want) in sent.iter().enumerate() {
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
                .await
                .expect("datagram in time")
                .expect("recv");
            assert_eq!(from, a.local_addr().expect("addr"));
            assert_eq!(&buf[..n], &want[..], "datagram {i}");
        }
        assert!(tx.gso(), "GSO stays on when it works");
    }

    #[tokio::test]
    async fn gro_coalesced_receives_split_into_the_right_datagrams() {
        let (a, b) = (bound().await, bound().await);
        let mut tx = UdpIo::new(&a);
        let mut rx = UdpIo::new(&b);
        assert!(rx.gro(), "this kernel supports UDP_GRO (Linux ≥ 5.0)");
        let dst = b.local_addr().expect("addr");
        // Two GSO groups of different segment sizes, each ending in a short datagram.
        let mut sent = datagrams(30, 1200, 77, 1);
        sent.extend(datagrams(10, 600, 599, 2));
        let out: Vec<_> = sent.iter().map(|d| (dst, d.clone())).collect();
        tx.send(&a, &out).await;
        let got = collect(&mut rx, &b, sent.len()).await;
        let from = a.local_addr().expect("addr");
        assert!(got.iter().all(|(f, _)| *f == from));
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
        assert_eq!(got, sent, "same datagrams, same boundaries, same order");
    }

    #[tokio::test]
    async fn gro_receive_of_a_coalesced_run_takes_one_call() {
        let (a, b) = (bound().await, bound().await);
        let mut tx = UdpIo::new(&a);
        let mut rx = UdpIo::new(&b);
        let dst = b.local_addr().expect("addr");
        let sent = datagrams(40, 1452, 1452, 3);
        let out: Vec<_> = sent.iter().map(|d| (dst, d.clone())).collect();
        tx.send(&a, &out).await;
        tokio::time::timeout(Duration::from_secs(5), b.readable())
            .await
            .expect("readable in time")
            .expect("readable");
        // max = 1: one recvmsg; over loopback the GSO group arrives as one super-datagram.
        let mut got = Vec::new();
        let n = rx
            .recv(&b, 1, |_, d| got.push(d.to_vec()))
            .expect("one receive");
        assert_eq!(n, 40, "one system call delivered the whole group");
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn refused_gso_falls_back_to_plain_datagrams_and_loses_nothing() {
        let (a, b) = (bound().await, bound().await);
        let mut tx = UdpIo::new(&a);
        let mut rx = UdpIo::new(&b);
        tx.refuse_gso();
        let dst = b.local_addr().expect("addr");
        let sent = datagrams(25, 1452, 100, 4);
        let out: Vec<_> = sent.iter().map(|d| (dst, d.clone())).collect();
        tx.send(&a, &out).await;
        assert!(!tx.gso(), "GSO is off for this socket after the refusal");
        let got: Vec<Vec<u8>> = collect(&mut rx, &b, sent.len())
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            got, sent,
            "the refused group went out again as plain datagrams"
        );
        // Later sends go straight out plain.
        tx.send(&a, &out).await;
        let again: Vec<Vec<u8>> = collect(&mut rx, &b, sent.len())
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(again, sent);
    }

    #[tokio::test]
    async fn mixed_destinations_in_one_batch_each_get_theirs_in_order() {
        let a = bound().await;
        let (b, c) = (bound().await, bound().await);
        let mut tx = UdpIo::new(&a);
        let (mut rb, mut rc) = (UdpIo::new(&b), UdpIo::new(&c));
        let (db, dc) = (b.local_addr().expect("addr"), c.local_addr().expect("addr"));
        // Interleaved singles, then runs to each, with odd sizes in between.
        let mut out = Vec::new();
        for i in 0..10u8 {
            out.push((if i % 2 == 0 { db } else { dc }, vec![i; 1000]));
        }
        for d in datagrams(12, 1452, 1452, 5) {
            out.push((db, d));
        }
        for d in datagrams(9, 800, 13, 6) {
            out.push((dc, d));
        }
        out.push((db, vec![9; 1452]));
        out.push((db, vec![8; 1500])); // longer than the group before it: a new group
        let want_b: Vec<Vec<u8>> = out
            .iter()
            .filter(|(d, _)| *d == db)
            .map(|(_, p)| p.clone())
            .collect();
        let want_c: Vec<Vec<u8>> = out
            .iter()
            .filter(|(d, _)| *d == dc)
            .map(|(_, p)| p.clone())
            .collect();
        tx.send(&a, &out).await;
        let got_b: Vec<Vec<u8>> = collect(&mut rb, &b, want_b.len())
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let got_c: Vec<Vec<u8>> = collect(&mut rc, &c, want_c.len())
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(got_b, want_b);
        assert_eq!(got_c, want_c);

        // The same batch with GSO refused: sendmmsg carries the mixed destinations.
        tx.refuse_gso();
        tx.send(&a, &out).await;
        let got_b: Vec<Vec<u8>> = collect(&mut rb, &b, want_b.len())
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let got_c: Vec<Vec<u8>> = collect(&mut rc, &c, want_c.len())
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(got_b, want_b);
        assert_eq!(got_c, want_c);
    }

    #[test]
    fn groups_follow_the_gso_rules() {
        let d1: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let d2: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let v = |d, n| (d, vec![0u8; n]);
        // Equal sizes, then a shorter one closes the group.
        let out = vec![v(d1, 100), v(d1, 100), v(d1, 50), v(d1, 50)];
        assert_eq!(gso_run(&out, 0), 3);
        // A longer one starts a new group.
        let out = vec![v(d1, 100), v(d1, 101)];
        assert_eq!(gso_run(&out, 0), 1);
        // Another destination ends it.
        let out = vec![v(d1, 100), v(d1, 100), v(d2, 100)];
        assert_eq!(gso_run(&out, 0), 2);
        // The byte limit.
        let out: Vec<_> = (0..60).map(|_| v(d1, 1452)).collect();
        assert_eq!(gso_run(&out, 0), MAX_GSO_BYTES / 1452);
        // The segment limit.
        let out: Vec<_> = (0..100).map(|_| v(d1, 10)).collect();
        assert_eq!(gso_run(&out, 0), MAX_GSO_SEGMENTS);
    }
}
