//! `prodigy dlq retry`: run dead-lettered items again through the job's agent template.

use crate::cli::commands::{RepoArg, progress};
use crate::cli::{Ctx, Exit, UsageError};
use crate::dlq::ItemFilter;
use crate::runner::RetryOptions;

/// Run a job's dead-lettered items again through its agent template, each in a fresh
/// worktree. A success is merged into the job's worktree and leaves the queue; a failure
/// is added to the item's history. Refused while another process runs the job.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), value_name = "JOB")]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only items matching this expression (the language of `dlq list --filter`); a
    /// malformed expression is an error, never "all".
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Attempts per item in this retry.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_retries: u32,
    /// Agents at once (default: the workflow's map.max_parallel).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub parallel: Option<u32>,
    /// Print one JSON summary object on stdout ({job, succeeded, failed, exit_code}).
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let filter = args
        .filter
        .as_deref()
        .map(ItemFilter::parse)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    crate::names::validate("job id", &args.job)?;
    let repo = args.repo.resolve(ctx)?;
    let mut opts = progress::options_for(ctx, args.json)?;
    opts.max_parallel = args.parallel.map(|n| n as usize);
    let retry = RetryOptions {
        filter,
        max_retries: args.max_retries,
    };
    let outcome = crate::runner::retry_dlq(&ctx.home, &repo, &args.job, retry, opts)?;
    // Items failing again stay in the queue: exit 3, as a run that leaves items there.
    let exit = match outcome.failed.is_empty() {
        true => Exit::Success,
        false => Exit::Incomplete,
    };
    if args.json {
        let summary = serde_json::json!({
            "job": args.job,
            "succeeded": outcome.succeeded,
            "failed": outcome.failed,
            "exit_code": exit as i32,
        });
        writeln!(ctx.out, "{summary}")?;
        return Ok(exit);
    }
    for id in &outcome.succeeded {
        writeln!(ctx.out, "ok     {id}")?;
    }
    for id in &outcome.failed {
        writeln!(ctx.out, "failed {id}")?;
    }
    ctx.diag.note(&format!(
        "{} items retried: {} succeeded, {} failed again",
        outcome.succeeded.len() + outcome.failed.len(),
        outcome.succeeded.len(),
        outcome.failed.len()
    ));
    Ok(exit)
}
