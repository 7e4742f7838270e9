//! The one way the CLI prints tables: columns sized to their widest cell (header included), two
//! spaces apart, numbers right-aligned where asked, no trailing blanks. Every table-printing
//! command (`hosts list`, `vpn status`, `plugin list`, `secret list`, `audit tail`, ...) uses it,
//! so no content width can make columns run together.
//!
//! Headers are bold only when color is on: stdout is a terminal (or `CLICOLOR_FORCE` is set and
//! not `0`) and `NO_COLOR` is unset or empty (<https://no-color.org>; `NO_COLOR` always wins).

use std::io::IsTerminal;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers, sizes, durations: padded on the left.
    Right,
}

/// A table being filled row by row; [`Table::render`] sizes the columns when it is complete.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
    /// Widths already printed by [`Table::follow_line`], which only ever grow.
    followed: Vec<usize>,
}

impl Table {
    /// A table with these column headers, every column left-aligned.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            align: vec![Align::Left; headers.len()],
            rows: Vec::new(),
            followed: Vec::new(),
        }
    }

    /// Right-aligns the columns at these indexes.
    pub fn right(mut self, columns: &[usize]) -> Table {
        for &c in columns {
            if let Some(a) = self.align.get_mut(c) {
                *a = Align::Right;
            }
        }
        self
    }

    /// Adds a row; missing cells print empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut cells: Vec<String> = cells.into_iter().map(|c| single_line(c.into())).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// For a live stream (`audit tail -f`): one more row as a line, aligned with everything
    /// printed before it (the table's rows and earlier followed lines); a wider cell widens its
    /// column from here on. The row is not kept, so a long stream uses no memory.
    pub fn follow_line<I, S>(&mut self, cells: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if self.followed.is_empty() {
            self.followed = self.widths();
        }
        let mut cells: Vec<String> = cells.into_iter().map(|c| single_line(c.into())).collect();
        cells.resize(self.headers.len(), String::new());
        for (w, c) in self.followed.iter_mut().zip(&cells) {
            *w = (*w).max(width(c));
        }
        self.line(&cells, &self.followed)
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.headers.len())
            .map(|c| {
                std::iter::once(&self.headers[c])
                    .chain(self.rows.iter().map(|r| &r[c]))
                    .map(|s| width(s))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The table as lines of text (headers bold when `color`).
    pub fn render(&self, color: bool) -> String {
        let widths = self.widths();
        let mut out = String::new();
        let header = self.line(&self.headers, &widths);
        if color {
            out.push_str("\x1b[1m");
            out.push_str(&header);
            out.push_str("\x1b[0m");
        } else {
            out.push_str(&header);
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&self.line(r, &widths));
            out.push('\n');
        }
        out
    }

    /// Prints the table on stdout, colored as [`color_enabled`] says.
    pub fn print(&self) {
        print!("{}", self.render(color_enabled()));
    }

    fn line(&self, cells: &[String], widths: &[usize]) -> String {
        let last = cells.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(width(cell));
            match self.align[i] {
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
                Align::Left => {
                    line.push_str(cell);
                    if i != last {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            if i != last {
                line.push_str("  ");
            }
        }
        line.truncate(line.trim_end().len());
        line
    }
}

/// Display width of a cell: one column per character (the CLI prints no wide or combining
/// characters of its own; names are ASCII DNS labels).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// A cell is one line: control characters (newlines, tabs, escapes from daemon data) become
/// spaces, so they can't break the layout or smuggle terminal escapes.
fn single_line(s: String) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    } else {
        s
    }
}

/// Whether to print color: `NO_COLOR` (set and non-empty) turns it off; otherwise on when stdout
/// is a terminal or `CLICOLOR_FORCE` is set to something other than `0`.
pub fn color_enabled() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("NO_COLOR") {
        return false;
    }
    let forced = std::env::var_os("CLICOLOR_FORCE").is_some_and(|v| !v.is_empty() && v != "0");
    forced || std::io::stdout().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn columns_fit_the_widest_cell_of_any_length() {
        let mut t = Table::new(&["NAME", "CALLS", "ERRORS", "STATE"]).right(&[1, 2]);
        t.row(["a-very-long-plugin-name-indeed", "1234567890", "0", "ok"]);
        t.row(["p", "5", "98765432101", "QUARANTINED"]);
        let text = t.render(false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "NAME                                 CALLS       ERRORS  STATE",
                "a-very-long-plugin-name-indeed  1234567890            0  ok",
                "p                                        5  98765432101  QUARANTINED",
            ]
        );
    }

    #[test]
    fn cells_are_one_line_and_color_is_only_on_request() {
        let mut t = Table::new(&["A", "B"]);
        t.row(["x\ny", "\x1b[31mred"]);
        let plain = t.render(false);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        assert_eq!(plain.lines().count(), 2, "{plain:?}");
        assert!(t.render(true).starts_with("\x1b[1mA"));
    }

    #[test]
    fn followed_lines_line_up_with_the_table_and_widen_when_needed() {
        let mut t = Table::new(&["SEQ", "TYPE", "DATA"]).right(&[0]);
        t.row(["1", "daemon.start", "{}"]);
        assert_eq!(t.follow_line(["22", "x", "{}"]), " 22  x             {}");
        assert_eq!(
            t.follow_line(["3", "a.much.longer.type", "{}"]),
            "  3  a.much.longer.type  {}"
        );
        assert_eq!(
            t.follow_line(["4", "x", "{}"]),
            "  4  x                   {}"
        );
    }

    #[test]
    fn missing_cells_print_empty_without_trailing_blanks() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(["1"]);
        let text = t.render(false);
        assert_eq!(text, "A  B  C\n1\n");
    }
}
