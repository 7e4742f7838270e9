//! The `tcp` import of `tether:plugin@0.2.0` for sinks: connections the host opens to checked
//! destinations ([`crate::caps::Grants::tcp_destination`]), with per-call byte limits, the
//! call's deadline on every operation, at most [`MAX_CONNECTIONS`] open at once, and every
//! connection closed when the call returns ([`StoreState::tcp_close_all`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::caps::TcpError;
use crate::store::StoreState;

/// Most connections one plugin instance has open at once.
pub(crate) const MAX_CONNECTIONS: usize = 4;

/// The open connections of one instance and the bytes moved in the current call.
#[derive(Default)]
pub(crate) struct TcpConns {
    conns: Vec<Option<TcpStream>>,
    sent: usize,
    received: usize,
}

fn remaining(deadline: Instant) -> Result<Duration, TcpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(TcpError::Timeout)
    } else {
        Ok(left)
    }
}

fn io_error(e: std::io::Error) -> TcpError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => TcpError::Timeout,
        _ => TcpError::Failed(e.to_string()),
    }
}

impl StoreState {
    pub(crate) fn tcp_connect(
        &mut self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<u32, TcpError> {
        let open = self.tcp.conns.iter().filter(|c| c.is_some()).count();
        if open >= MAX_CONNECTIONS {
            return Err(TcpError::TooLarge);
        }
        let addrs = self.grants.tcp_destination(host, port, deadline)?;
        let mut last = TcpError::Failed(format!("{host} resolves to no address"));
        for a in addrs {
            let left = remaining(deadline)?;
            match TcpStream::connect_timeout(&a, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let slot = self.tcp.conns.iter().position(Option::is_none);
                    let id = match slot {
                        Some(i) => {
                            self.tcp.conns[i] = Some(s);
                            i
                        }
                        None => {
                            self.tcp.conns.push(Some(s));
                            self.tcp.conns.len() - 1
                        }
                    };
                    return Ok(id as u32);
                }
                Err(e) => last = TcpError::Failed(format!("connect {a}: {e}")),
            }
        }
        Err(last)
    }

    fn conn(&mut self, id: u32) -> Result<&mut TcpStream, TcpError> {
        self.tcp
            .conns
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(TcpError::Closed)
    }

    pub(crate) fn tcp_send(
        &mut self,
        id: u32,
        data: &[u8],
        deadline: Instant,
    ) -> Result<(), TcpError> {
        let max = self.grants.limits().max_request_bytes;
        if self.tcp.sent.saturating_add(data.len()) > max {
            return Err(TcpError::TooLarge);
        }
        self.tcp.sent += data.len();
        let left = remaining(deadline)?;
        let s = self.conn(id)?;
        s.set_write_timeout(Some(left)).map_err(io_error)?;
        s.write_all(data).map_err(io_error)
    }

    pub(crate) fn tcp_receive(
        &mut self,
        id: u32,
        max_bytes: u32,
        timeout_ms: u32,
        deadline: Instant,
    ) -> Result<Vec<u8>, TcpError> {
        let limit = self.grants.limits().max_response_bytes;
        let room = limit.saturating_sub(self.tcp.received);
        if room == 0 {
            return Err(TcpError::TooLarge);
        }
        let want = (max_bytes as usize).clamp(1, room.min(64 * 1024));
        let left = remaining(deadline)?.min(Duration::from_millis(u64::from(timeout_ms).max(1)));
        let s = self.conn(id)?;
        s.set_read_timeout(Some(left)).map_err(io_error)?;
        let mut buf = vec![0u8; want];
        let n = s.read(&mut buf).map_err(io_error)?;
        if n == 0 {
            return Err(TcpError::Closed);
        }
        buf.truncate(n);
        self.tcp.received += n;
        Ok(buf)
    }

    pub(crate) fn tcp_close(&mut self, id: u32) {
        if let Some(slot) = self.tcp.conns.get_mut(id as usize) {
            *slot = None;
        }
    }

    /// Closes every connection and resets the byte counters (after each call).
    pub(crate) fn tcp_close_all(&mut self) {
        self.tcp = TcpConns::default();
    }
}
