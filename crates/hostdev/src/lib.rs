//! Placeholder: filled in as the modules land.

mod intent;
mod owner;
mod process;
pub mod registry;

pub use owner::{Owner, OwnerError};
