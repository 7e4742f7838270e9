//! A conservative splitter for POSIX `sh`/bash command lines.
//!
//! It does not run or expand anything. It finds every *simple command* a command line can run —
//! across `;`, `&&`, `||`, `|`, `|&`, `&`, newlines, `( … )`, `{ …; }`, `if/while` bodies, and
//! inside `$( … )`, backticks, `<( … )`/`>( … )`, `eval …`, `trap '…'` — and normalizes each one:
//! quotes and escapes removed, words joined by one space, redirections taken out (their targets
//! are reported as paths). Deny rules additionally see *views* of each command, each labelled
//! with the bypass class it closes (the label is named in the decision's reason):
//!
//! 1. **runs a string**: `sh -c SCRIPT` wherever `-c` is (`bash -x -c`, `bash -c -- S`), `su -c`,
//!    `runuser -c`, `flock F -c`, `script -c`, `env -S`, `watch`, `ssh HOST CMD`, `parallel`,
//!    `eval`, `trap`, `find -exec sh -c S \;` (the script word is one unit, never re-split);
//! 2. **wrapper**: the command after a wrapper's options, option values and operands
//!    (`env -u A -u B CMD`, `timeout -s KILL 5 CMD`, `sudo -u U -g G CMD`); the table is data
//!    ([`crate::wrappers`]) and a policy file extends it;
//! 3. **code the checker can't see** ([`Analysis::opaque`]): inline interpreters
//!    (`python3 -c`, `perl -e`, `awk '…system()…'`, `sed 'e …'`), scripts from a pipe or a file
//!    (`… | sh`, `sh FILE`, `. FILE`, `bash < FILE`), strings built at run time (`sh -c "$(…)"`);
//! 4. **unresolvable glob / brace / variable**: a command whose arguments hold expansions is
//!    also checked in the literal forms derivable from it (`rm -rf /?*` as `rm -rf /*`,
//!    `{/*,}` as `/*`, `/*$X` as `/*`);
//! 5. **paths** ([`Analysis::paths`]): option-attached (`-o/p`, `--file=/p`, `of=/p`), `~` and
//!    `~user`, relative paths after `cd`/`pushd`, globs, and (checked by the caller) directories
//!    that contain denied paths.
//!
//! Whatever it can't follow safely is an error (the caller denies it in enforce mode): unbalanced
//! quotes or brackets, here-documents, `$'…'` quoting, arithmetic expansion, command
//! substitution inside `${…}`, `for`/`case`/`select`/function definitions, `alias`, a command
//! name that comes from an expansion or contains glob/brace characters or non-ASCII letters,
//! and nesting deeper than [`MAX_DEPTH`].

use std::borrow::Cow;

use crate::paths::Piece;
use crate::wrappers::{Script, Wrappers, is_assignment};

/// Deepest nesting of substitutions / `sh -c` strings followed.
pub(crate) const MAX_DEPTH: usize = 8;
/// Most simple commands in one request.
const MAX_COMMANDS: usize = 512;
/// Most deny-only views in one request.
const MAX_VIEWS: usize = 1024;
/// Most literal forms derived from one command with unresolvable expansions.
const MAX_FORMS: usize = 12;

/// Shells whose `-c STRING` argument is parsed as a command line.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash", "fish", "rbash", "csh", "tcsh",
];
/// Interpreters and the options that take inline code.
const INTERPRETERS: &[(&str, &[&str])] = &[
    ("python", &["-c"]),
    ("python2", &["-c"]),
    ("python3", &["-c"]),
    ("pypy", &["-c"]),
    ("pypy3", &["-c"]),
    ("perl", &["-e", "-E"]),
    ("ruby", &["-e"]),
    ("node", &["-e", "-p", "--eval", "--print"]),
    ("nodejs", &["-e", "-p", "--eval", "--print"]),
    ("php", &["-r"]),
    ("lua", &["-e"]),
    ("luajit", &["-e"]),
    ("Rscript", &["-e"]),
    ("tclsh", &[]),
    ("bun", &["-e", "--eval", "-p", "--print"]),
    ("deno", &["eval"]),
    ("pwsh", &["-c", "-Command", "-EncodedCommand"]),
    ("osascript", &["-e"]),
];
/// awk dialects: their programs can run commands (`system()`, `| "sh"`).
const AWKS: &[&str] = &["awk", "gawk", "mawk", "nawk"];
/// Programs that are not wrappers but need a closer look.
const OTHERS: &[&str] = &[
    "eval", "trap", "find", "alias", "source", ".", "sed", "cd", "pushd", "popd",
];
/// Reserved words stripped from the start of a simple command.
const KEYWORDS: &[&str] = &[
    "!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until",
];
/// Reserved words whose constructs are not followed.
const STRUCTURES: &[&str] = &["for", "case", "esac", "select", "function", "coproc", "in"];

/// How to split.
pub(crate) struct Options<'w> {
    /// Collect [`Analysis::paths`] (skipped when no path rule applies and nobody asked).
    pub collect_paths: bool,
    /// Fill [`Analysis::parsed`] (for policy plugins).
    pub structured: bool,
    /// The wrapper table.
    pub wrappers: &'w Wrappers,
    /// The working directory the command starts in, if known.
    pub cwd: Option<&'w str>,
}

/// Why a command or view is checked: the bypass class it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// `"runs a string: bash -c"`, `"wrapper: sudo"`, `"unresolvable glob"`...
    pub label: String,
    /// The view is one *possible* value (class 4): the reason says "may match".
    pub may: bool,
}

/// A command the splitter can't look into (class 3).
#[derive(Debug)]
pub(crate) struct Opaque {
    /// The simple command, normalized (allow rules are matched against it).
    pub command: String,
    /// What hides the code, e.g. `inline interpreter: python3 -c`.
    pub why: String,
}

/// One simple command, structured (for policy plugins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedCommand {
    /// The words after quote removal (`VAR=value` assignments first, if any).
    pub argv: Vec<String>,
    /// Redirections: the operator (`>`, `>>`, `<`, `2>`, `&>`...) and its target.
    pub redirects: Vec<(String, String)>,
    /// Paths found in the arguments and redirections (normalized when absolute and known).
    pub paths: Vec<String>,
    /// What runs this command when the shell doesn't run it directly (`sudo`, `bash -c`,
    /// `find -exec`), as in the decision's reasons.
    pub via: Option<String>,
}

/// What a command line can run, as seen by the splitter.
#[derive(Debug, Default)]
pub(crate) struct Analysis<'a> {
    /// Every simple command, normalized. Each must pass deny rules and allow lists.
    pub commands: Vec<Cow<'a, str>>,
    /// The origin (index into `origins`, 0 = run directly) of each of `commands`.
    pub command_origin: Vec<u16>,
    /// Extra views of commands, checked by deny rules only, with their origin.
    pub deny_views: Vec<(String, u16)>,
    /// Labels of origins; index 0 is "run directly".
    pub origins: Vec<Origin>,
    /// Redirection targets and path arguments (only when asked for).
    pub paths: Vec<PathRef>,
    /// Commands whose code the splitter can't see (class 3).
    pub opaque: Vec<Opaque>,
    /// Structured commands (only when asked for).
    pub parsed: Vec<ParsedCommand>,
}

/// A path-like word found in a command.
#[derive(Debug)]
pub(crate) struct PathRef {
    /// The word (or its path part) after quote removal.
    pub text: String,
    /// `None`: a known path (`text`; relative ones were resolved against a known directory).
    /// `Some`: its value is only partly known.
    pub pieces: Option<Vec<Piece>>,
    /// It is a redirection target.
    pub redirect: bool,
    /// It is a plain argument (not the command name): directories that contain denied paths
    /// are refused too.
    pub arg: bool,
}

impl Analysis<'_> {
    /// The origin label of index `i` (`None` for "run directly").
    pub fn origin(&self, i: u16) -> Option<&Origin> {
        if i == 0 {
            None
        } else {
            self.origins.get(i as usize - 1)
        }
    }
}

/// Splits `cmd`.
pub(crate) fn analyze<'a>(cmd: &'a str, opt: &Options<'_>) -> Result<Analysis<'a>, String> {
    if !opt.structured
        && let Some(simple) = fast_path(cmd, opt)
    {
        return Ok(simple);
    }
    let mut out = Analysis::default();
    let mut cx = Cx {
        out: &mut out,
        opt,
        origin: 0,
        cwd: match opt.cwd.and_then(crate::input::normalize_path) {
            Some(c) => Cwd::Known(c),
            None => Cwd::Unset,
        },
        forms: true,
    };
    parse_into(cmd.as_bytes(), 0, &mut cx)?;
    Ok(out)
}

