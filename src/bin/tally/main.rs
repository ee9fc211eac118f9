//! The `tally` command line. The only place that reads the environment, installs signal
//! handlers, draws progress bars and chooses exit codes.
//!
//! `args` is the grammar (and the `--help` text), `commands` one function per subcommand,
//! `open` the config file and the store, `print` the terminal output, `bar` the progress bar
//! and `exit` the exit codes; this file parses, dispatches and exits.

mod args;
mod bar;
mod commands;
mod exit;
mod open;
mod print;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::commands::{billing, counters, demo, generate, ingest, keys, serve};

fn main() -> ExitCode {
    // `tally meter … | head` should stop quietly when the reader goes away, as Unix tools do,
    // not panic on the broken pipe (Rust ignores SIGPIPE by default).
    // SAFETY: restoring the default disposition of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(&cli.global.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tally: error: {e:#}");
            ExitCode::from(exit::for_error(&e))
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tally=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

/// Runs the subcommand; its exit code.
fn run(cli: Cli) -> anyhow::Result<u8> {
    let global = &cli.global;
    match cli.command {
        Command::Ingest(args) => ingest::run(global, args),
        Command::Init => counters::init(global),
        Command::Meter(args) => counters::meter(global, args),
        Command::Status { json } => counters::status(global, json),
        Command::Generate(args) => generate::logs(args),
        Command::GenerateCur(args) => generate::cur(args),
        Command::Reconcile(args) => billing::reconcile(global, args),
        Command::Sql(args) => billing::sql(args),
        Command::Invoice(args) => billing::invoice(global, args),
        Command::Schema { name } => billing::schema(&name),
        Command::Serve(args) => serve::serve(global, args),
        Command::Key(command) => keys::run(command),
        Command::Demo(args) => demo::run(global, &args),
    }
}
