//! `prodigy repo-name`: the repo name a path maps to.

use std::path::PathBuf;

use crate::cli::{Ctx, Exit};
use crate::repo;

/// Print the repo name that PATH (default: the current directory) maps to.
///
/// Every worktree of a repository maps to the basename of its main repository. The first
/// use records the repository's identity in the home (repos/<name>.json); a different
/// repository with the same basename then gets <name>-<8 hex>, and a repository that was
/// moved or renamed is recognised by its root commit and keeps its name.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The path (default: the current directory).
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let path = args.path.unwrap_or_else(|| PathBuf::from("."));
    let name = repo::resolve_repo_name(&ctx.home, &path)?;
    writeln!(ctx.out, "{name}")?;
    Ok(Exit::Success)
}
