//! The `babelflow` command line: parses arguments, hands each command to
//! `cli::*`, and turns errors into messages and exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// Keeps freed tensor-sized blocks for reuse instead of returning them to
/// the kernel each training step (see `babelflow_model::block_cache`).
#[global_allocator]
static ALLOCATOR: babelflow_model::BlockCache = babelflow_model::BlockCache::new();

fn main() -> ExitCode {
    babelflow_stage::memory::on_release(|| ALLOCATOR.release());
    let args = cli::Cli::parse();
    let level = match args.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    // Colour only for a terminal: escape codes in a log file or a CI
    // transcript are noise.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour)
        .init();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}`: the error and each cause, on one line, as text.
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
