//! `prodigy completions`: shell completion scripts from the clap definitions.

use clap::CommandFactory;

use crate::cli::{Cli, Ctx, Exit};

/// Print a completion script for SHELL to standard output.
///
/// For bash: `prodigy completions bash > ~/.local/share/bash-completion/completions/prodigy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let mut cmd = Cli::command();
    // Generated into memory first: clap_complete panics on a write error, and a closed
    // pipe must exit quietly.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "prodigy", &mut script);
    ctx.out.write_all(&script)?;
    Ok(Exit::Success)
}