fn needs_expand(base: &str, argv0: &str, wrappers: &Wrappers) -> bool {
    base.len() != argv0.len()
        || wrappers.get(base).is_some()
        || SHELLS.contains(&base)
        || OTHERS.contains(&base)
        || AWKS.contains(&base)
        || interpreter(base).is_some()
}

fn interpreter(base: &str) -> Option<&'static [&'static str]> {
    if let Some((_, opts)) = INTERPRETERS.iter().find(|(n, _)| *n == base) {
        return Some(opts);
    }
    // python3.11, perl5.36, ...
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    if stem.len() != base.len() {
        return INTERPRETERS
            .iter()
            .find(|(n, _)| *n == stem)
            .map(|(_, o)| *o);
    }
    None
}

/// The common case, without the general parser: one simple command of plain words separated by
/// single spaces (no quotes, no expansions, no operators), not starting with an assignment, a
/// keyword or a program that needs views. Returns `None` to take the general path.
fn fast_path<'a>(cmd: &'a str, opt: &Options<'_>) -> Option<Analysis<'a>> {
    let b = cmd.as_bytes();
    if b.is_empty() || b[0] == b' ' || b[b.len() - 1] == b' ' {
        return None;
    }
    // Branch-free per chunk: any special byte other than a space sends us to the parser.
    for chunk in b.chunks(64) {
        let mut special = false;
        for &c in chunk {
            special |= SPECIAL[c as usize] & (c != b' ');
        }
        if special {
            return None;
        }
    }
    if cmd.contains("  ") {
        return None;
    }
    let argv0 = cmd.split(' ').next().unwrap_or(cmd);
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    if !argv0.is_ascii()
        || is_assignment(argv0)
        || KEYWORDS.contains(&argv0)
        || STRUCTURES.contains(&argv0)
        || needs_expand(base, argv0, opt.wrappers)
    {
        return None;
    }
    let mut out = Analysis {
        commands: vec![Cow::Borrowed(cmd)],
        command_origin: vec![0],
        ..Analysis::default()
    };
    if opt.collect_paths {
        if opt.cwd.is_some() {
            // Relative arguments resolve against the working directory: the general path.
            return None;
        }
        for (k, t) in cmd.split(' ').enumerate() {
            if let Some(start) = path_start(t) {
                if t.as_bytes().get(start) == Some(&b'~') {
                    return None;
                }
                out.paths.push(PathRef {
                    text: t[start..].to_owned(),
                    pieces: None,
                    redirect: false,
                    arg: k > 0,
                });
            }
        }
    }
    Some(out)
}

/// Where the path in a word starts: `/p`, `~/p`, `-o/p`, `--file=/p`, `of=/p`.
fn path_start(t: &str) -> Option<usize> {
    let b = t.as_bytes();
    let is_root = |i: usize| matches!(b.get(i), Some(b'/' | b'~'));
    if is_root(0) {
        return Some(0);
    }
    if b.len() > 2 && b[0] == b'-' && b[1] != b'-' && b[1].is_ascii_alphanumeric() && is_root(2) {
        return Some(2);
    }
    let eq = t.find('=')?;
    is_root(eq + 1).then_some(eq + 1)
}

/// The working directory while walking a script.
#[derive(Debug, Clone)]
enum Cwd {
    /// No `cd` yet and no working directory given: relative paths are not checked.
    Unset,
    /// Known (normalized, absolute).
    Known(String),
    /// Changed to somewhere unknown (`cd $X`, `cd ~`, `popd`).
    Lost,
}

struct Cx<'o, 'w> {
    out: &'o mut Analysis<'static>,
    opt: &'o Options<'w>,
    /// Origin of what is parsed now (0: run directly).
    origin: u16,
    cwd: Cwd,
    /// Derive literal forms of unresolvable words (off while checking such a form).
    forms: bool,
}

impl Cx<'_, '_> {
    fn push_view(&mut self, view: String, origin: u16) -> Result<(), String> {
        if self.out.deny_views.len() >= MAX_VIEWS {
            return Err("too many nested wrapper commands to check".into());
        }
        self.out.deny_views.push((view, origin));
        Ok(())
    }

    fn push_command(&mut self, text: Cow<'static, str>) -> Result<(), String> {
        if self.out.commands.len() >= MAX_COMMANDS {
            return Err(format!("more than {MAX_COMMANDS} commands in one request"));
        }
        self.out.commands.push(text);
        self.out.command_origin.push(self.origin);
        Ok(())
    }

    /// The origin `label` nested in the current one.
    fn origin(&mut self, label: &str, may: bool) -> u16 {
        let (label, may) = match self.out.origin(self.origin) {
            Some(parent) => (format!("{} → {label}", parent.label), may || parent.may),
            None => (label.to_owned(), may),
        };
        if let Some(i) = self.out.origins.iter().position(|o| o.label == label) {
            return (i + 1) as u16;
        }
        self.out.origins.push(Origin { label, may });
        self.out.origins.len().min(u16::MAX as usize) as u16
    }

    fn opaque(&mut self, command: String, why: String) {
        let why = match self.out.origin(self.origin) {
            Some(o) => format!("{} → {why}", o.label),
            None => why,
        };
        self.out.opaque.push(Opaque { command, why });
    }

    fn via(&self) -> Option<String> {
        self.out.origin(self.origin).map(|o| o.label.clone())
    }

    /// Parses `script` as a command line run by `label` (class 1).
    fn script(&mut self, script: &str, label: &str, depth: usize) -> Result<(), String> {
        let saved = self.origin;
        self.origin = self.origin(label, false);
        let r = parse_into(script.as_bytes(), depth + 1, self);
        self.origin = saved;
        r
    }
}

