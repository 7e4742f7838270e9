//! "Could this path match a deny_paths rule?" for paths the splitter can't know exactly: globs
//! (`/etc/shado[w]`), `~` and `~user`, variables, relative paths after `cd $X`, and directories
//! that contain denied paths (`grep -r x /root/.ssh`).
//!
//! A path is a sequence of [`Piece`]s: literal text, one of a set of bytes (a glob bracket) or
//! any text (`*`, `?`, `$X`, an unknown home or working directory). The deny_paths patterns are
//! compiled once into one dense DFA; walking it over the pieces (any text = every state
//! reachable from here) gives every rule that some value of the path would match. When the
//! patterns are too big for a DFA, every rule is assumed to match (deny, with that reason).
use std::collections::BTreeSet;

use regex_automata::dfa::{Automaton, StartKind, dense};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

/// A part of a path whose value may not be known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Known text.
    Lit(String),
    /// One of these bytes (a glob bracket such as `[wx]`).
    OneOf(Vec<u8>),
    /// Any text, including none.
    Any,
    /// Any text without a `/` (what a glob `*` can stand for).
    Segment,
    /// A home directory: `/root` or `/home/NAME`.
    Home,
}

/// Most DFA states visited for one question before giving up (then: "could match").
const MAX_VISITS: usize = 20_000;

/// The deny_paths patterns as one DFA.
#[derive(Debug)]
pub(crate) struct PathDfa {
    dfa: Option<dense::DFA<Vec<u32>>>,
}

/// Which rules could match: `None` means "all of them (not checked precisely)".
pub(crate) type Could = Option<BTreeSet<usize>>;

impl PathDfa {
    /// Builds the DFA; a pattern the DFA can't express (or a too-big set) leaves it out.
    pub fn new(patterns: &[String]) -> PathDfa {
        if patterns.is_empty() {
            return PathDfa { dfa: None };
        }
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::All)
                    .start_kind(StartKind::Unanchored)
                    .unicode_word_boundary(true)
                    .dfa_size_limit(Some(16 << 20))
                    .determinize_size_limit(Some(16 << 20)),
            )
            .build_many(patterns)
            .ok();
        PathDfa { dfa }
    }

    /// The rules that some value of `pieces` could match.
    pub fn could_match(&self, pieces: &[Piece]) -> Could {
        let dfa = self.dfa.as_ref()?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::No))
            .ok()?;
        let mut hits = BTreeSet::new();
        let mut states: BTreeSet<StateID> = BTreeSet::from([start]);
        let mut visits = 0usize;
        for piece in pieces {
            let mut next = BTreeSet::new();
            match piece {
                Piece::Lit(s) => {
                    for &st in &states {
                        let mut cur = st;
                        let mut alive = true;
                        for &b in s.as_bytes() {
                            cur = dfa.next_state(cur, b);
                            if dfa.is_quit_state(cur) {
                                return None;
                            }
                            if dfa.is_dead_state(cur) {
                                alive = false;
                                break;
                            }
                            record(dfa, cur, &mut hits);
                        }
                        if alive {
                            next.insert(cur);
                        }
                    }
                }
                Piece::OneOf(bytes) => {
                    for &st in &states {
                        for &b in bytes {
                            let cur = dfa.next_state(st, b);
                            if dfa.is_quit_state(cur) {
                                return None;
                            }
                            if !dfa.is_dead_state(cur) {
                                record(dfa, cur, &mut hits);
                                next.insert(cur);
                            }
                        }
                    }
                }
                Piece::Any | Piece::Segment => {
                    let slash = matches!(piece, Piece::Any);
                    next = closure(dfa, &states, slash, &mut hits, &mut visits)?;
                }
                Piece::Home => {
                    let mut home = BTreeSet::new();
                    for &st in &states {
                        if let Some(s) = walk(dfa, st, b"/root", &mut hits)? {
                            next.insert(s);
                        }
                        if let Some(s) = walk(dfa, st, b"/home/", &mut hits)? {
                            home.insert(s);
                        }
                    }
                    next.extend(closure(dfa, &home, false, &mut hits, &mut visits)?);
                }
            }
            states = next;
            if states.is_empty() {
                break;
            }
        }
        for &st in &states {
            let eoi = dfa.next_eoi_state(st);
            record(dfa, eoi, &mut hits);
        }
        Some(hits)
    }
}

