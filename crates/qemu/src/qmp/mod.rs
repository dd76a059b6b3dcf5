//! QMP, QEMU's JSON monitor protocol: the wire format, the event queue and the client.

mod client;
mod events;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
mod wire;

pub use client::{AddedFd, DEFAULT_TIMEOUT, QmpClient, QmpError};
pub use events::{Event, EventQueue};
pub use wire::{
    Greeting, Incoming, LineBuffer, QemuVersion, QmpFailure, WireError, encode_command, parse_line,
};
