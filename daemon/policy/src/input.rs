//! Character screening and lexical path normalization.

/// Rejects text that could hide or disguise what it says: NUL and control characters (tab and
/// newline excepted), invisible and bidirectional formatting characters, unusual spaces, and
/// Unicode look-alikes of shell punctuation (fullwidth forms, dashes, quotes, slashes...).
/// Returns the reason for the first offending character.
pub(crate) fn screen_chars(text: &str) -> Result<(), String> {
    if plain_ascii(text.as_bytes()) {
        return Ok(());
    }
    for (i, ch) in text.char_indices() {
        if ch == '\0' {
            return Err(format!("NUL byte at byte {i}"));
        }
        if ch == '\t' || ch == '\n' {
            continue;
        }
        if ch.is_control() {
            return Err(format!(
                "control character U+{:04X} at byte {i} (could hide or rewrite what is shown)",
                ch as u32
            ));
        }
        if suspicious(ch) {
            return Err(format!(
                "character U+{:04X} at byte {i} is invisible, reorders text or looks like ASCII punctuation; type it in plain ASCII",
                ch as u32
            ));
        }
    }
    Ok(())
}

/// Fast path: only printable ASCII, tab and newline. Branch-free per chunk so it vectorizes.
fn plain_ascii(bytes: &[u8]) -> bool {
    for chunk in bytes.chunks(64) {
        let mut bad = false;
        for &c in chunk {
            bad |= (c < 0x20) & (c != b'\t') & (c != b'\n') | (c >= 0x7f);
        }
        if bad {
            return false;
        }
    }
    true
}

fn suspicious(ch: char) -> bool {
    matches!(ch as u32,
        0x00A0 | 0x00AD | 0x01C0 | 0x01C3 | 0x02B9..=0x02DF | 0x034F | 0x037E | 0x061C
        | 0x115F | 0x1160 | 0x1680 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x2000..=0x201F   // spaces, zero-width, LRM/RLM, dashes, quotes
        | 0x2024 | 0x2028..=0x202F  // one-dot leader, line/para separators, bidi embeddings
        | 0x2032..=0x203A | 0x2044 | 0x205F..=0x206F // primes, fraction slash, invisible operators, isolates
        | 0x2212 | 0x2215 | 0x2216 | 0x2223 | 0x2236 | 0x2E3A | 0x2E3B | 0x29F8 | 0x29F9
        | 0x3000 | 0x3164 | 0xFE00..=0xFE0F | 0xFE50..=0xFE6F | 0xFEFF | 0xFF00..=0xFFEF | 0xFFF0..=0xFFFF
        | 0xE000..=0xF8FF | 0x1D400..=0x1D7FF | 0xE0000..=0xE01EF | 0xF0000..=0x10FFFF)
}

/// Lexically normalizes an absolute path: collapses `//`, drops `.`, resolves `..` (never above
/// `/`) and a trailing slash. Symlinks are not resolved here: the target resolves them before
/// its own check. Returns `None` for a relative path.
pub(crate) fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Whether normalized `path` is `root` or below it (`root` is normalized too).
pub(crate) fn under_root(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_lexically() {
        for (input, want) in [
            ("/etc/../etc//shadow", Some("/etc/shadow")),
            ("/etc/./shadow/", Some("/etc/shadow")),
            ("/../../etc/shadow", Some("/etc/shadow")),
            ("//", Some("/")),
            ("/a/b/../../..", Some("/")),
            ("etc/shadow", None),
            ("", None),
        ] {
            assert_eq!(normalize_path(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn roots_are_directory_prefixes() {
        assert!(under_root("/srv/app/x", "/srv/app"));
        assert!(under_root("/srv/app", "/srv/app"));
        assert!(!under_root("/srv/application", "/srv/app"));
        assert!(under_root("/anything", "/"));
    }

    #[test]
    fn screens_characters() {
        assert!(screen_chars("ls -la /tmp\n\tdf").is_ok());
        assert!(screen_chars("echo héllo wörld ключ").is_ok());
        for bad in [
            "ls\0",
            "ls\r",
            "ls\x1b[2J",
            "rm\u{200B}",
            "a\u{202E}b",
            "ls\u{FF1B}rm",
            "a\u{00A0}b",
            "x\u{2044}y",
            "\u{FEFF}ls",
        ] {
            assert!(screen_chars(bad).is_err(), "{bad:?}");
        }
    }
}
