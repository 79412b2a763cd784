//! `prodigy completions`: the shell's completion script. It asks the binary for each
//! completion (clap_complete's dynamic completion), so job ids complete too.

use crate::cli::{Ctx, Exit, UsageError};

/// The variable through which the shell asks the binary for completions.
pub const COMPLETE_ENV: &str = "PRODIGY_COMPLETE";

/// Print a completion script for SHELL to standard output: commands, options, and the jobs
/// of the repository you are in wherever a job is asked for.
///
/// For bash: `prodigy completions bash > ~/.local/share/bash-completion/completions/prodigy`
/// (or `source <(prodigy completions bash)` in ~/.bashrc).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    use clap_complete::env::EnvCompleter;
    let completer: &dyn EnvCompleter = match args.shell {
        clap_complete::Shell::Bash => &clap_complete::env::Bash,
        clap_complete::Shell::Elvish => &clap_complete::env::Elvish,
        clap_complete::Shell::Fish => &clap_complete::env::Fish,
        clap_complete::Shell::PowerShell => &clap_complete::env::Powershell,
        clap_complete::Shell::Zsh => &clap_complete::env::Zsh,
        other => return Err(UsageError(format!("no completion for {other}")).into()),
    };
    // The script calls this binary by the path it was run as (or `prodigy` on the PATH).
    let bin = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "prodigy".into());
    let mut script = Vec::new();
    completer.write_registration(COMPLETE_ENV, "prodigy", "prodigy", &bin, &mut script)?;
    ctx.out.write_all(&script)?;
    Ok(Exit::Success)
}
