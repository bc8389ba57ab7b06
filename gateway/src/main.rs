//! The `gateway` binary: see `gateway --help` and SPEC.md.

use clap::Parser;

/// mimalloc instead of glibc's malloc: a proxied request allocates and frees dozens of small
/// blocks (header maps, buffers, futures), and mimalloc's per-thread free lists serve them
/// with less work (see bench/README.md for the measured difference).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::cli::main(gateway::cli::Cli::parse())
}
