//! The `gateway` binary: see `gateway --help` and SPEC.md.

use clap::Parser;

fn main() -> std::process::ExitCode {
    gateway::cli::main(gateway::cli::Cli::parse())
}
