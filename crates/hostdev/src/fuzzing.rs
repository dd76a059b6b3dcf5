//! Entry points for the fuzz targets under `fuzz/` (the `fuzzing` feature): the registry's
//! row decoding and encoding, which the crate otherwise runs only on rows read from or
//! written to SQLite. Not a stable API.
//!
//! Decoding a row is [`RawRow::into_row`], [`RawIntent::into_intent`] and
//! [`RawClaim::into_claim`]; encoding is their `from_*` counterpart. A value that does not
//! decode is an [`Invalid`], which the registry turns into `RegistryError::Invalid` naming
//! the database file.

pub use crate::registry::raw::{Invalid, RawClaim, RawIntent, RawRow};
