//! Host selectors: which machines a command, a policy scope or a query applies to.
//!
//! Grammar (whitespace around terms is ignored):
//!
//! ```text
//! selector := term ( "," term )*
//! term     := [ "!" ] atom
//! atom     := "all"
//!           | "host:" NAME          exact host name (ASCII case-insensitive, like DNS)
//!           | NAME                  a bare name is a host name, so `host:a,b` selects a and b
//!           | "group:" NAME         member of the group (ASCII case-insensitive)
//!           | "tag:" KEY            has the tag, whatever its value
//!           | "tag:" KEY "=" VALUE  has the tag with exactly this value (case-sensitive)
//!           | "~" REGEX             host name matches REGEX
//! ```
//!
//! Semantics: a host is selected when it matches **at least one positive term** (or there are no
//! positive terms at all, which means `all`) **and no negated term**. So `group:web,!host:web3` is
//! "the web group except web3", and `!tag:env=prod` is "everything that is not prod".
//!
//! `~REGEX` is **anchored** (it must match the whole host name: it is compiled as `^(?:REGEX)$`)
//! and ASCII/Unicode **case-insensitive**, like host names themselves. Commas split terms only
//! outside `(...)`, `{...}` and `[...]` and when not escaped, so `~web[0-9]{1,3}` works; write
//! `\,` for a literal comma. Regexes are compiled with small size limits, so a pathological
//! pattern is a parse error rather than a slow match.
//!
//! Limits: a selector is at most [`MAX_SELECTOR_LEN`] bytes and [`MAX_TERMS`] terms.
//! [`Selector`]'s `Display` output parses back to an equal selector.
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 1024;
/// Most terms accepted in one selector.
pub const MAX_TERMS: usize = 64;
/// Longest host, group or tag name accepted, in bytes (the DNS name limit).
pub const MAX_NAME_LEN: usize = 253;
/// Compiled-size limit of one `~regex` term, in bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 16;
/// Lazy-DFA cache limit of one `~regex` term, in bytes.
const REGEX_DFA_LIMIT: usize = 1 << 18;
/// Nesting limit of one `~regex` term.
const REGEX_NEST_LIMIT: u32 = 32;

/// What a selector is matched against: the inventory facts of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// The host's inventory name, e.g. `web1`.
    pub name: String,
    /// Groups the host belongs to, e.g. `["web", "eu"]`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Labels, e.g. `env = "prod"`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl HostFacts {
    /// Facts for a host with a name and no groups or tags.
    pub fn named(name: impl Into<String>) -> Self {
        HostFacts {
            name: name.into(),
            ..HostFacts::default()
        }
    }

    /// Adds a group (builder style).
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Adds or replaces a tag (builder style).
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
}

