//! Protocol versions and their negotiation.
//!
//! Fleets upgrade one machine at a time, so each side announces the range of versions it speaks
//! and both use the highest common one. A release speaks its own version and the previous one.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

/// One agent wire protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u16);

impl Version {
    /// The first release's wire format: one bare JSON request line, one `{"ok":..}` reply line,
    /// no version announcement.
    pub const V1: Version = Version(1);
    /// Adds the version handshake and the extensible envelope `{"v","seq","msg":{"type",..}}`.
    pub const V2: Version = Version(2);
    /// The version this release prefers.
    pub const CURRENT: Version = Version::V2;
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// An inclusive range of versions one side speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VersionRange {
    /// The oldest version spoken.
    pub min: Version,
    /// The newest version spoken.
    pub max: Version,
}

impl VersionRange {
    /// What this release speaks: the current version and the previous one.
    pub const SUPPORTED: VersionRange = VersionRange {
        min: Version::V1,
        max: Version::CURRENT,
    };

    /// A range; `None` when `min > max`.
    pub fn new(min: Version, max: Version) -> Option<VersionRange> {
        (min <= max).then_some(VersionRange { min, max })
    }

    /// Exactly one version.
    pub fn only(v: Version) -> VersionRange {
        VersionRange { min: v, max: v }
    }

    /// Whether `v` is in the range.
    pub fn contains(&self, v: Version) -> bool {
        self.min <= v && v <= self.max
    }

    /// The highest version both ranges contain, or [`AgentError::UnsupportedVersion`] naming
    /// both ranges.
    pub fn negotiate(&self, theirs: &VersionRange) -> Result<Version> {
        let hi = self.max.min(theirs.max);
        let lo = self.min.max(theirs.min);
        if lo <= hi {
            Ok(hi)
        } else {
            Err(AgentError::UnsupportedVersion {
                ours: *self,
                theirs: *theirs,
            })
        }
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "protocol {}", self.min)
        } else {
            write!(f, "protocols {} to {}", self.min, self.max)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(a: u16, b: u16) -> VersionRange {
        VersionRange::new(Version(a), Version(b)).unwrap()
    }

    #[test]
    fn highest_common_version_wins() {
        assert_eq!(r(1, 2).negotiate(&r(1, 2)).unwrap(), Version(2));
        assert_eq!(r(1, 2).negotiate(&r(2, 3)).unwrap(), Version(2));
        assert_eq!(r(2, 3).negotiate(&r(1, 2)).unwrap(), Version(2));
        assert_eq!(r(1, 2).negotiate(&r(1, 1)).unwrap(), Version(1));
    }

    #[test]
    fn disjoint_ranges_name_both_sides() {
        let e = r(2, 3).negotiate(&r(1, 1)).unwrap_err();
        assert_eq!(
            e,
            AgentError::UnsupportedVersion {
                ours: r(2, 3),
                theirs: r(1, 1)
            }
        );
        let text = e.to_string();
        assert!(text.contains("protocols v2 to v3"), "{text}");
        assert!(text.contains("protocol v1"), "{text}");
        assert!(text.contains("peer's (older)"), "{text}");
        let e = r(1, 2).negotiate(&r(3, 4)).unwrap_err();
        assert!(e.to_string().contains("this machine's (older)"), "{e}");
        assert!(VersionRange::new(Version(3), Version(2)).is_none());
    }
}