fn parse_into(b: &[u8], depth: usize, cx: &mut Cx<'_, '_>) -> Result<(), String> {
    let mut pos = 0;
    parse_seq(b, &mut pos, false, depth, cx)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpanKind {
    /// `*` or `?`
    Glob,
    /// `[...]`
    Class,
    /// `{` or `}` (and the text between is brace alternatives when it holds a `,`)
    Brace,
    /// `$X`, `${X}`
    Var,
    /// `$(…)`, backticks, `<(…)`
    Subst,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    kind: SpanKind,
}

#[derive(Debug, Clone, Copy)]
struct Word {
    start: usize,
    end: usize,
    dynamic: bool,
    glob: bool,
    subst: bool,
}

#[derive(Default)]
struct Seg {
    text: Vec<u8>,
    words: Vec<Word>,
    spans: Vec<Span>,
    cur: Option<Word>,
    quoted: bool,
    redirect_pending: Option<String>,
    redirects: Vec<(String, String)>,
    /// Index in `Analysis::paths` where this simple command's paths start.
    paths_start: usize,
}

impl Seg {
    fn begin(&mut self) -> &mut Word {
        if self.cur.is_none() {
            if !self.text.is_empty() {
                self.text.push(b' ');
            }
            self.quoted = false;
        }
        let start = self.text.len();
        self.cur.get_or_insert(Word {
            start,
            end: 0,
            dynamic: false,
            glob: false,
            subst: false,
        })
    }

    fn push(&mut self, bytes: &[u8]) {
        self.begin();
        self.text.extend_from_slice(bytes);
    }

    fn push_span(&mut self, bytes: &[u8], kind: SpanKind) {
        let w = self.begin();
        match kind {
            SpanKind::Var => w.dynamic = true,
            SpanKind::Subst => {
                w.dynamic = true;
                w.subst = true;
            }
            SpanKind::Glob | SpanKind::Class | SpanKind::Brace => w.glob = true,
        }
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        self.spans.push(Span {
            start,
            end: self.text.len(),
            kind,
        });
    }

    fn mark_quoted(&mut self) {
        self.begin();
        self.quoted = true;
    }

    /// Takes the current word out of the text (a redirection target or a file descriptor).
    fn cut_current(&mut self) -> Option<(Word, Vec<u8>, Vec<Span>)> {
        let w = self.cur.take()?;
        let bytes = self.text.split_off(w.start);
        let keep = self.spans.iter().take_while(|s| s.start < w.start).count();
        let spans = self
            .spans
            .split_off(keep)
            .into_iter()
            .map(|s| Span {
                start: s.start - w.start,
                end: s.end - w.start,
                kind: s.kind,
            })
            .collect();
        if w.start > 0 {
            self.text.pop(); // the separating space
        }
        Some((w, bytes, spans))
    }

    fn end_word(&mut self, cx: &mut Cx<'_, '_>) -> Result<(), String> {
        if let Some(op) = self.redirect_pending.take() {
            if let Some((w, bytes, spans)) = self.cut_current() {
                let text = String::from_utf8(bytes).map_err(|_| "invalid UTF-8")?;
                if (cx.opt.collect_paths || cx.opt.structured)
                    && let Some(p) = path_ref(&text, 0, &spans, w.dynamic, &cx.cwd, true, true)
                {
                    cx.out.paths.push(PathRef {
                        redirect: true,
                        arg: false,
                        ..p
                    });
                }
                if cx.opt.structured {
                    self.redirects.push((op, text));
                }
            } else {
                self.redirect_pending = Some(op);
            }
            return Ok(());
        }
        if let Some(mut w) = self.cur.take() {
            w.end = self.text.len();
            self.words.push(w);
        }
        Ok(())
    }

    /// Before a redirection operator: a word of digits right before it is a file descriptor.
    fn end_word_or_fd(&mut self, cx: &mut Cx<'_, '_>) -> Result<String, String> {
        if let Some(w) = &self.cur
            && self.redirect_pending.is_none()
            && !self.quoted
            && !w.dynamic
            && self.text.len() > w.start
            && self.text[w.start..].iter().all(u8::is_ascii_digit)
        {
            let fd = self
                .cut_current()
                .map(|(_, b, _)| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            return Ok(fd);
        }
        self.end_word(cx)?;
        Ok(String::new())
    }

    fn finish(&mut self, cx: &mut Cx<'_, '_>, depth: usize) -> Result<(), String> {
        self.end_word(cx)?;
        if self.redirect_pending.is_some() {
            return Err("a redirection has no target".into());
        }
        if self.words.is_empty() {
            self.text.clear();
            self.spans.clear();
            self.redirects.clear();
            self.paths_start = cx.out.paths.len();
            return Ok(());
        }
        let text = String::from_utf8(std::mem::take(&mut self.text))
            .map_err(|_| "invalid UTF-8".to_owned())?;
        let redirects = std::mem::take(&mut self.redirects);
        let paths_start = self.paths_start;
        let result = simple_command(
            text,
            &self.words,
            &self.spans,
            redirects,
            paths_start,
            depth,
            cx,
        );
        self.words.clear();
        self.spans.clear();
        self.paths_start = cx.out.paths.len();
        result
    }
}

/// Bytes that end a run of ordinary word characters.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let specials = b" \t\n;&|()<>#\\'\"$`*?[{}";
    let mut i = 0;
    while i < specials.len() {
        t[specials[i] as usize] = true;
        i += 1;
    }
    t
};

fn is_special(c: u8) -> bool {
    SPECIAL[c as usize]
}

fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Parses a sequence of commands. With `in_sub`, stops after the `)` closing a `$(` or `<(`.
fn parse_seq(
    b: &[u8],
    pos: &mut usize,
    in_sub: bool,
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "substitutions or `sh -c` strings nested deeper than {MAX_DEPTH} levels"
        ));
    }
    let mut seg = Seg {
        text: Vec::with_capacity(b.len() - *pos),
        words: Vec::with_capacity(16),
        paths_start: cx.out.paths.len(),
        ..Seg::default()
    };
    let mut parens = 0usize;
    while *pos < b.len() {
        let c = b[*pos];
        let next = b.get(*pos + 1).copied();
        match c {
            b' ' | b'\t' => {
                seg.end_word(cx)?;
                *pos += 1;
            }
            b'\n' | b';' => {
                seg.finish(cx, depth)?;
                *pos += 1;
            }
            b'&' if next == Some(b'>') => {
                seg.end_word(cx)?;
                if seg.redirect_pending.is_some() {
                    return Err("a redirection has no target".into());
                }
                *pos += 2;
                let mut op = "&>".to_owned();
                if b.get(*pos) == Some(&b'>') {
                    *pos += 1;
                    op.push('>');
                }
                seg.redirect_pending = Some(op);
            }
            b'&' | b'|' => {
                seg.finish(cx, depth)?;
                *pos += if next == Some(b'&') || next == Some(b'|') {
                    2
                } else {
                    1
                };
            }
            b'(' => {
                if seg.cur.is_some() {
                    return Err(
                        "`(` inside a word (a function definition or array?) is not supported"
                            .into(),
                    );
                }
                seg.finish(cx, depth)?;
                parens += 1;
                *pos += 1;
            }
            b')' => {
                seg.finish(cx, depth)?;
                *pos += 1;
                if parens > 0 {
                    parens -= 1;
                } else if in_sub {
                    return Ok(());
                } else {
                    return Err("unbalanced `)`".into());
                }
            }
            b'<' | b'>' => redirect(b, pos, &mut seg, depth, cx)?,
            b'#' if seg.cur.is_none() => {
                while *pos < b.len() && b[*pos] != b'\n' {
                    *pos += 1;
                }
            }
            b'\\' => match next {
                None => return Err("the command ends with a lone backslash".into()),
                Some(b'\n') => *pos += 2,
                Some(n) => {
                    let end = (*pos + 1 + utf8_len(n)).min(b.len());
                    seg.push(&b[*pos + 1..end]);
                    seg.mark_quoted();
                    *pos = end;
                }
            },
            b'\'' => {
                let start = *pos + 1;
                let len = b[start..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .ok_or("unbalanced single quote")?;
                seg.push(&b[start..start + len]);
                seg.mark_quoted();
                *pos = start + len + 1;
            }
            b'"' => double_quoted(b, pos, &mut seg, depth, cx)?,
            b'$' => dollar(b, pos, &mut seg, depth, cx, false)?,
            b'`' => backtick(b, pos, &mut seg, depth, cx)?,
            b'[' => {
                // A bracket expression `[...]` is one glob span; a lone `[` is a glob character.
                let close = b[*pos + 1..]
                    .iter()
                    .take_while(|&&c| {
                        !matches!(
                            c,
                            b' ' | b'\t'
                                | b'\n'
                                | b';'
                                | b'&'
                                | b'|'
                                | b'('
                                | b')'
                                | b'<'
                                | b'>'
                                | b'\''
                                | b'"'
                                | b'$'
                                | b'`'
                                | b'\\'
                        )
                    })
                    .position(|&c| c == b']');
                match close {
                    Some(n) if n > 0 => {
                        let end = *pos + 1 + n + 1;
                        seg.push_span(&b[*pos..end], SpanKind::Class);
                        *pos = end;
                    }
                    _ => {
                        seg.push_span(b"[", SpanKind::Glob);
                        *pos += 1;
                    }
                }
            }
            b'*' | b'?' => {
                seg.push_span(&[c], SpanKind::Glob);
                *pos += 1;
            }
            b'{' | b'}' => {
                seg.push_span(&[c], SpanKind::Brace);
                *pos += 1;
            }
            _ => {
                let start = *pos;
                *pos += 1;
                while *pos < b.len() && !is_special(b[*pos]) {
                    *pos += 1;
                }
                seg.push(&b[start..*pos]);
            }
        }
    }
    if in_sub {
        return Err("unbalanced `$(` or `<(`: the closing `)` is missing".into());
    }
    if parens > 0 {
        return Err("unbalanced `(`".into());
    }
    seg.finish(cx, depth)
}

fn redirect(
    b: &[u8],
    pos: &mut usize,
    seg: &mut Seg,
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    let c = b[*pos];
    let next = b.get(*pos + 1).copied();
    if next == Some(b'(') {
        // Process substitution <( … ) / >( … ): a command whose output/input is a file name.
        seg.end_word(cx)?;
        let start = *pos;
        *pos += 2;
        parse_seq(b, pos, true, depth + 1, cx)?;
        seg.push_span(&b[start..*pos], SpanKind::Subst);
        return Ok(());
    }
    let fd = seg.end_word_or_fd(cx)?;
    if seg.redirect_pending.is_some() {
        return Err("a redirection has no target".into());
    }
    let start = *pos;
    match (c, next) {
        (b'<', Some(b'<')) => {
            return Err(
                "here-documents and here-strings (`<<`, `<<<`) can't be checked; pass the data another way"
                    .into(),
            );
        }
        (b'<', Some(b'>' | b'&')) | (b'>', Some(b'>' | b'|' | b'&')) => *pos += 2,
        _ => *pos += 1,
    }
    let mut op = fd;
    op.push_str(&String::from_utf8_lossy(&b[start..*pos]));
    seg.redirect_pending = Some(op);
    Ok(())
}