/// Why a host selector was refused. Positions are byte offsets into the selector text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseSelectorError {
    /// The selector was empty or only whitespace.
    #[error(
        "host selector is empty; use `all`, `host:NAME`, `group:NAME`, `tag:KEY=VALUE` or `~REGEX`"
    )]
    Empty,
    /// The selector is longer than [`MAX_SELECTOR_LEN`].
    #[error(
        "host selector is {len} bytes; the limit is {max} bytes (use a group or tag instead of listing hosts)"
    )]
    TooLong {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The selector has more than [`MAX_TERMS`] terms.
    #[error("host selector has more than {max} terms; use a group or tag instead of listing hosts")]
    TooManyTerms {
        /// The limit.
        max: usize,
    },
    /// Two commas in a row, a leading or trailing comma, or a lone `!`.
    #[error(
        "empty term at byte {at} of the host selector (two commas in a row, a trailing comma or a lone `!`?)"
    )]
    EmptyTerm {
        /// Where the empty term starts.
        at: usize,
    },
    /// `!!term`: negation written twice.
    #[error("`!` written twice at byte {at}; negate a term with a single `!`")]
    DoubleNegation {
        /// Where the second `!` is.
        at: usize,
    },
    /// A `kind:` prefix that is not `host:`, `group:` or `tag:`.
    #[error(
        "unknown selector kind `{kind}:` at byte {at}; expected `host:`, `group:`, `tag:`, `all` or `~REGEX`"
    )]
    UnknownKind {
        /// The prefix before the colon.
        kind: String,
        /// Where the term starts.
        at: usize,
    },
    /// A host, group, tag key or tag value is empty (e.g. `group:` or `tag:env=`).
    #[error("empty {what} at byte {at} of the host selector")]
    EmptyName {
        /// `host name`, `group name`, `tag key` or `tag value`.
        what: &'static str,
        /// Where it should have started.
        at: usize,
    },
    /// A name contains a character outside its allowed set, or is too long.
    #[error(
        "invalid {what} {value:?} at byte {at}: {problem}; names use ASCII letters, digits, '.', '_' and '-' (tag keys also '/', tag values also ':', '/', '@', '+') and are at most 253 bytes"
    )]
    InvalidName {
        /// `host name`, `group name`, `tag key` or `tag value`.
        what: &'static str,
        /// The offending text.
        value: String,
        /// Where it starts.
        at: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A `~REGEX` term does not compile or exceeds the size limits.
    #[error("invalid host-name regex {pattern:?} at byte {at}: {reason}")]
    BadRegex {
        /// The regex as written.
        pattern: String,
        /// Where the term starts.
        at: usize,
        /// The regex compiler's explanation.
        reason: String,
    },
}

/// A host-name regex from a `~REGEX` term: anchored, case-insensitive. Compares by its source.
#[derive(Debug, Clone)]
pub struct NameRegex {
    source: String,
    anchored: Regex,
}

impl NameRegex {
    /// Compiles `source` with the selector's size limits. `at` is used in the error.
    fn compile(source: &str, at: usize) -> Result<Self, ParseSelectorError> {
        let bad = |e: regex::Error| ParseSelectorError::BadRegex {
            pattern: source.to_owned(),
            at,
            reason: e.to_string(),
        };
        let build = |pattern: &str| {
            RegexBuilder::new(pattern)
                .case_insensitive(true)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_DFA_LIMIT)
                .nest_limit(REGEX_NEST_LIMIT)
                .build()
        };
        // Compile the source alone first: an unbalanced `a)|(b` must not escape the anchoring group.
        build(source).map_err(bad)?;
        let anchored = build(&format!("^(?:{source})$")).map_err(bad)?;
        Ok(NameRegex {
            source: source.to_owned(),
            anchored,
        })
    }

    /// The regex as written (without the anchors added for matching).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole `name` matches.
    pub fn is_match(&self, name: &str) -> bool {
        self.anchored.is_match(name)
    }
}

impl PartialEq for NameRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for NameRegex {}

/// What one selector term tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Matcher {
    /// Every host.
    All,
    /// The host with this name (ASCII case-insensitive).
    Host(String),
    /// Hosts in this group (ASCII case-insensitive).
    Group(String),
    /// Hosts with this tag; with `value`, only when the value is exactly equal.
    Tag {
        /// Tag key.
        key: String,
        /// Required value, or `None` for "has the tag".
        value: Option<String>,
    },
    /// Hosts whose whole name matches the regex.
    NameRegex(NameRegex),
}

impl Matcher {
    /// Whether `host` matches this term (before negation).
    pub fn matches(&self, host: &HostFacts) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Host(n) => host.name.eq_ignore_ascii_case(n),
            Matcher::Group(g) => host.groups.iter().any(|h| h.eq_ignore_ascii_case(g)),
            Matcher::Tag { key, value } => match (host.tags.get(key), value) {
                (Some(_), None) => true,
                (Some(have), Some(want)) => have == want,
                (None, _) => false,
            },
            Matcher::NameRegex(re) => re.is_match(&host.name),
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::All => f.write_str("all"),
            Matcher::Host(n) => write!(f, "host:{n}"),
            Matcher::Group(g) => write!(f, "group:{g}"),
            Matcher::Tag { key, value: None } => write!(f, "tag:{key}"),
            Matcher::Tag {
                key,
                value: Some(v),
            } => write!(f, "tag:{key}={v}"),
            Matcher::NameRegex(re) => write!(f, "~{}", re.as_str()),
        }
    }
}

