//! Caps on concurrent control connections, per uid and in total, so idle or slow callers can
//! never exhaust the daemon's file descriptors (which every listener needs to accept).
//!
//! A connection over a cap is closed at once, before anything is read from it, and counted in
//! `tether_control_connections_refused_total{limit="per_uid"|"total"}`. The daemon's own uid
//! (and so the admin running `tether` as it) is not subject to the total cap, only to the
//! per-uid one, so a flood from other uids cannot lock its operator out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ControlMetrics;

/// Concurrent control connections one uid may hold.
pub const MAX_CONNECTIONS_PER_UID: usize = 64;

/// Concurrent control connections in total (the daemon's own uid is not counted against it).
pub const MAX_CONNECTIONS_TOTAL: usize = 1024;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// The live connection counts.
#[derive(Debug)]
pub struct ConnLimits {
    counts: Arc<Mutex<Counts>>,
    exempt_uid: u32,
    per_uid: usize,
    total: usize,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    uid: u32,
    counted_in_total: bool,
}

impl ConnLimits {
    /// Limits with the default caps; `exempt_uid` (the daemon's uid) skips the total cap.
    pub fn new(exempt_uid: u32) -> ConnLimits {
        Self::with_caps(exempt_uid, MAX_CONNECTIONS_PER_UID, MAX_CONNECTIONS_TOTAL)
    }

    /// Limits with explicit caps.
    pub fn with_caps(exempt_uid: u32, per_uid: usize, total: usize) -> ConnLimits {
        ConnLimits {
            counts: Arc::new(Mutex::new(Counts::default())),
            exempt_uid,
            per_uid,
            total,
        }
    }

    /// Takes a place for a connection from `uid`, or `None` (counted) when a cap is reached.
    pub fn admit(&self, uid: u32, metrics: &ControlMetrics) -> Option<Slot> {
        let mut c = match self.counts.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let counted_in_total = uid != self.exempt_uid;
        let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
        let refused = if mine >= self.per_uid {
            Some("per_uid")
        } else if counted_in_total && c.total >= self.total {
            Some("total")
        } else {
            None
        };
        if let Some(limit) = refused {
            metrics
                .connections_refused
                .with_label_values(&[limit])
                .inc();
            return None;
        }
        *c.per_uid.entry(uid).or_insert(0) += 1;
        if counted_in_total {
            c.total += 1;
        }
        metrics.connections_admitted.inc();
        Some(Slot {
            counts: Arc::clone(&self.counts),
            uid,
            counted_in_total,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = match self.counts.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if self.counted_in_total {
            c.total = c.total.saturating_sub(1);
        }
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_uid_and_in_total_and_places_come_back() {
        let m = ControlMetrics::register(&prometheus::Registry::new()).expect("metrics");
        let l = ConnLimits::with_caps(0, 2, 3);
        let a1 = l.admit(1, &m).expect("1st");
        let _a2 = l.admit(1, &m).expect("2nd");
        assert!(l.admit(1, &m).is_none(), "per-uid cap");
        let _b = l.admit(2, &m).expect("other uid");
        assert!(l.admit(3, &m).is_none(), "total cap");
        // The daemon's uid is not held back by the total.
        let _r = l.admit(0, &m).expect("exempt uid");
        drop(a1);
        assert!(l.admit(3, &m).is_some(), "a freed place is reused");
        assert_eq!(
            m.connections_refused.with_label_values(&["per_uid"]).get(),
            1
        );
        assert_eq!(m.connections_refused.with_label_values(&["total"]).get(), 1);
    }
}
