//! What both machines do with their connections: the [`Io`] actions, and queueing a
//! connection's pending bytes and its hang-up in the machine's action order.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use crate::ConnId;

/// A connection action, the same for the hub and a target ([`crate::HubAction::Io`],
/// [`crate::TargetAction::Io`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Open a tunnel stream to `ip` (agent port); answer with the machine's `connected` or
    /// `failed`.
    Connect {
        /// The new connection.
        conn: ConnId,
        /// The peer's overlay address.
        ip: Ipv4Addr,
    },
    /// Write these bytes to the connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Flush, then hang up the connection; the machine has forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
    },
}

/// A machine's state of one connection, which may have bytes to write.
pub(crate) trait Outgoing {
    /// The bytes queued for the peer.
    fn take_output(&mut self) -> Vec<u8>;
}

/// Queues what `conn` has to write as [`Io::Send`].
pub(crate) fn flush<C: Outgoing, A: From<Io>>(
    conns: &mut BTreeMap<ConnId, C>,
    conn: ConnId,
    actions: &mut VecDeque<A>,
) {
    let Some(c) = conns.get_mut(&conn) else {
        return;
    };
    let bytes = c.take_output();
    if !bytes.is_empty() {
        actions.push_back(Io::Send { conn, bytes }.into());
    }
}

/// Flushes `conn`, forgets it and queues [`Io::Close`] (once).
pub(crate) fn close<C: Outgoing, A: From<Io>>(
    conns: &mut BTreeMap<ConnId, C>,
    conn: ConnId,
    actions: &mut VecDeque<A>,
) {
    flush(conns, conn, actions);
    if conns.remove(&conn).is_some() {
        actions.push_back(Io::Close { conn }.into());
    }
}
