//! Plain text tables for people: left-aligned columns two spaces apart, no trailing spaces.
//!
//! One printer for every subcommand, so that all tables look alike. Widths count
//! characters, not bytes, so names with non-ASCII letters still line up. (A table crate
//! would add borders and padding we don't want for a few lines of code.)

use std::io::Write;

/// Writes `rows` (the first is usually the header) as left-aligned columns.
pub fn write_table(out: &mut (impl Write + ?Sized), rows: &[Vec<String>]) -> std::io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(cell);
            let pad = width - cell.chars().count();
            line.extend(std::iter::repeat_n(' ', pad + 2));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
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
}