/// One term of a selector: a matcher, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// `true` for `!term`: hosts matching it are excluded.
    pub negated: bool,
    /// What the term tests.
    pub matcher: Matcher,
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("!")?;
        }
        self.matcher.fmt(f)
    }
}

/// A parsed host selector. See the [module docs](self) for the grammar and semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

impl Selector {
    /// The selector `all`.
    pub fn all() -> Self {
        Selector {
            terms: vec![Term {
                negated: false,
                matcher: Matcher::All,
            }],
        }
    }

    /// Parses a selector; same as `str::parse`.
    pub fn parse(text: &str) -> Result<Self, ParseSelectorError> {
        text.parse()
    }

    /// The terms, in the order written.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Whether `host` is selected: it matches some positive term (or there is none) and no
    /// negated term.
    pub fn matches(&self, host: &HostFacts) -> bool {
        let mut any_positive = false;
        let mut positive_hit = false;
        for t in &self.terms {
            if t.negated {
                if t.matcher.matches(host) {
                    return false;
                }
            } else {
                any_positive = true;
                positive_hit = positive_hit || t.matcher.matches(host);
            }
        }
        positive_hit || !any_positive
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            t.fmt(f)?;
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = ParseSelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(ParseSelectorError::TooLong {
                len: text.len(),
                max: MAX_SELECTOR_LEN,
            });
        }
        if text.trim().is_empty() {
            return Err(ParseSelectorError::Empty);
        }
        let mut terms = Vec::new();
        for (at, raw) in split_terms(text) {
            if terms.len() == MAX_TERMS {
                return Err(ParseSelectorError::TooManyTerms { max: MAX_TERMS });
            }
            terms.push(parse_term(raw, at)?);
        }
        Ok(Selector { terms })
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Splits at top-level commas. A term whose first non-blank character (after an optional `!`)
/// is `~` is a regex and only ends at a comma outside brackets and not escaped.
fn split_terms(text: &str) -> Vec<(usize, &str)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let mut i = pos;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b'!') {
            i += 1;
        }
        let end = if i < b.len() && b[i] == b'~' {
            regex_term_end(b, i + 1)
        } else {
            b[pos..]
                .iter()
                .position(|&c| c == b',')
                .map_or(b.len(), |p| pos + p)
        };
        out.push((pos, &text[pos..end]));
        if end >= b.len() {
            return out;
        }
        pos = end + 1;
    }
}

