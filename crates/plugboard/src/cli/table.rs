//! Plain text tables for people: left-aligned columns two spaces apart, no trailing spaces.
//!
//! One printer for every subcommand, so that all tables look alike. Widths count
//! characters, not bytes, so names with non-ASCII letters still line up. (A table crate
//! would add borders and padding we don't want for a few lines of code.)

use std::io::Write;

/// Writes `rows` (the first is usually the header) as left-aligned columns.
pub fn write_table(out: &mut (impl Write + ?Sized), rows: &[Vec<String>]) -> std::io::Result<()> {
    write_rows(out, rows, &widths(&rows.iter().collect::<Vec<_>>()))
}

/// Like [`write_table`], but a row of one cell is a heading: it stands alone and does not
/// widen the columns of the rows under it.
pub fn write_sections(
    out: &mut (impl Write + ?Sized),
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let aligned: Vec<&Vec<String>> = rows.iter().filter(|r| r.len() > 1).collect();
    write_rows(out, rows, &widths(&aligned))
}

/// The width of each column of `rows`, in characters.
fn widths(rows: &[&Vec<String>]) -> Vec<usize> {
    let columns = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| width(cell))
                .max()
                .unwrap_or(0)
        })
        .collect()
}

fn write_rows(
    out: &mut (impl Write + ?Sized),
    rows: &[Vec<String>],
    widths: &[usize],
) -> std::io::Result<()> {
    // One line buffer for all rows: a host listing can have tens of thousands.
    let mut line = String::new();
    for row in rows {
        line.clear();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(width(cell));
            pad_with_spaces(&mut line, pad + 2);
        }
        let end = line.trim_end().len();
        line.truncate(end);
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// Appends `n` spaces, a run at a time.
fn pad_with_spaces(line: &mut String, mut n: usize) {
    const SPACES: &str = "                                ";
    while n > 0 {
        let run = n.min(SPACES.len());
        line.push_str(&SPACES[..run]);
        n -= run;
    }
}

/// A cell's width in characters (its length when it is ASCII, as most cells are).
fn width(cell: &str) -> usize {
    if cell.is_ascii() {
        cell.len()
    } else {
        cell.chars().count()
    }
}

/// A header row: the column names as cells.
pub fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(rows: &[Vec<String>]) -> String {
        let mut out = Vec::new();
        write_table(&mut out, rows).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn columns_align_without_trailing_spaces() {
        let rows = [
            vec!["A".into(), "BB".into()],
            vec!["CCC".into(), "D".into()],
        ];
        assert_eq!(render(&rows), "A    BB\nCCC  D\n");
    }

    #[test]
    fn widths_count_characters_and_short_rows_are_fine() {
        let rows = [
            vec!["é".into(), "x".into()],
            vec!["ab".into(), "y".into()],
            vec!["c".into()],
        ];
        assert_eq!(render(&rows), "é   x\nab  y\nc\n");
    }

    #[test]
    fn headings_stand_alone_and_do_not_widen_columns() {
        let rows = [
            vec!["a long heading line".into()],
            vec!["  x".into(), "y".into()],
            vec!["  xyz".into(), "w".into()],
        ];
        let mut out = Vec::new();
        write_sections(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a long heading line\n  x    y\n  xyz  w\n"
        );
    }
}
