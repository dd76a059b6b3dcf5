//! `plugboard`: the operator's CLI and the host daemon.
//!
//! This binary is thin glue. It parses arguments, builds the library crates' objects from
//! the global options, formats their results as tables or JSON, and prints an error chain.
//! Every rule of behaviour lives in a library crate.

mod cli;
mod client;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.global.verbose);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            cli::print_error_chain(&err);
            ExitCode::FAILURE
        }
    }
}

/// `plugboard host ls | head` closes stdout early; that is success, not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
