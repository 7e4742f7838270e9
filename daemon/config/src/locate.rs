//! Finds the line a dotted key path is written on, so problems can say "line 12".
//! Handles `[table]` / `[[array]]` headers, dotted keys and quoted key parts; good enough for
//! config files written by people (it never affects what the config means, only where errors point).

/// 1-based line of the byte offset `pos` in `text`.
pub(crate) fn line_of_offset(text: &str, pos: usize) -> usize {
    text.get(..pos.min(text.len()))
        .map_or(1, |head| head.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// 1-based line where `key` (dotted path) is assigned or its table is opened.
pub(crate) fn find_line(text: &str, key: &[String]) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let mut table: Vec<String> = Vec::new();
    let mut best: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let path: Vec<String> =
            if let Some(h) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                table = split_key(h);
                table.clone()
            } else if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = split_key(h);
                table.clone()
            } else if let Some((k, _)) = line.split_once('=') {
                let mut p = table.clone();
                p.extend(split_key(k));
                p
            } else {
                continue;
            };
        if path.as_slice() == key {
            return Some(i + 1);
        }
        // A prefix match (the key's table, or an inline table holding it) is a fallback.
        if key.starts_with(&path) && best.is_none_or(|_| true) {
            best = Some(i + 1);
        }
    }
    best
}

fn strip_comment(line: &str) -> &str {
    let mut in_str: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (in_str, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => in_str = Some(c),
            (Some(q), c) if c == q => in_str = None,
            _ => {}
        }
    }
    line
}

fn split_key(k: &str) -> Vec<String> {
    k.split('.')
        .map(|part| part.trim().trim_matches('"').trim_matches('\'').to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Vec<String> {
        s.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn finds_keys_in_tables_and_dotted_forms() {
        let text = "role = \"hub\" # comment\n\n[control]\nsocket = \"/x\"\n[control.roles]\nadmin = [\"uid:0\"]\n";
        assert_eq!(find_line(text, &key("role")), Some(1));
        assert_eq!(find_line(text, &key("control.socket")), Some(4));
        assert_eq!(find_line(text, &key("control.roles.admin")), Some(6));
        assert_eq!(find_line(text, &key("control.roles")), Some(5));
        assert_eq!(
            find_line("control.socket = 1\n", &key("control.socket")),
            Some(1)
        );
        assert_eq!(find_line(text, &key("nope")), None);
        assert_eq!(line_of_offset("a\nb\nc", 4), 3);
    }
}
