//! One renderer per command: each turns the command's typed answer into the table people
//! read; `--json` prints the answer itself. The answer is the same value whether the core
//! ran here or in the daemon, so the output is too.
//!
//! Renderers write to the writer they are given (stdout in the binary), and warnings to
//! stderr. They decide nothing: what a row says comes from the answer's own words
//! (`Display` of its enums), never from a Rust `Debug` string.

pub mod host;
pub mod hostdev;
pub mod vfio;
pub mod vm;

use std::io::Write;

use serde::Serialize;

/// Prints `answer` on stdout: as pretty JSON when `json`, else through `table`.
pub fn emit<T: Serialize>(
    json: bool,
    answer: &T,
    table: impl FnOnce(&T, &mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    emit_to(&mut out, json, answer, table)?;
    out.flush()?;
    Ok(())
}

/// [`emit`] to any writer.
pub fn emit_to<T: Serialize>(
    out: &mut dyn Write,
    json: bool,
    answer: &T,
    table: impl FnOnce(&T, &mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, answer)?;
        writeln!(out)?;
    } else {
        table(answer, out)?;
    }
    Ok(())
}

/// `-` for nothing.
pub(crate) fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}
