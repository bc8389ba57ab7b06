//! `cargo run -- <command>` from the repository root: the same CLI as the `gateway` binary of the
//! `gateway/` crate, so `cargo run --release -- demo` works without `-p`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    gateway::cli::main(gateway::cli::Cli::parse())
}