/// Feeds `bytes` from `st`: `Ok(None)` when the DFA dies, `Err` on a quit state.
fn walk(
    dfa: &dense::DFA<Vec<u32>>,
    st: StateID,
    bytes: &[u8],
    hits: &mut BTreeSet<usize>,
) -> Option<Option<StateID>> {
    let mut cur = st;
    for &b in bytes {
        cur = dfa.next_state(cur, b);
        if dfa.is_quit_state(cur) {
            return None;
        }
        if dfa.is_dead_state(cur) {
            return Some(None);
        }
        record(dfa, cur, hits);
    }
    Some(Some(cur))
}

/// Every state reachable from `states` over any bytes (without `/` unless `slash`), recording
/// matches on the way and at the end of input. `None`: gave up or hit a quit state.
fn closure(
    dfa: &dense::DFA<Vec<u32>>,
    states: &BTreeSet<StateID>,
    slash: bool,
    hits: &mut BTreeSet<usize>,
    visits: &mut usize,
) -> Option<BTreeSet<StateID>> {
    let mut todo: Vec<StateID> = states.iter().copied().collect();
    let mut seen = states.clone();
    while let Some(st) = todo.pop() {
        *visits += 1;
        if *visits > MAX_VISITS {
            return None;
        }
        record(dfa, dfa.next_eoi_state(st), hits);
        for b in 0..=255u8 {
            if b == b'/' && !slash {
                continue;
            }
            let cur = dfa.next_state(st, b);
            if dfa.is_quit_state(cur) {
                return None;
            }
            if dfa.is_dead_state(cur) {
                continue;
            }
            record(dfa, cur, hits);
            if seen.insert(cur) {
                todo.push(cur);
            }
        }
    }
    Some(seen)
}

fn record(dfa: &dense::DFA<Vec<u32>>, st: StateID, hits: &mut BTreeSet<usize>) {
    if dfa.is_match_state(st) {
        for i in 0..dfa.match_len(st) {
            hits.insert(dfa.match_pattern(st, i).as_usize());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use Piece::*;

    fn dfa() -> PathDfa {
        PathDfa::new(&[
            r"^/etc/(shadow|gshadow|sudoers)$|^/etc/sudoers\.d/".to_owned(),
            r"^/root/\.ssh/".to_owned(),
        ])
    }

    fn lit(s: &str) -> Piece {
        Lit(s.to_owned())
    }

    #[test]
    fn globs_and_unknown_parts() {
        let d = dfa();
        let all = |p: &[Piece]| d.could_match(p).unwrap().into_iter().collect::<Vec<_>>();
        assert_eq!(all(&[lit("/etc/shado"), OneOf(b"w".to_vec())]), [0]);
        assert_eq!(
            all(&[lit("/etc/shado"), OneOf(b"x".to_vec())]),
            [] as [usize; 0]
        );
        assert_eq!(all(&[lit("/etc/sha"), Any]), [0]);
        assert_eq!(all(&[lit("/etc/hosts")]), [] as [usize; 0]);
        assert_eq!(all(&[lit("/root/.ssh/"), Any]), [1]);
        // Any text could be `/etc/sudoers.d/x` too.
        assert_eq!(all(&[Any, lit("/.ssh/id_rsa")]), [0, 1]);
        assert_eq!(all(&[lit("/srv/"), Any]), [] as [usize; 0]);
        assert_eq!(all(&[lit("/etc/"), Any]), [0]);
        // A glob segment does not cross `/`; a home directory is /root or /home/NAME.
        assert_eq!(all(&[lit("/etc/sudoers"), Segment]), [0]);
        assert_eq!(all(&[lit("/srv/"), Segment, lit(".log")]), [] as [usize; 0]);
        assert_eq!(all(&[Home, lit("/.ssh/id_rsa")]), [1]);
        assert_eq!(all(&[Home, lit("/notes.txt")]), [] as [usize; 0]);
    }
}
