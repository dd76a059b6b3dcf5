//! Entry points for the fuzz targets under `fuzz/` (the `fuzzing` feature): the parsers of
//! outside input that are private to this crate, exposed unchanged. Not a stable API.

use std::path::Path;

/// Splits one line of `/proc/net/unix` into its seven fields and the bound path, as the
/// vhost-user backend check does (`None` for a line with fewer than eight words).
#[must_use]
pub fn split_proc_net_unix_line(line: &str) -> Option<([&str; 7], &str)> {
    crate::backend_socket::split_unix_line(line)
}

/// Whether the text of `/proc/net/unix` has a listening stream socket bound to `path`, as
/// [`check_listening`](crate::check_listening) decides it once the path is a socket.
#[must_use]
pub fn proc_net_unix_has_listener(table: &str, path: &Path) -> bool {
    crate::backend_socket::listening_in_table(table, path)
}
