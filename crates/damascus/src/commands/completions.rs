//! `damascus completions SHELL`: the shell's completion script, from the clap command
//! tree itself, so it names every subcommand and flag this binary has.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::Args;

pub fn print(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    clap_complete::generate(
        shell,
        &mut Args::command(),
        "damascus",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}