fn double_quoted(
    b: &[u8],
    pos: &mut usize,
    seg: &mut Seg,
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    *pos += 1;
    seg.mark_quoted();
    loop {
        match b.get(*pos) {
            None => return Err("unbalanced double quote".into()),
            Some(b'"') => {
                *pos += 1;
                return Ok(());
            }
            Some(b'\\') => match b.get(*pos + 1) {
                Some(b'\n') => *pos += 2,
                Some(&n @ (b'$' | b'`' | b'"' | b'\\')) => {
                    seg.push(&[n]);
                    *pos += 2;
                }
                _ => {
                    seg.push(b"\\");
                    *pos += 1;
                }
            },
            Some(b'$') => dollar(b, pos, seg, depth, cx, true)?,
            Some(b'`') => backtick(b, pos, seg, depth, cx)?,
            Some(_) => {
                let start = *pos;
                *pos += 1;
                while *pos < b.len() && !matches!(b[*pos], b'"' | b'\\' | b'$' | b'`') {
                    *pos += 1;
                }
                seg.push(&b[start..*pos]);
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Index of the `}` closing a `${` whose contents start at `from`.
fn brace_end(b: &[u8], from: usize) -> Result<usize, String> {
    let mut depth = 1usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' && q == b'"' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err("unbalanced `${`".into())
}

fn dollar(
    b: &[u8],
    pos: &mut usize,
    seg: &mut Seg,
    depth: usize,
    cx: &mut Cx<'_, '_>,
    in_dq: bool,
) -> Result<(), String> {
    let start = *pos;
    match b.get(*pos + 1).copied() {
        Some(b'(') => {
            if b.get(*pos + 2) == Some(&b'(') {
                return Err("arithmetic expansion `$((…))` is not supported by the policy checker; compute the value first".into());
            }
            *pos += 2;
            parse_seq(b, pos, true, depth + 1, cx)?;
            seg.push_span(&b[start..*pos], SpanKind::Subst);
        }
        Some(b'{') => {
            let end = brace_end(b, *pos + 2)?;
            let inner = &b[*pos + 2..end];
            if contains(inner, b"$(")
                || inner.contains(&b'`')
                || contains(inner, b"<(")
                || contains(inner, b">(")
            {
                return Err("command substitution inside `${…}` is not supported".into());
            }
            *pos = end + 1;
            seg.push_span(&b[start..*pos], SpanKind::Var);
        }
        Some(b'\'') if !in_dq => {
            return Err(
                "ANSI-C quoting `$'…'` can spell any character in escapes; use plain quotes".into(),
            );
        }
        Some(b'"') if !in_dq => {
            *pos += 1;
            double_quoted(b, pos, seg, depth, cx)?;
        }
        Some(c) if c == b'_' || c.is_ascii_alphabetic() => {
            *pos += 2;
            while *pos < b.len() && (b[*pos] == b'_' || b[*pos].is_ascii_alphanumeric()) {
                *pos += 1;
            }
            seg.push_span(&b[start..*pos], SpanKind::Var);
        }
        Some(c) if c.is_ascii_digit() || b"@*#?$!-".contains(&c) => {
            *pos += 2;
            seg.push_span(&b[start..*pos], SpanKind::Var);
        }
        _ => {
            seg.push(b"$");
            *pos += 1;
        }
    }
    Ok(())
}

fn backtick(
    b: &[u8],
    pos: &mut usize,
    seg: &mut Seg,
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    let start = *pos;
    *pos += 1;
    let mut inner = Vec::new();
    loop {
        match b.get(*pos) {
            None => return Err("unbalanced backtick".into()),
            Some(b'`') => {
                *pos += 1;
                break;
            }
            Some(b'\\') if matches!(b.get(*pos + 1), Some(b'\\' | b'`' | b'$')) => {
                inner.push(b[*pos + 1]);
                *pos += 2;
            }
            Some(&c) => {
                inner.push(c);
                *pos += 1;
            }
        }
    }
    parse_into(&inner, depth + 1, cx)?;
    seg.push_span(&b[start..*pos], SpanKind::Subst);
    Ok(())
}

/// The spans of the word `w`, relative to its start.
fn word_spans(spans: &[Span], w: &Word) -> Vec<Span> {
    spans
        .iter()
        .filter(|s| s.start >= w.start && s.end <= w.end)
        .map(|s| Span {
            start: s.start - w.start,
            end: s.end - w.start,
            kind: s.kind,
        })
        .collect()
}

/// The bytes a glob bracket `[...]` can match (`None`: negated or too fancy: any).
fn class_bytes(class: &str) -> Option<Vec<u8>> {
    let inner = class.strip_prefix('[')?.strip_suffix(']')?;
    if inner.starts_with(['!', '^']) || inner.contains("[:") || !inner.is_ascii() {
        return None;
    }
    let b = inner.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if i + 2 < b.len() && b[i + 1] == b'-' {
            for c in b[i]..=b[i + 2] {
                out.push(c);
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A path in `text[from..]` (spans relative to `text`), resolved against `cwd` when relative
/// (only if `relative`). `None` when it is no path.
fn path_ref(
    text: &str,
    from: usize,
    spans: &[Span],
    dynamic: bool,
    cwd: &Cwd,
    relative: bool,
    always: bool,
) -> Option<PathRef> {
    let rest = &text[from..];
    let absolute = rest.starts_with('/');
    let tilde = rest.starts_with('~');
    if !absolute && !tilde {
        if !relative || rest.is_empty() {
            return None;
        }
        if matches!(cwd, Cwd::Unset) && !(always && dynamic) {
            return None;
        }
    }
    let spans: Vec<Span> = spans.iter().filter(|s| s.start >= from).copied().collect();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut i = from;
    if tilde {
        let end = rest.find('/').map_or(text.len(), |k| from + k);
        let user = &text[from + 1..end];
        if user == "root" {
            pieces.push(Piece::Lit("/root".into()));
        } else if user.is_empty() {
            pieces.push(Piece::Home);
        } else if user
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        {
            pieces.push(Piece::Lit(format!("/home/{user}")));
        } else {
            return None;
        }
        i = end;
    } else if !absolute {
        match cwd {
            Cwd::Known(c) if spans.is_empty() => {
                return Some(PathRef {
                    text: format!("{}/{rest}", c.trim_end_matches('/')),
                    pieces: None,
                    redirect: false,
                    arg: true,
                });
            }
            Cwd::Known(c) => pieces.push(Piece::Lit(format!("{}/", c.trim_end_matches('/')))),
            Cwd::Lost | Cwd::Unset => {
                if !spans.is_empty() && spans[0].start == from && spans[0].kind == SpanKind::Var {
                    // `$DIR/x` or `> "$F"`: the variable may hold an absolute path.
                } else {
                    pieces.push(Piece::Any);
                    pieces.push(Piece::Lit("/".into()));
                }
            }
        }
    }
    if spans.is_empty() && pieces.is_empty() {
        return Some(PathRef {
            text: rest.to_owned(),
            pieces: None,
            redirect: false,
            arg: true,
        });
    }
    for s in &spans {
        if s.start < i {
            continue;
        }
        if s.start > i {
            pieces.push(Piece::Lit(text[i..s.start].to_owned()));
        }
        match s.kind {
            SpanKind::Class => match class_bytes(&text[s.start..s.end]) {
                Some(bytes) => pieces.push(Piece::OneOf(bytes)),
                None => pieces.push(Piece::Segment),
            },
            SpanKind::Glob => pieces.push(Piece::Segment),
            _ => pieces.push(Piece::Any),
        }
        i = s.end;
    }
    if i < text.len() {
        pieces.push(Piece::Lit(text[i..].to_owned()));
    }
    // `..` after an unknown part can climb anywhere.
    if pieces
        .iter()
        .any(|p| matches!(p, Piece::Lit(l) if l.contains("/..") || l.starts_with("..")))
        && pieces.iter().any(|p| !matches!(p, Piece::Lit(_)))
    {
        pieces = vec![Piece::Any];
    }
    let pieces = simplify(pieces);
    Some(PathRef {
        text: rest.to_owned(),
        pieces: Some(pieces),
        redirect: false,
        arg: true,
    })
}

/// Merges adjacent literals (normalizing `//` and `/./`) and adjacent `Any`s.
fn simplify(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match (out.last_mut(), p) {
            (Some(Piece::Lit(a)), Piece::Lit(b)) => a.push_str(&b),
            (Some(Piece::Any), Piece::Any | Piece::Segment) => {}
            (_, p) => out.push(p),
        }
    }
    for p in &mut out {
        if let Piece::Lit(l) = p {
            while l.contains("//") {
                *l = l.replace("//", "/");
            }
            while l.contains("/./") {
                *l = l.replace("/./", "/");
            }
        }
    }
    out
}

/// The literal forms of a word holding unresolvable parts: form 0 collapses globs to `*`
/// and drops variables, form 1 drops every unknown part, form 2 makes every unknown part `*`,
/// forms 3+ pick a variable's value `/` and `/*`. Brace alternatives `{a,b}` are expanded
/// (alternative `alt`). A bracket becomes its first byte.
fn word_form(text: &str, spans: &[Span], form: usize, alt: usize) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut k = 0;
    while k < spans.len() {
        let s = spans[k];
        out.push_str(&text[i..s.start]);
        i = s.end;
        match s.kind {
            SpanKind::Glob => out.push_str(if form == 1 { "" } else { "*" }),
            SpanKind::Class => match class_bytes(&text[s.start..s.end]) {
                Some(b) if form != 2 && !b.is_empty() => out.push(b[0] as char),
                _ => out.push('*'),
            },
            SpanKind::Var | SpanKind::Subst => out.push_str(match form {
                0 | 1 => "",
                2 => "*",
                3 => "/",
                _ => "/*",
            }),
            SpanKind::Brace => {
                // `{a,b}`: the next brace span closes it.
                if &text[s.start..s.end] == "{"
                    && let Some(close) = spans[k + 1..]
                        .iter()
                        .position(|c| c.kind == SpanKind::Brace && &text[c.start..c.end] == "}")
                {
                    let c = spans[k + 1 + close];
                    let inner = &text[s.end..c.start];
                    let alts: Vec<&str> = inner.split(',').collect();
                    if alts.len() > 1 {
                        let a = alts[alt % alts.len()];
                        // Spans inside the braces (`{/*,}`) keep their meaning in the form.
                        let inner_spans: Vec<Span> = spans[k + 1..k + 1 + close]
                            .iter()
                            .map(|x| Span {
                                start: x.start - s.end,
                                end: x.end - s.end,
                                kind: x.kind,
                            })
                            .collect();
                        let offset = inner[..inner.len().min(
                            alts[..alt % alts.len()]
                                .iter()
                                .map(|x| x.len() + 1)
                                .sum::<usize>(),
                        )]
                            .len();
                        let local: Vec<Span> = inner_spans
                            .iter()
                            .filter(|x| x.start >= offset && x.end <= offset + a.len())
                            .map(|x| Span {
                                start: x.start - offset,
                                end: x.end - offset,
                                kind: x.kind,
                            })
                            .collect();
                        out.push_str(&word_form(a, &local, form, 0));
                        i = c.end;
                        k += close + 2;
                        continue;
                    }
                }
                out.push_str(&text[s.start..s.end]);
            }
        }
        k += 1;
    }
    out.push_str(&text[i..]);
    out
}

fn simple_command(
    text: String,
    words: &[Word],
    spans: &[Span],
    redirects: Vec<(String, String)>,
    paths_start: usize,
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    let w = |i: usize| &text[words[i].start..words[i].end];
    let mut i = 0;
    while i < words.len() {
        let t = w(i);
        if KEYWORDS.contains(&t) {
            i += 1;
            continue;
        }
        if STRUCTURES.contains(&t) {
            return Err(format!(
                "shell `{t}` constructs are not supported by the policy checker; run a script that the policy allows instead"
            ));
        }
        break;
    }
    if i == words.len() {
        return Ok(());
    }
    let mut j = i;
    while j < words.len() && is_assignment(w(j)) {
        j += 1;
    }
    let paths_from = paths_start.min(cx.out.paths.len());
    if cx.opt.collect_paths || cx.opt.structured {
        for (k, word) in words.iter().enumerate().skip(i) {
            let t = w(k);
            let ws = word_spans(spans, word);
            let relative = k > j && !t.starts_with('-') && !is_assignment(t);
            let from = path_start(t).unwrap_or(0);
            if let Some(p) = path_ref(t, from, &ws, word.dynamic, &cx.cwd, relative, false) {
                cx.out.paths.push(PathRef { arg: k > j, ..p });
            }
        }
    }
    if cx.opt.structured {
        let mut paths: Vec<String> = cx.out.paths[paths_from..]
            .iter()
            .map(|p| match &p.pieces {
                None => crate::input::normalize_path(&p.text).unwrap_or_else(|| p.text.clone()),
                Some(_) => p.text.clone(),
            })
            .collect();
        paths.dedup();
        cx.out.parsed.push(ParsedCommand {
            argv: (i..words.len()).map(|k| w(k).to_owned()).collect(),
            redirects,
            paths,
            via: cx.via(),
        });
    }
    let command = &text[words[i].start..];
    if j == words.len() {
        // Only assignments (`PATH=/tmp/x`): they change what later commands do, so they are
        // commands too and must pass allow lists.
        return cx.push_command(Cow::Owned(command.to_owned()));
    }
    let argv0 = w(j);
    if words[j].dynamic {
        return Err(format!(
            "the command name `{argv0}` comes from an expansion; write the command literally"
        ));
    }
    if words[j].glob && argv0 != "[" && argv0 != "[[" {
        return Err(format!(
            "the command name `{argv0}` contains glob or brace characters; write the command literally"
        ));
    }
    if !argv0.is_ascii() {
        return Err(format!(
            "the command name `{argv0}` contains non-ASCII characters (look-alike letters?)"
        ));
    }
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    let special = needs_expand(base, argv0, cx.opt.wrappers);
    let unresolved = cx.forms && words[j + 1..].iter().any(|x| x.dynamic || x.glob);
    if matches!(base, "cd" | "pushd" | "popd") {
        cx.cwd = next_cwd(&cx.cwd, base, &words[j + 1..], &text);
    }
    if j == i && !special && !unresolved {
        // The common case: no views to derive, so the buffer becomes the command.
        let start = words[i].start;
        let mut text = text;
        if start > 0 {
            text.drain(..start);
        }
        return cx.push_command(Cow::Owned(text));
    }
    cx.push_command(Cow::Owned(command.to_owned()))?;
    let origin = cx.origin;
    if j > i {
        cx.push_view(text[words[j].start..].to_owned(), origin)?;
    }
    let ws: Vec<&str> = (j..words.len()).map(w).collect();
    let dy: Vec<bool> = words[j..].iter().map(|x| x.dynamic).collect();
    if special {
        expand(&ws, &dy, 0, depth, cx)?;
    }
    if unresolved {
        forms(&text, &words[j..], spans, depth, cx)?;
    }
    Ok(())
}

/// The working directory after `cd`/`pushd`/`popd` with these argument words.
fn next_cwd(cwd: &Cwd, base: &str, args: &[Word], text: &str) -> Cwd {
    if base == "popd" {
        return Cwd::Lost;
    }
    let target = args
        .iter()
        .find(|a| !text[a.start..a.end].starts_with('-') || &text[a.start..a.end] == "-");
    let Some(a) = target else {
        return Cwd::Lost; // `cd` alone: the home directory
    };
    let t = &text[a.start..a.end];
    if a.dynamic || a.glob || t == "-" || t.starts_with('~') {
        return Cwd::Lost;
    }
    if t.starts_with('/') {
        return crate::input::normalize_path(t).map_or(Cwd::Lost, Cwd::Known);
    }
    match cwd {
        Cwd::Known(c) => {
            crate::input::normalize_path(&format!("{c}/{t}")).map_or(Cwd::Lost, Cwd::Known)
        }
        _ => Cwd::Lost,
    }
}

/// Class 4: the literal forms of a command whose arguments hold unresolvable expansions, as
/// deny views labelled with what was unresolvable.
fn forms(
    text: &str,
    words: &[Word],
    spans: &[Span],
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    let per_word: Vec<Vec<Span>> = words.iter().map(|x| word_spans(spans, x)).collect();
    let what = per_word
        .iter()
        .flatten()
        .map(|s| match s.kind {
            SpanKind::Glob | SpanKind::Class => "glob",
            SpanKind::Brace => "brace",
            SpanKind::Var => "variable",
            SpanKind::Subst => "command substitution",
        })
        .next()
        .unwrap_or("expansion");
    let has_brace = per_word.iter().flatten().any(|s| s.kind == SpanKind::Brace);
    let has_var = per_word
        .iter()
        .flatten()
        .any(|s| matches!(s.kind, SpanKind::Var | SpanKind::Subst));
    let nforms = if has_var { 5 } else { 3 };
    let nalts = if has_brace { 4 } else { 1 };
    let original: Vec<&str> = words.iter().map(|x| &text[x.start..x.end]).collect();
    let origin = cx.origin(&format!("unresolvable {what}"), true);
    let saved = (cx.origin, cx.forms);
    cx.origin = origin;
    cx.forms = false;
    let mut seen: Vec<Vec<String>> = Vec::new();
    'outer: for form in 0..nforms {
        for alt in 0..nalts {
            let argv: Vec<String> = words
                .iter()
                .zip(&per_word)
                .map(|(x, s)| {
                    let t = &text[x.start..x.end];
                    if s.is_empty() {
                        t.to_owned()
                    } else {
                        word_form(t, s, form, alt)
                    }
                })
                .collect();
            if argv.iter().map(String::as_str).eq(original.iter().copied()) || seen.contains(&argv)
            {
                continue;
            }
            let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
            let dy = vec![false; refs.len()];
            // A form is only a probe: one the splitter can't follow (`sh -c *`) adds nothing.
            let _ = argv_command(&refs, &dy, false, depth, cx);
            seen.push(argv);
            if seen.len() >= MAX_FORMS {
                break 'outer;
            }
        }
    }
    (cx.origin, cx.forms) = saved;
    Ok(())
}

/// A command given as argv (wrapped, or run by `find -exec`): pushed as a command (it must
/// pass allow lists too) or a deny-only view, then expanded like a parsed one.
fn argv_command(
    argv: &[&str],
    dynamic: &[bool],
    as_command: bool,
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    if argv.is_empty() {
        return Ok(());
    }
    let text = argv.join(" ");
    if cx.opt.structured {
        cx.out.parsed.push(ParsedCommand {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            via: cx.via(),
            ..ParsedCommand::default()
        });
    }
    if as_command {
        cx.push_command(Cow::Owned(text))?;
    } else {
        let o = cx.origin;
        cx.push_view(text, o)?;
    }
    if dynamic.first().copied().unwrap_or(false) {
        let a0 = argv[0];
        cx.opaque(
            argv.join(" "),
            format!("the wrapped command name `{a0}` comes from an expansion"),
        );
        return Ok(());
    }
    expand(argv, dynamic, 0, depth, cx)
}

fn is_built_at_run_time(s: &str) -> bool {
    s.contains("$(") || s.contains('`') || s.contains("<(")
}

/// Adds deny views of the simple command `ws` (argv) and parses command strings it executes.
fn expand(
    ws: &[&str],
    dy: &[bool],
    level: usize,
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    if level > 4 || ws.is_empty() {
        return Ok(());
    }
    let a0 = ws[0];
    let base = a0.rsplit('/').next().unwrap_or(a0);
    let joined = || ws.join(" ");
    if base.len() != a0.len() && !base.is_empty() {
        let mut v = String::with_capacity(a0.len());
        v.push_str(base);
        for w in &ws[1..] {
            v.push(' ');
            v.push_str(w);
        }
        let o = cx.origin;
        cx.push_view(v, o)?;
    }
    let dyn_at = |k: usize| dy.get(k).copied().unwrap_or(false);
    if let Some(wrapper) = cx.opt.wrappers.get(base) {
        let wrapper = wrapper.clone();
        let args = &ws[1..];
        let un = wrapper.unwrap(args);
        for s in &un.scripts {
            let (script, dynamic) = match *s {
                Script::Word(k) => match args.get(k) {
                    Some(t) => ((*t).to_owned(), dyn_at(k + 1)),
                    None => return Err(format!("`{base}` has a command option without a command")),
                },
                Script::Attached(k, at) => (args[k][at..].to_owned(), dyn_at(k + 1)),
            };
            if dynamic && is_built_at_run_time(&script) {
                cx.opaque(joined(), format!("runs a string built at run time: {base}"));
            } else {
                cx.script(&script, &format!("runs a string: {base}"), depth)?;
            }
        }
        let origin_label = format!("wrapper: {base}");
        match un.rest {
            Some(k) if wrapper.joins_rest => {
                let end = args[k..]
                    .iter()
                    .position(|t| matches!(*t, ":::" | "::::" | ":::+" | "::::+"))
                    .map_or(args.len(), |p| k + p);
                let mut script = args[k..end].join(" ");
                if let Some(first) = args.get(end + 1) {
                    // `parallel CMD ::: V…` runs `CMD V` for each value: check the first.
                    script.push(' ');
                    script.push_str(first);
                }
                if args[k..end]
                    .iter()
                    .enumerate()
                    .any(|(n, t)| dyn_at(k + n + 1) && is_built_at_run_time(t))
                {
                    cx.opaque(joined(), format!("runs a string built at run time: {base}"));
                } else {
                    cx.script(&script, &format!("runs a string: {base}"), depth)?;
                }
            }
            Some(k) => {
                let saved = cx.origin;
                cx.origin = cx.origin(&origin_label, false);
                let sub_dy: Vec<bool> = (k..args.len()).map(|n| dyn_at(n + 1)).collect();
                let r = argv_command(&args[k..], &sub_dy, false, depth, cx);
                cx.origin = saved;
                r?;
            }
            None if un.scripts.is_empty() && wrapper.reads_stdin => {
                cx.opaque(
                    joined(),
                    format!("reads a script from standard input: {base}"),
                );
            }
            None => {}
        }
        // Also every later plain word as a possible command start, in case an unknown option
        // took a value (`sudo --new-flag X rm -rf /`).
        let saved = cx.origin;
        cx.origin = cx.origin(&origin_label, false);
        let mut n = 0;
        for k in 1..ws.len() {
            let t = ws[k];
            if un.rest == Some(k - 1)
                || t.is_empty()
                || t.starts_with('-')
                || is_assignment(t)
                || t.bytes().all(|c| c.is_ascii_digit() || c == b'.')
            {
                continue;
            }
            let o = cx.origin;
            cx.push_view(ws[k..].join(" "), o)?;
            n += 1;
            if n == 4 {
                break;
            }
        }
        cx.origin = saved;
    } else if SHELLS.contains(&base) {
        shell(ws, dy, base, depth, cx)?;
    } else if base == "eval" && ws.len() > 1 {
        if ws[1..]
            .iter()
            .enumerate()
            .any(|(k, t)| dyn_at(k + 1) && is_built_at_run_time(t))
        {
            cx.opaque(joined(), "runs a string built at run time: eval".into());
        } else {
            cx.script(&ws[1..].join(" "), "runs a string: eval", depth)?;
        }
    } else if base == "trap" && ws.len() > 1 && !ws[1].starts_with('-') {
        cx.script(ws[1], "runs a string: trap", depth)?;
    } else if base == "find" {
        find(ws, dy, depth, cx)?;
    } else if base == "alias" {
        return Err(
            "`alias` can change what later commands run; it is not supported by the policy checker"
                .into(),
        );
    } else if matches!(base, "source" | ".") {
        cx.opaque(
            joined(),
            format!(
                "runs a script file: {base} {}",
                ws.get(1).copied().unwrap_or("")
            ),
        );
    } else if let Some(flags) = interpreter(base) {
        inline_code(ws, base, flags, cx);
    } else if AWKS.contains(&base) {
        awk(ws, base, cx);
    } else if base == "sed" {
        sed(ws, cx);
    }
    Ok(())
}

/// `sh [options] [-c SCRIPT | FILE | (stdin)]`.
fn shell(
    ws: &[&str],
    dy: &[bool],
    base: &str,
    depth: usize,
    cx: &mut Cx<'_, '_>,
) -> Result<(), String> {
    let mut k = 1;
    let mut has_c = false;
    let mut info_only = false;
    while k < ws.len() {
        let t = ws[k];
        if t == "--" || t == "-" {
            k += 1;
            break;
        }
        if let Some(long) = t.strip_prefix("--") {
            if let Some(cmd) = long.strip_prefix("command=") {
                // fish --command=SCRIPT
                let cmd = cmd.to_owned();
                return if dy.get(k).copied().unwrap_or(false) && is_built_at_run_time(&cmd) {
                    cx.opaque(
                        ws.join(" "),
                        format!("runs a string built at run time: {base} --command"),
                    );
                    Ok(())
                } else {
                    cx.script(&cmd, &format!("runs a string: {base} --command"), depth)
                };
            }
            if long == "command" {
                has_c = true;
            }
            info_only |= matches!(long, "version" | "help");
            k += if matches!(long, "rcfile" | "init-file") {
                2
            } else {
                1
            };
            continue;
        }
        if (t.starts_with('-') || t.starts_with('+')) && t.len() > 1 {
            if t.starts_with('-') && t[1..].contains('c') {
                has_c = true;
            }
            k += if t[1..].contains(['o', 'O']) { 2 } else { 1 };
            continue;
        }
        break;
    }
    let joined = ws.join(" ");
    if has_c {
        match ws.get(k) {
            Some(script) if dy.get(k).copied().unwrap_or(false) && is_built_at_run_time(script) => {
                cx.opaque(
                    joined,
                    format!("runs a string built at run time: {base} -c"),
                );
            }
            Some(script) => cx.script(script, &format!("runs a string: {base} -c"), depth)?,
            None => return Err(format!("`{base} -c` without a command string")),
        }
    } else if let Some(file) = ws.get(k) {
        cx.opaque(joined, format!("runs a script file: {base} {file}"));
    } else if !info_only {
        cx.opaque(
            joined,
            format!("reads a script from standard input or a redirection: {base}"),
        );
    }
    Ok(())
}

/// `find … -exec CMD… ;`: the command is argv (never re-joined and re-split); with `{}` it is
/// also checked with each starting point in its place.
fn find(ws: &[&str], dy: &[bool], depth: usize, cx: &mut Cx<'_, '_>) -> Result<(), String> {
    let roots: Vec<&str> = ws[1..]
        .iter()
        .take_while(|t| !t.starts_with('-') && !matches!(**t, "(" | "!"))
        .copied()
        .collect();
    let mut k = 1;
    while k < ws.len() {
        if let op @ ("-exec" | "-execdir" | "-ok" | "-okdir") = ws[k] {
            let end = ws[k + 1..]
                .iter()
                .position(|t| *t == ";" || *t == "+")
                .map_or(ws.len(), |p| k + 1 + p);
            let inner = &ws[k + 1..end];
            let inner_dy: Vec<bool> = (k + 1..end)
                .map(|n| dy.get(n).copied().unwrap_or(false))
                .collect();
            let saved = cx.origin;
            cx.origin = cx.origin(&format!("runs a command: find {op}"), false);
            let mut r = argv_command(inner, &inner_dy, true, depth + 1, cx);
            if r.is_ok() && inner.iter().any(|t| t.contains("{}")) {
                for root in roots.iter().take(8) {
                    let replaced: Vec<String> =
                        inner.iter().map(|t| t.replace("{}", root)).collect();
                    let refs: Vec<&str> = replaced.iter().map(String::as_str).collect();
                    r = argv_command(&refs, &inner_dy, false, depth + 1, cx);
                    if r.is_err() {
                        break;
                    }
                }
            }
            cx.origin = saved;
            r?;
            k = end;
        }
        k += 1;
    }
    Ok(())
}

/// `python3 -c CODE`, `perl -e CODE`, `node -e`, or an interpreter reading its program from
/// standard input.
fn inline_code(ws: &[&str], base: &str, flags: &[&str], cx: &mut Cx<'_, '_>) {
    let joined = ws.join(" ");
    let mut has_operand = false;
    let mut info_only = false;
    for t in &ws[1..] {
        let hit = flags.iter().any(|f| {
            *t == *f
                || (f.len() == 2
                    && t.len() > 1
                    && t.starts_with('-')
                    && !t.starts_with("--")
                    && t[1..].contains(&f[1..]))
                || (f.starts_with("--") && t.starts_with(&format!("{f}=")))
        });
        if hit {
            cx.opaque(joined, format!("inline interpreter: {base} {}", t));
            return;
        }
        info_only |= matches!(*t, "--version" | "-V" | "--help" | "-h" | "-v");
        if !t.starts_with('-') {
            has_operand = true;
            break;
        }
        if *t == "-" {
            break;
        }
    }
    if !has_operand && !info_only {
        cx.opaque(
            joined,
            format!("reads a program from standard input: {base}"),
        );
    }
}

/// awk: a program that runs commands (`system()`, pipes, `getline` from a command) or comes
/// from a file is code the checker can't see.
fn awk(ws: &[&str], base: &str, cx: &mut Cx<'_, '_>) {
    let mut k = 1;
    let mut program = None;
    while k < ws.len() {
        let t = ws[k];
        match t {
            "-f" | "--file" | "-i" | "--include" => {
                cx.opaque(ws.join(" "), format!("runs a program file: {base} {t}"));
                return;
            }
            "-e" | "--source" => {
                program = ws.get(k + 1).copied();
                break;
            }
            "-F" | "-v" | "--assign" | "--field-separator" => k += 2,
            "--" => {
                program = ws.get(k + 1).copied();
                break;
            }
            _ if t.starts_with("-f") && t.len() > 2 => {
                cx.opaque(ws.join(" "), format!("runs a program file: {base} {t}"));
                return;
            }
            _ if t.starts_with('-') && t.len() > 1 => k += 1,
            _ => {
                program = Some(t);
                break;
            }
        }
    }
    if let Some(p) = program
        && (p.contains("system") || p.contains('|') || p.contains("getline"))
    {
        cx.opaque(
            ws.join(" "),
            format!(
                "inline interpreter: {base} program runs commands (system(), pipes or getline)"
            ),
        );
    }
}

/// sed: the `e` command, the `e` flag of `s///`, or a script from a file.
fn sed(ws: &[&str], cx: &mut Cx<'_, '_>) {
    let mut scripts: Vec<&str> = Vec::new();
    let mut k = 1;
    let mut explicit = false;
    let mut first_operand = None;
    while k < ws.len() {
        let t = ws[k];
        if t == "-f" || t.starts_with("--file") || (t.starts_with("-f") && t.len() > 2) {
            cx.opaque(ws.join(" "), format!("runs a script file: sed {t}"));
            return;
        }
        if t == "-e" || t == "--expression" {
            if let Some(s) = ws.get(k + 1) {
                scripts.push(s);
            }
            explicit = true;
            k += 2;
            continue;
        }
        if let Some(s) = t.strip_prefix("--expression=") {
            scripts.push(s);
            explicit = true;
        } else if t == "-l" || t == "--line-length" {
            k += 1;
        } else if !t.starts_with('-') && first_operand.is_none() {
            first_operand = Some(t);
        }
        k += 1;
    }
    if !explicit && let Some(s) = first_operand {
        scripts.push(s);
    }
    if scripts.iter().any(|s| sed_runs_commands(s)) {
        cx.opaque(
            ws.join(" "),
            "inline interpreter: sed script runs commands (`e`)".into(),
        );
    }
}

fn sed_runs_commands(script: &str) -> bool {
    for part in script.split([';', '\n', '{', '}']) {
        let mut p = part.trim_start();
        // Strip an address: numbers, `$`, `/re/`, `,`, `!`, `~`, spaces.
        loop {
            let before = p.len();
            p = p.trim_start_matches(|c: char| {
                c.is_ascii_digit() || matches!(c, '$' | ',' | '!' | '~' | ' ' | '+')
            });
            if let Some(rest) = p.strip_prefix('/') {
                match rest.find('/') {
                    Some(e) => p = &rest[e + 1..],
                    None => return false,
                }
            }
            if p.len() == before {
                break;
            }
        }
        if p.starts_with('e') {
            return true;
        }
        if let Some(rest) = p.strip_prefix('s') {
            let Some(d) = rest.chars().next() else {
                continue;
            };
            let mut n = 0;
            let mut esc = false;
            let mut flags_at = None;
            for (idx, c) in rest.char_indices().skip(1) {
                if esc {
                    esc = false;
                    continue;
                }
                if c == '\\' {
                    esc = true;
                } else if c == d {
                    n += 1;
                    if n == 2 {
                        flags_at = Some(idx + c.len_utf8());
                        break;
                    }
                }
            }
            if let Some(f) = flags_at
                && rest[f..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .any(|c| c == 'e')
            {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn wrappers() -> &'static Wrappers {
        static W: std::sync::OnceLock<Wrappers> = std::sync::OnceLock::new();
        W.get_or_init(|| Wrappers::new(&[]).unwrap())
    }

    fn opts(collect_paths: bool) -> Options<'static> {
        Options {
            collect_paths,
            structured: false,
            wrappers: wrappers(),
            cwd: None,
        }
    }

    fn analyze(s: &str, collect_paths: bool) -> Result<Analysis<'_>, String> {
        super::analyze(s, &opts(collect_paths))
    }

    fn views(a: &Analysis<'_>) -> Vec<String> {
        a.deny_views.iter().map(|v| v.0.clone()).collect()
    }

    fn cmds(s: &str) -> Vec<Cow<'_, str>> {
        analyze(s, false).unwrap().commands
    }

    #[test]
    fn splits_and_normalizes() {
        assert_eq!(cmds("ls -la   /tmp"), ["ls -la /tmp"]);
        assert_eq!(
            cmds("a; b && c || d | e & f\ng"),
            ["a", "b", "c", "d", "e", "f", "g"]
        );
        assert_eq!(cmds("r'm' \"-rf\" \\/"), ["rm -rf /"]);
        assert_eq!(cmds("echo $(rm -rf /)"), ["rm -rf /", "echo $(rm -rf /)"]);
        assert_eq!(cmds("echo `id`"), ["id", "echo `id`"]);
        assert_eq!(
            cmds("diff <(ls a) >(cat)"),
            ["ls a", "cat", "diff <(ls a) >(cat)"]
        );
        assert_eq!(cmds("ls >/dev/null 2>&1"), ["ls"]);
        assert_eq!(cmds("if true; then ls; fi"), ["true", "ls"]);
        assert_eq!(cmds("{ ls; } ; (id)"), ["ls", "id"]);
        assert_eq!(cmds("ls # ; rm -rf /"), ["ls"]);
        assert_eq!(cmds("echo a#b"), ["echo a#b"]);
        assert_eq!(cmds("sh -c 'rm -rf /'"), ["sh -c rm -rf /", "rm -rf /"]);
        assert_eq!(cmds("X=1 Y=2 ls"), ["X=1 Y=2 ls"]);
        assert_eq!(cmds("echo \"a $(id) b\""), ["id", "echo a $(id) b"]);
        assert_eq!(cmds("[ -f x ] && echo y"), ["[ -f x ]", "echo y"]);
    }

    #[test]
    fn fast_path_agrees_with_the_parser() {
        for cmd in [
            "ls -la /srv",
            "tar czf /tmp/x.tgz --exclude=/srv/cache /srv",
            "echo héllo",
            "cat /etc/../etc//shadow",
        ] {
            let o = opts(true);
            let fast = fast_path(cmd, &o).unwrap();
            let mut slow = Analysis::default();
            parse_into(
                cmd.as_bytes(),
                0,
                &mut Cx {
                    out: &mut slow,
                    opt: &o,
                    origin: 0,
                    cwd: Cwd::Unset,
                    forms: true,
                },
            )
            .unwrap();
            assert_eq!(fast.commands, slow.commands, "{cmd}");
            assert_eq!(fast.deny_views, slow.deny_views, "{cmd}");
            let paths = |a: &Analysis| a.paths.iter().map(|p| p.text.clone()).collect::<Vec<_>>();
            assert_eq!(paths(&fast), paths(&slow), "{cmd}");
        }
        for cmd in [
            "sudo ls", "/bin/ls", "X=1 ls", "ls  -l", "ls;", "if x", "ls 'a'", " ls", "ls\tx",
        ] {
            assert!(fast_path(cmd, &opts(true)).is_none(), "{cmd}");
        }
    }

    #[test]
    fn views_for_deny_rules() {
        let a = analyze("sudo -u root /bin/rm -rf /", false).unwrap();
        assert!(
            views(&a).contains(&"rm -rf /".to_owned()),
            "{:?}",
            a.deny_views
        );
        let a = analyze("FOO=1 env BAR=2 nohup rm x", false).unwrap();
        assert!(views(&a).contains(&"rm x".to_owned()), "{:?}", a.deny_views);
        let a = analyze("find / -name x -exec rm -f {} \\;", false).unwrap();
        assert!(
            a.commands.contains(&Cow::Borrowed("rm -f {}")),
            "{:?}",
            a.commands
        );
    }

    #[test]
    fn paths_are_collected() {
        let a = analyze("cat /etc/../etc//shadow > /tmp/x 2>>$LOG --f=/a", true).unwrap();
        let p: Vec<_> = a
            .paths
            .iter()
            .map(|p| (p.text.as_str(), p.pieces.is_some(), p.redirect))
            .collect();
        assert_eq!(
            p,
            [
                ("/tmp/x", false, true),
                ("$LOG", true, true),
                ("/etc/../etc//shadow", false, false),
                ("/a", false, false)
            ]
        );
    }

    #[test]
    fn refuses_what_it_cannot_follow() {
        for bad in [
            "echo 'abc",
            "echo \"abc",
            "echo `id",
            "echo $(id",
            "echo )",
            "(ls",
            "cat <<EOF\nx\nEOF",
            "cat <<< x",
            "$'\\x72m' -rf /",
            "echo $((1+2))",
            "echo ${x:-$(id)}",
            "for f in *; do rm $f; done",
            "case x in x) rm;; esac",
            "f() { rm -rf /; }; f",
            "$CMD -rf /",
            "/???/r? -rf /",
            "{rm,-rf,/}",
            "alias ls='rm -rf /'",
            "ls >",
            "ls \\",
            "rm${IFS}-rf${IFS}/",
        ] {
            assert!(analyze(bad, false).is_err(), "{bad:?} should be refused");
        }
        let deep = "$(".repeat(20) + &")".repeat(20);
        assert!(analyze(&deep, false).is_err());
    }
}

/// Fuzz harness for the shell splitter: every command a caller sends goes through it. Besides
/// "never panics", a command that the splitter accepts must have no empty simple command
/// hiding text. `TETHER_FUZZ_CASES` sets the number of cases (`scripts/fuzz` for long runs).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("TETHER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn wrappers() -> &'static Wrappers {
        static W: std::sync::OnceLock<Wrappers> = std::sync::OnceLock::new();
        W.get_or_init(|| Wrappers::new(&[]).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Every combination of the splitter's options, so each code path sees the input.
    fn analyze(cmd: &str, collect_paths: bool) -> Result<Analysis<'_>, String> {
        let mut last = Err(String::new());
        for structured in [false, true] {
            for cwd in [None, Some("/srv")] {
                let opt = Options {
                    collect_paths,
                    structured,
                    wrappers: wrappers(),
                    cwd,
                };
                last = super::analyze(cmd, &opt);
            }
        }
        last
    }

    /// Shell-ish text: words, quotes, operators, substitutions, escapes and odd characters.
    fn shellish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-z/._-]{1,8}",
            Just(" ".to_string()),
            Just(";".to_string()),
            Just("&&".to_string()),
            Just("||".to_string()),
            Just("|".to_string()),
            Just("&".to_string()),
            Just("$(".to_string()),
            Just(")".to_string()),
            Just("`".to_string()),
            Just("'".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("${".to_string()),
            Just("}".to_string()),
            Just(">".to_string()),
            Just("<(".to_string()),
            Just("\n".to_string()),
            Just("sh -c ".to_string()),
            Just("find . -exec ".to_string()),
            Just("\\;".to_string()),
            Just("xargs ".to_string()),
            Just("#".to_string()),
            Just("=".to_string()),
            ".",
        ];
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn fuzz_shell_splitter_any_text(cmd in ".{0,400}") {
            let _ = analyze(&cmd, true);
            let _ = analyze(&cmd, false);
        }

        #[test]
        fn fuzz_shell_splitter_shellish(cmd in shellish()) {
            let _ = analyze(&cmd, true);
            if let Ok(a) = analyze(&cmd, false) {
                for c in &a.commands {
                    prop_assert!(c.len() <= cmd.len() * 4 + 64, "a piece cannot grow without bound");
                }
            }
        }
    }
}
