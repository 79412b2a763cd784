//! `prodigy dlq clear`: the original's spelling; empties a job's queue (asked first).

use std::time::Duration;

use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};

/// Empty a job's dead-letter queue, asking first unless --yes: the original's `dlq clear`.
/// (The original removed items already reprocessed; here a retried item leaves the queue
/// when it succeeds, so what is left are failures, and clearing removes them all. The
/// removals stay in the queue's history.) The same as `dlq purge --older-than 0s --job
/// JOB`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub job: super::JobArg,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Do not ask.
    #[arg(short = 'y', long, alias = "force")]
    pub yes: bool,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let job = super::pick_job(ctx, &repo, args.job.get())?;
    super::purge::exec(
        super::purge::Args {
            older_than: Duration::ZERO,
            job: Some(job),
            repo: RepoArg { repo: Some(repo) },
            yes: args.yes,
            dry_run: args.dry_run,
        },
        ctx,
    )
}
