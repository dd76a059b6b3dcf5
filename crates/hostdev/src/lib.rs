//! Placeholder: this crate's contents arrive with its issue (see the workspace README).
