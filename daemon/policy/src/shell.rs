//! A conservative splitter for POSIX `sh`/bash command lines.
//!
//! It does not run or expand anything. It finds every *simple command* a command line can run —
//! across `;`, `&&`, `||`, `|`, `|&`, `&`, newlines, `( … )`, `{ …; }`, `if/while` bodies, and
//! inside `$( … )`, backticks, `<( … )`/`>( … )`, `sh -c '…'`, `eval …`, `trap '…'` and
//! `find -exec … \;` — and normalizes each one: quotes and escapes removed, words joined by one
//! space, redirections taken out (their targets are reported as paths). Deny rules additionally
//! see a few *views* of each command: without leading `VAR=value` assignments, with the program's
//! directory stripped (`/bin/rm` → `rm`) and with wrapper programs stripped (`sudo`, `env`,
//! `nohup`, `timeout`, `xargs`…).
//!
//! Whatever it can't follow safely is an error (the caller denies it in enforce mode): unbalanced
//! quotes or brackets, here-documents, `$'…'` quoting, arithmetic expansion, command
//! substitution inside `${…}`, `for`/`case`/`select`/function definitions, `alias`, a command
//! name that comes from an expansion or contains glob/brace characters or non-ASCII letters,
//! and nesting deeper than [`MAX_DEPTH`].

use std::borrow::Cow;

/// Deepest nesting of substitutions / `sh -c` strings followed.
pub(crate) const MAX_DEPTH: usize = 8;
/// Most simple commands in one request.
const MAX_COMMANDS: usize = 512;
/// Most deny-only views in one request.
const MAX_VIEWS: usize = 1024;

/// Programs that run their arguments as a command; deny rules also see what follows them.
const WRAPPERS: &[&str] = &[
    "sudo",
    "doas",
    "su",
    "runuser",
    "env",
    "nohup",
    "nice",
    "ionice",
    "timeout",
    "command",
    "builtin",
    "exec",
    "time",
    "stdbuf",
    "setsid",
    "chrt",
    "taskset",
    "xargs",
    "unbuffer",
    "busybox",
    "strace",
    "ltrace",
    "chroot",
    "watch",
    "flock",
    "systemd-run",
    "script",
    "caffeinate",
    "torsocks",
    "proxychains",
    "firejail",
    "unshare",
    "nsenter",
    "ip",
    "sg",
    "newgrp",
    "parallel",
];
/// Shells whose `-c STRING` argument is parsed as a command line.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash", "fish", "rbash",
];
/// Reserved words stripped from the start of a simple command.
const KEYWORDS: &[&str] = &[
    "!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until",
];
/// Reserved words whose constructs are not followed.
const STRUCTURES: &[&str] = &["for", "case", "esac", "select", "function", "coproc", "in"];

/// What a command line can run, as seen by the splitter.
#[derive(Debug, Default)]
pub(crate) struct Analysis<'a> {
    /// Every simple command, normalized. Each must pass deny rules and allow lists.
    pub commands: Vec<Cow<'a, str>>,
    /// Extra views of commands, checked by deny rules only.
    pub deny_views: Vec<String>,
    /// Redirection targets and absolute-path arguments (only when asked for).
    pub paths: Vec<PathRef>,
}

/// A path-like word found in a command.
#[derive(Debug)]
pub(crate) struct PathRef {
    /// The word after quote removal.
    pub text: String,
    /// It contains an expansion (`$X`, `$(…)`), so its final value is unknown.
    pub dynamic: bool,
    /// It is a redirection target.
    pub redirect: bool,
}

/// Splits `cmd`. `collect_paths` asks for [`Analysis::paths`] (skipped when no path rule applies).
pub(crate) fn analyze(cmd: &str, collect_paths: bool) -> Result<Analysis<'_>, String> {
    if let Some(simple) = fast_path(cmd, collect_paths) {
        return Ok(simple);
    }
    let mut out = Analysis::default();
    let mut cx = Cx {
        out: &mut out,
        collect_paths,
    };
    parse_into(cmd.as_bytes(), 0, &mut cx)?;
    Ok(out)
}