/// Index of the comma ending a regex term that starts at `start`, or `b.len()`.
fn regex_term_end(b: &[u8], start: usize) -> usize {
    let mut depth = 0usize; // ( and {
    let mut class = 0usize; // nested [ ]
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => {
                class += 1;
                // `[]...]` and `[^]...]`: a `]` right after the opening is literal.
                if b.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if b.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b']' if class > 0 => class -= 1,
            _ if class > 0 => {}
            b'(' | b'{' => depth += 1,
            b')' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

fn parse_term(raw: &str, at: usize) -> Result<Term, ParseSelectorError> {
    let lead = raw.len() - raw.trim_start().len();
    let mut at = at + lead;
    let mut t = raw.trim();
    let mut negated = false;
    if let Some(rest) = t.strip_prefix('!') {
        negated = true;
        at += 1 + (rest.len() - rest.trim_start().len());
        t = rest.trim_start();
        if t.starts_with('!') {
            return Err(ParseSelectorError::DoubleNegation { at });
        }
    }
    if t.is_empty() {
        return Err(ParseSelectorError::EmptyTerm { at });
    }
    let matcher = if t == "all" {
        Matcher::All
    } else if let Some(re) = t.strip_prefix('~') {
        if re.is_empty() {
            return Err(ParseSelectorError::BadRegex {
                pattern: String::new(),
                at,
                reason: "the regex is empty".into(),
            });
        }
        Matcher::NameRegex(NameRegex::compile(re, at)?)
    } else if let Some(n) = t.strip_prefix("host:") {
        Matcher::Host(name(n, "host name", at + 5, NAME_CHARS)?)
    } else if let Some(g) = t.strip_prefix("group:") {
        Matcher::Group(name(g, "group name", at + 6, NAME_CHARS)?)
    } else if let Some(kv) = t.strip_prefix("tag:") {
        match kv.split_once('=') {
            Some((k, v)) => Matcher::Tag {
                key: name(k, "tag key", at + 4, KEY_CHARS)?,
                value: Some(name(v, "tag value", at + 5 + k.len(), VALUE_CHARS)?),
            },
            None => Matcher::Tag {
                key: name(kv, "tag key", at + 4, KEY_CHARS)?,
                value: None,
            },
        }
    } else if let Some((kind, _)) = t.split_once(':') {
        return Err(ParseSelectorError::UnknownKind {
            kind: kind.to_owned(),
            at,
        });
    } else {
        Matcher::Host(name(t, "host name", at, NAME_CHARS)?)
    };
    Ok(Term { negated, matcher })
}

const NAME_CHARS: &[u8] = b"._-";
const KEY_CHARS: &[u8] = b"._-/";
const VALUE_CHARS: &[u8] = b"._-:/@+";

fn name(
    text: &str,
    what: &'static str,
    at: usize,
    extra: &[u8],
) -> Result<String, ParseSelectorError> {
    if text.is_empty() {
        return Err(ParseSelectorError::EmptyName { what, at });
    }
    let invalid = |problem: String| ParseSelectorError::InvalidName {
        what,
        value: text.to_owned(),
        at,
        problem,
    };
    if text.len() > MAX_NAME_LEN {
        return Err(invalid(format!("it is {} bytes long", text.len())));
    }
    if let Some(c) = text
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || (c.is_ascii() && extra.contains(&(c as u8)))))
    {
        return Err(invalid(format!("character {c:?} is not allowed")));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hosts() -> Vec<HostFacts> {
        vec![
            HostFacts::named("web1")
                .with_group("web")
                .with_tag("env", "prod"),
            HostFacts::named("web2")
                .with_group("web")
                .with_tag("env", "staging"),
            HostFacts::named("db1")
                .with_group("db")
                .with_tag("env", "prod"),
            HostFacts::named("build"),
        ]
    }

    fn selected(sel: &str) -> Vec<String> {
        let s: Selector = sel.parse().unwrap();
        hosts()
            .into_iter()
            .filter(|h| s.matches(h))
            .map(|h| h.name)
            .collect()
    }

    #[test]
    fn table_of_selections() {
        let cases: &[(&str, &[&str])] = &[
            ("all", &["web1", "web2", "db1", "build"]),
            ("host:web1", &["web1"]),
            ("host:web1,db1", &["web1", "db1"]),
            ("HOST:web1", &[]), // kinds are lowercase; this is an unknown kind → checked below
            ("group:web", &["web1", "web2"]),
            ("group:WEB", &["web1", "web2"]),
            ("tag:env=prod", &["web1", "db1"]),
            ("tag:env", &["web1", "web2", "db1"]),
            ("tag:env=Prod", &[]),
            ("group:web,!host:web2", &["web1"]),
            ("!tag:env=prod", &["web2", "build"]),
            ("!all", &[]),
            ("~web[0-9]+", &["web1", "web2"]),
            ("~WEB.", &["web1", "web2"]),
            ("~eb1", &[]), // anchored
            ("~web[0-9]{1,3}, db1", &["web1", "web2", "db1"]),
            ("tag:env=prod , !group:db", &["web1"]),
        ];
        for (sel, want) in cases {
            if *sel == "HOST:web1" {
                assert!(matches!(
                    sel.parse::<Selector>(),
                    Err(ParseSelectorError::UnknownKind { .. })
                ));
                continue;
            }
            assert_eq!(selected(sel), *want, "selector {sel}");
        }
    }

    #[test]
    fn errors_are_precise() {
        let err = |s: &str| s.parse::<Selector>().unwrap_err();
        assert_eq!(err(""), ParseSelectorError::Empty);
        assert_eq!(err("web1,,db1"), ParseSelectorError::EmptyTerm { at: 5 });
        assert_eq!(err("web1,"), ParseSelectorError::EmptyTerm { at: 5 });
        assert_eq!(err("!!web1"), ParseSelectorError::DoubleNegation { at: 1 });
        assert_eq!(
            err("group:"),
            ParseSelectorError::EmptyName {
                what: "group name",
                at: 6
            }
        );
        assert!(
            matches!(err("rack:r1"), ParseSelectorError::UnknownKind { kind, at: 0 } if kind == "rack")
        );
        assert!(
            matches!(
                err("web1,host:we b"),
                ParseSelectorError::InvalidName { at: 10, .. }
            ),
            "{:?}",
            err("web1,host:we b")
        );
        assert!(matches!(
            err("tag:env="),
            ParseSelectorError::EmptyName {
                what: "tag value",
                at: 8
            }
        ));
        assert!(matches!(err("~a)|(b"), ParseSelectorError::BadRegex { .. }));
        assert!(matches!(err("~(a"), ParseSelectorError::BadRegex { .. }));
        assert!(matches!(
            err("~(a{100}){100}"),
            ParseSelectorError::BadRegex { .. }
        ));
        assert!(matches!(
            err(&"a".repeat(1025)),
            ParseSelectorError::TooLong { len: 1025, .. }
        ));
        let many = vec!["h"; 65].join(",");
        assert!(matches!(
            err(&many),
            ParseSelectorError::TooManyTerms { .. }
        ));
        assert!(matches!(
            err("hоst1"),
            ParseSelectorError::InvalidName { .. }
        )); // Cyrillic о
        // The messages say what to do.
        assert!(err("rack:r1").to_string().contains("expected `host:`"));
    }

    #[test]
    fn display_is_canonical_and_serde_uses_it() {
        let s: Selector = " host:a , b,!group:g ,tag:k=v,~x{1,2},all".parse().unwrap();
        assert_eq!(s.to_string(), "host:a,host:b,!group:g,tag:k=v,~x{1,2},all");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"host:a,host:b,!group:g,tag:k=v,~x{1,2},all\"");
        let back: Selector = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert!(serde_json::from_str::<Selector>("\"group:\"").is_err());
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9._-]{0,12}"
    }

    fn term_strategy() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("all".to_owned()),
            name_strategy().prop_map(|n| format!("host:{n}")),
            name_strategy(),
            name_strategy().prop_map(|n| format!("group:{n}")),
            (
                name_strategy(),
                proptest::option::of("[a-z0-9:/@+._-]{1,8}")
            )
                .prop_map(|(k, v)| match v {
                    Some(v) => format!("tag:{k}={v}"),
                    None => format!("tag:{k}"),
                }),
            prop_oneof![
                Just("web[0-9]{1,3}"),
                Just("db(1|2)"),
                Just("a\\,b"),
                Just("[],]x"),
                Just(".*"),
            ]
            .prop_map(|r| format!("~{r}")),
        ];
        (any::<bool>(), atom).prop_map(|(neg, a)| if neg { format!("!{a}") } else { a })
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(s in "\\PC{0,64}|[a-z:!~,=(){}\\[\\]\\\\ 0-9.*+-]{0,64}") {
            if let Ok(sel) = s.parse::<Selector>() {
                let shown = sel.to_string();
                let again: Selector = shown.parse().expect("display output must parse");
                prop_assert_eq!(&again, &sel);
                prop_assert_eq!(again.to_string(), shown);
            }
        }

        #[test]
        fn generated_selectors_round_trip(terms in proptest::collection::vec(term_strategy(), 1..8)) {
            let text = terms.join(",");
            let sel: Selector = text.parse().expect("generated selector parses");
            prop_assert_eq!(sel.terms().len(), terms.len());
            let again: Selector = sel.to_string().parse().expect("display output parses");
            prop_assert_eq!(again, sel);
        }
    }
}
