//! `prodigy sessions ls|show|clean`: the original's spellings for sessions (sequential
//! workflows), which here are jobs of their own kind.

use crate::cli::commands::RepoArg;
use crate::cli::commands::jobs::{self, ShowArgs};
use crate::cli::{Ctx, Exit};

/// The original's session commands: `prodigy jobs --sessions`, `jobs show`, and the
/// removal of complete sessions (`jobs rm`).
#[derive(Debug, clap::Subcommand)]
pub enum SessionsCommand {
    /// List the sessions (`prodigy jobs --sessions`).
    #[command(alias = "list")]
    Ls(LsArgs),
    /// One session (`prodigy jobs show`).
    Show(ShowOne),
    /// Delete complete sessions (their state, events and worktrees; their branches stay).
    Clean(CleanArgs),
}

/// `sessions ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `sessions show`.
#[derive(Debug, clap::Args)]
pub struct ShowOne {
    /// The session.
    #[arg(value_name = "SESSION", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub session: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `sessions clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Do not ask.
    #[arg(short = 'f', long = "force", alias = "yes")]
    pub yes: bool,
}

/// Runs a sessions subcommand.
pub fn exec(cmd: SessionsCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    match cmd {
        SessionsCommand::Ls(a) => jobs::exec(
            jobs::Args {
                command: None,
                repo: a.repo,
                all_repos: false,
                json: a.json,
                sessions: true,
            },
            ctx,
        ),
        SessionsCommand::Show(a) => jobs::exec_show(
            ShowArgs {
                job: a.session,
                repo: a.repo,
                json: a.json,
                limit: 10,
            },
            ctx,
        ),
        SessionsCommand::Clean(a) => {
            crate::cli::commands::checkpoints::remove_complete(ctx, &a.repo, a.yes, true)
        }
    }
}
