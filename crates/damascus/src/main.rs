//! The `damascus` command: parses the command line, turns it into plain settings, calls
//! the library crates, prints results, and maps failures to exit codes.
//!
//! Architecture invariant: clap types stay in this crate; no SQL, HTTP or git here.

mod cli;
mod commands;
mod config_file;
mod settings;
mod table;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Not dumpable: a process of the same user (an agent, a test command) cannot read
    // this process's environment or memory through /proc or ptrace. Root keeps the
    // power to (see docs/OPERATIONS.md, "Spend and safety").
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("warning: cannot make this process non-dumpable ({e}); agents of the same user may read its environment");
    }
    config_file::forget_empty_settings();
    if let Err(err) = config_file::load_before_parsing() {
        eprintln!("error: {err:#}");
        return ExitCode::from(2);
    }
    let args = cli::Args::parse();
    settings::init_logging(args.verbose);
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: cli::Args) -> anyhow::Result<ExitCode> {
    // Completions need no database, data directory or runtime (a shell's startup
    // file may run this where none of them exists).
    if let cli::Command::Completions { shell } = args.command {
        return commands::completions::print(shell);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Nor does the list of agents.
    if let cli::Command::Agents { json } = args.command {
        runtime.block_on(commands::agents::list(json))?;
        return Ok(ExitCode::SUCCESS);
    }
    let target = settings::database_target(&args.database)?;
    let data_dir = settings::data_dir(&args.database)?;
    runtime.block_on(commands::dispatch(
        args.command,
        target,
        data_dir,
        args.config,
    ))
}