/// The common case, without the general parser: one simple command of plain words separated by
/// single spaces (no quotes, no expansions, no operators), not starting with an assignment, a
/// keyword or a program that needs views. Returns `None` to take the general path.
fn fast_path(cmd: &str, collect_paths: bool) -> Option<Analysis<'_>> {
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
    if base.len() != argv0.len()
        || !argv0.is_ascii()
        || is_assignment(argv0)
        || KEYWORDS.contains(&argv0)
        || STRUCTURES.contains(&argv0)
        || WRAPPERS.contains(&base)
        || SHELLS.contains(&base)
        || matches!(base, "eval" | "trap" | "find" | "alias")
    {
        return None;
    }
    let mut out = Analysis {
        commands: vec![Cow::Borrowed(cmd)],
        ..Analysis::default()
    };
    if collect_paths {
        for t in cmd.split(' ') {
            let path = if t.starts_with('/') {
                Some(t)
            } else {
                t.find("=/").map(|p| &t[p + 1..])
            };
            if let Some(p) = path {
                out.paths.push(PathRef {
                    text: p.to_owned(),
                    dynamic: false,
                    redirect: false,
                });
            }
        }
    }
    Some(out)
}

struct Cx<'o> {
    out: &'o mut Analysis<'static>,
    collect_paths: bool,
}

impl Cx<'_> {
    fn push_view(&mut self, view: String) -> Result<(), String> {
        if self.out.deny_views.len() >= MAX_VIEWS {
            return Err("too many nested wrapper commands to check".into());
        }
        self.out.deny_views.push(view);
        Ok(())
    }
}

fn parse_into(b: &[u8], depth: usize, cx: &mut Cx<'_>) -> Result<(), String> {
    let mut pos = 0;
    parse_seq(b, &mut pos, false, depth, cx)
}

#[derive(Debug, Clone, Copy)]
struct Word {
    start: usize,
    end: usize,
    dynamic: bool,
    glob: bool,
}

