//! `prodigy run`: run a MapReduce workflow as a new job.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::commands::progress;
use crate::cli::{Ctx, Exit};

/// Run a MapReduce workflow (the shell subset of the original tool's YAML) as a new job of
/// the repository holding PATH.
///
/// Setup runs in the job's own git worktree (under the store's worktrees/<repo>/<job>/), one
/// agent per work item runs in a worktree of its own, the agents' commits are merged into
/// the job's worktree, and reduce runs there. Events, failures (the dead-letter queue) and
/// a checkpoint after every finished item go to the store, so `prodigy resume JOB` finishes
/// an interrupted job. Prints the job id.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workflow file.
    #[arg(value_name = "WORKFLOW")]
    pub workflow: PathBuf,
    /// A directory inside the repository to work on (default: the current directory).
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// The job id (default: mr-<date>-<time>-<random>).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// Agents at once (overrides map.max_parallel).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_parallel: Option<u32>,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let dir = match &args.path {
        Some(p) => p.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let mut opts = progress::options(ctx)?;
    opts.job_id = args.job_id;
    opts.max_parallel = args.max_parallel.map(|n| n as usize);
    let outcome = crate::runner::run(&ctx.home, &args.workflow, &dir, opts);
    progress::finish(ctx, outcome)
}
