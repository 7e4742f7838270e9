use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Who a `[control.roles]` entry grants a role to, matched against the caller's SO_PEERCRED.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// `uid:N`: exactly this user id.
    Uid(u32),
    /// `user:NAME`: the user with this login name (resolved when a caller connects).
    User(String),
    /// `gid:N`: any caller whose primary or supplementary groups include this group id.
    Gid(u32),
    /// `group:NAME`: any caller who is a member of this group (primary or supplementary).
    Group(String),
}

/// A `[control.roles]` entry that is not `uid:N`, `user:NAME`, `gid:N` or `group:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid principal {input:?}: {reason}; write uid:N, user:NAME, gid:N or group:NAME")]
pub struct ParsePrincipalError {
    /// What was written.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Principal {
    type Err = ParsePrincipalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePrincipalError {
            input: s.to_owned(),
            reason,
        };
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| err("missing kind prefix"))?;
        if value.is_empty() {
            return Err(err("empty value"));
        }
        let name_ok = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
        match kind {
            "uid" => value
                .parse()
                .map(Principal::Uid)
                .map_err(|_| err("uid is not a number")),
            "gid" => value
                .parse()
                .map(Principal::Gid)
                .map_err(|_| err("gid is not a number")),
            "user" if name_ok => Ok(Principal::User(value.to_owned())),
            "group" if name_ok => Ok(Principal::Group(value.to_owned())),
            "user" | "group" => Err(err("names may contain only letters, digits, _ - . $")),
            _ => Err(err("unknown kind")),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Uid(n) => write!(f, "uid:{n}"),
            Principal::User(n) => write!(f, "user:{n}"),
            Principal::Gid(n) => write!(f, "gid:{n}"),
            Principal::Group(n) => write!(f, "group:{n}"),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!("uid:0".parse(), Ok(Principal::Uid(0)));
        assert_eq!("gid:10".parse(), Ok(Principal::Gid(10)));
        assert_eq!("user:alice".parse(), Ok(Principal::User("alice".into())));
        assert_eq!(
            "group:tether-admins".parse(),
            Ok(Principal::Group("tether-admins".into()))
        );
        for bad in [
            "",
            "uid",
            "uid:",
            "uid:x",
            "alice",
            "host:a",
            "user:a b",
            "group:../x",
        ] {
            assert!(
                bad.parse::<Principal>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(p in prop_oneof![
            any::<u32>().prop_map(Principal::Uid),
            any::<u32>().prop_map(Principal::Gid),
            "[a-z_][a-z0-9_-]{0,30}".prop_map(Principal::User),
            "[a-z_][a-z0-9_-]{0,30}".prop_map(Principal::Group),
        ]) {
            prop_assert_eq!(p.to_string().parse::<Principal>(), Ok(p));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Principal>();
        }
    }
}