#[derive(Default)]
struct Seg {
    text: Vec<u8>,
    words: Vec<Word>,
    cur: Option<Word>,
    quoted: bool,
    redirect_pending: bool,
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
        })
    }

    fn push(&mut self, bytes: &[u8]) {
        self.begin();
        self.text.extend_from_slice(bytes);
    }

    fn mark_dynamic(&mut self) {
        self.begin().dynamic = true;
    }

    fn mark_glob(&mut self) {
        self.begin().glob = true;
    }

    fn mark_quoted(&mut self) {
        self.begin();
        self.quoted = true;
    }

    fn cut_current(&mut self) -> Option<(Word, Vec<u8>)> {
        let w = self.cur.take()?;
        let bytes = self.text.split_off(w.start);
        if w.start > 0 {
            self.text.pop(); // the separating space
        }
        Some((w, bytes))
    }

    fn end_word(&mut self, cx: &mut Cx<'_>) -> Result<(), String> {
        if self.redirect_pending {
            if let Some((w, bytes)) = self.cut_current() {
                self.redirect_pending = false;
                if cx.collect_paths {
                    cx.out.paths.push(PathRef {
                        text: String::from_utf8(bytes).map_err(|_| "invalid UTF-8")?,
                        dynamic: w.dynamic,
                        redirect: true,
                    });
                }
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
    fn end_word_or_fd(&mut self, cx: &mut Cx<'_>) -> Result<(), String> {
        if let Some(w) = &self.cur
            && !self.redirect_pending
            && !self.quoted
            && !w.dynamic
            && self.text.len() > w.start
            && self.text[w.start..].iter().all(u8::is_ascii_digit)
        {
            self.cut_current();
            return Ok(());
        }
        self.end_word(cx)
    }

    fn finish(&mut self, cx: &mut Cx<'_>, depth: usize) -> Result<(), String> {
        self.end_word(cx)?;
        if self.redirect_pending {
            return Err("a redirection has no target".into());
        }
        if self.words.is_empty() {
            self.text.clear();
            return Ok(());
        }
        let text = String::from_utf8(std::mem::take(&mut self.text))
            .map_err(|_| "invalid UTF-8".to_owned())?;
        let result = simple_command(text, &self.words, depth, cx);
        self.words.clear();
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
    cx: &mut Cx<'_>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "substitutions or `sh -c` strings nested deeper than {MAX_DEPTH} levels"
        ));
    }
    let mut seg = Seg {
        text: Vec::with_capacity(b.len() - *pos),
        words: Vec::with_capacity(16),
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
                if seg.redirect_pending {
                    return Err("a redirection has no target".into());
                }
                *pos += 2;
                if b.get(*pos) == Some(&b'>') {
                    *pos += 1;
                }
                seg.redirect_pending = true;
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
            b'*' | b'?' | b'[' | b'{' | b'}' => {
                seg.push(&[c]);
                seg.mark_glob();
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
    cx: &mut Cx<'_>,
) -> Result<(), String> {
    let c = b[*pos];
    let next = b.get(*pos + 1).copied();
    if next == Some(b'(') {
        // Process substitution <( … ) / >( … ): a command whose output/input is a file name.
        seg.end_word(cx)?;
        let start = *pos;
        *pos += 2;
        parse_seq(b, pos, true, depth + 1, cx)?;
        seg.push(&b[start..*pos]);
        seg.mark_dynamic();
        return Ok(());
    }
    seg.end_word_or_fd(cx)?;
    if seg.redirect_pending {
        return Err("a redirection has no target".into());
    }
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
    seg.redirect_pending = true;
    Ok(())
}

fn double_quoted(
    b: &[u8],
    pos: &mut usize,
    seg: &mut Seg,
    depth: usize,
    cx: &mut Cx<'_>,
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
    cx: &mut Cx<'_>,
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
            seg.push(&b[start..*pos]);
            seg.mark_dynamic();
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
            seg.push(&b[start..*pos]);
            seg.mark_dynamic();
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
            seg.push(&b[start..*pos]);
            seg.mark_dynamic();
        }
        Some(c) if c.is_ascii_digit() || b"@*#?$!-".contains(&c) => {
            *pos += 2;
            seg.push(&b[start..*pos]);
            seg.mark_dynamic();
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
    cx: &mut Cx<'_>,
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
    seg.push(&b[start..*pos]);
    seg.mark_dynamic();
    Ok(())
}

fn is_assignment(t: &str) -> bool {
    match t.find('=') {
        Some(k) if k > 0 => {
            let name = &t.as_bytes()[..k];
            (name[0] == b'_' || name[0].is_ascii_alphabetic())
                && name.iter().all(|c| *c == b'_' || c.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

fn simple_command(
    text: String,
    words: &[Word],
    depth: usize,
    cx: &mut Cx<'_>,
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
    if cx.out.commands.len() >= MAX_COMMANDS {
        return Err(format!("more than {MAX_COMMANDS} commands in one request"));
    }
    if cx.collect_paths {
        for (k, word) in words.iter().enumerate().skip(i) {
            let t = w(k);
            let path = if t.starts_with('/') {
                Some(t)
            } else {
                t.find("=/").map(|p| &t[p + 1..])
            };
            if let Some(p) = path {
                cx.out.paths.push(PathRef {
                    text: p.to_owned(),
                    dynamic: word.dynamic,
                    redirect: false,
                });
            }
        }
    }
    let command = &text[words[i].start..];
    let mut j = i;
    while j < words.len() && is_assignment(w(j)) {
        j += 1;
    }
    if j == words.len() {
        // Only assignments (`PATH=/tmp/x`): they change what later commands do, so they are
        // commands too and must pass allow lists.
        cx.out.commands.push(Cow::Owned(command.to_owned()));
        return Ok(());
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
    let special = base.len() != argv0.len()
        || WRAPPERS.contains(&base)
        || SHELLS.contains(&base)
        || matches!(base, "eval" | "trap" | "find" | "alias");
    if j == i && !special {
        // The common case: no views to derive, so the buffer becomes the command.
        let start = words[i].start;
        let mut text = text;
        if start > 0 {
            text.drain(..start);
        }
        cx.out.commands.push(Cow::Owned(text));
        return Ok(());
    }
    cx.out.commands.push(Cow::Owned(command.to_owned()));
    if j > i {
        cx.push_view(text[words[j].start..].to_owned())?;
    }
    if special {
        let ws: Vec<&str> = (j..words.len()).map(w).collect();
        expand(&ws, 0, depth, cx)?;
    }
    Ok(())
}

/// Adds deny views of the simple command `ws` (argv) and parses command strings it executes.
fn expand(ws: &[&str], level: usize, depth: usize, cx: &mut Cx<'_>) -> Result<(), String> {
    if level > 4 || ws.is_empty() {
        return Ok(());
    }
    let a0 = ws[0];
    let base = a0.rsplit('/').next().unwrap_or(a0);
    if base.len() != a0.len() && !base.is_empty() {
        let mut v = String::with_capacity(a0.len());
        v.push_str(base);
        for w in &ws[1..] {
            v.push(' ');
            v.push_str(w);
        }
        cx.push_view(v)?;
    }
    if WRAPPERS.contains(&base) {
        let mut n = 0;
        for k in 1..ws.len() {
            let t = ws[k];
            if t.is_empty()
                || t.starts_with('-')
                || is_assignment(t)
                || t.bytes().all(|c| c.is_ascii_digit() || c == b'.')
            {
                continue;
            }
            cx.push_view(ws[k..].join(" "))?;
            expand(&ws[k..], level + 1, depth, cx)?;
            n += 1;
            if n == 4 {
                break;
            }
        }
    } else if SHELLS.contains(&base) {
        let c_opt = ws[1..]
            .iter()
            .position(|t| t.starts_with('-') && !t.starts_with("--") && t.contains('c'));
        if let Some(k) = c_opt
            && let Some(script) = ws.get(k + 2)
        {
            parse_into(script.as_bytes(), depth + 1, cx)?;
        }
    } else if base == "eval" && ws.len() > 1 {
        parse_into(ws[1..].join(" ").as_bytes(), depth + 1, cx)?;
    } else if base == "trap" && ws.len() > 1 && !ws[1].starts_with('-') {
        parse_into(ws[1].as_bytes(), depth + 1, cx)?;
    } else if base == "find" {
        // The starting points replace `{}` in deny views: `find / -exec rm -rf {} \;`.
        let roots: Vec<&str> = ws[1..]
            .iter()
            .take_while(|t| !t.starts_with('-') && !matches!(**t, "(" | "!"))
            .copied()
            .collect();
        let mut k = 1;
        while k < ws.len() {
            if matches!(ws[k], "-exec" | "-execdir" | "-ok" | "-okdir") {
                let end = ws[k + 1..]
                    .iter()
                    .position(|t| *t == ";" || *t == "+")
                    .map_or(ws.len(), |p| k + 1 + p);
                let inner = ws[k + 1..end].join(" ");
                parse_into(inner.as_bytes(), depth + 1, cx)?;
                if inner.contains("{}") {
                    for root in roots.iter().take(8) {
                        let mut views = Analysis::default();
                        let view = inner.replace("{}", root);
                        parse_into(
                            view.as_bytes(),
                            depth + 1,
                            &mut Cx {
                                out: &mut views,
                                collect_paths: false,
                            },
                        )?;
                        for v in views
                            .commands
                            .into_iter()
                            .map(Cow::into_owned)
                            .chain(views.deny_views)
                        {
                            cx.push_view(v)?;
                        }
                    }
                }
                k = end;
            }
            k += 1;
        }
    } else if base == "alias" {
        return Err(
            "`alias` can change what later commands run; it is not supported by the policy checker"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
            let fast = fast_path(cmd, true).unwrap();
            let mut slow = Analysis::default();
            parse_into(
                cmd.as_bytes(),
                0,
                &mut Cx {
                    out: &mut slow,
                    collect_paths: true,
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
            assert!(fast_path(cmd, true).is_none(), "{cmd}");
        }
    }

    #[test]
    fn views_for_deny_rules() {
        let a = analyze("sudo -u root /bin/rm -rf /", false).unwrap();
        assert!(
            a.deny_views.contains(&"rm -rf /".to_owned()),
            "{:?}",
            a.deny_views
        );
        let a = analyze("FOO=1 env BAR=2 nohup rm x", false).unwrap();
        assert!(
            a.deny_views.contains(&"rm x".to_owned()),
            "{:?}",
            a.deny_views
        );
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
            .map(|p| (p.text.as_str(), p.dynamic, p.redirect))
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
