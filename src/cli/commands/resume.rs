//! `prodigy resume`: finish an interrupted job from its checkpoint.

use crate::cli::commands::{RepoArg, progress};
use crate::cli::{Ctx, Exit, UsageError};
use crate::state::JobStateManager;
use crate::store::object::ObjectId;

/// Finish an interrupted job from its newest checkpoint.
///
/// Items already finished never run again; items that were running are run again in fresh
/// worktrees; a missing job worktree is recreated from its branch or the recorded base
/// commit; setup does not run again once it finished, and reduce runs once. Refused while
/// another process runs the job.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job id.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), value_name = "JOB")]
    pub job: String,
    /// Start from this checkpoint instead (an id, a unique prefix of ≥ 4 hex, or a version
    /// number from `prodigy jobs show`); items finished after it run again.
    #[arg(long, value_name = "CHECKPOINT")]
    pub from: Option<String>,
    /// Agents at once (overrides map.max_parallel).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_parallel: Option<u32>,
    /// Yes to every question: the workflow's merge: steps run; without them a complete
    /// job's result is merged into the branch it started on (when nothing there would be
    /// lost).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Print one JSON summary object on stdout and nothing but errors on stderr.
    #[arg(long)]
    pub json: bool,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    crate::names::validate("job id", &args.job)?;
    let repo = args.repo.resolve(ctx)?;
    let from = match &args.from {
        Some(text) => Some(checkpoint(ctx, &repo, &args.job, text)?),
        None => None,
    };
    let mut opts = progress::options_for(ctx, args.json)?;
    opts.max_parallel = args.max_parallel.map(|n| n as usize);
    opts.yes = args.yes;
    let outcome = crate::runner::resume(&ctx.home, &repo, &args.job, from, opts);
    progress::finish(ctx, outcome, args.json, args.yes)
}

/// A checkpoint of `job` named by version number, id or prefix.
fn checkpoint(ctx: &Ctx<'_>, repo: &str, job: &str, text: &str) -> anyhow::Result<ObjectId> {
    let states = JobStateManager::new(ctx.refs(), repo)?;
    let history = states.history(job)?;
    let found = if !text.is_empty() && text.len() < 10 && text.bytes().all(|b| b.is_ascii_digit()) {
        let version: u32 = text.parse()?;
        history
            .iter()
            .find(|(_, c)| c.version == version)
            .map(|(id, _)| *id)
    } else {
        let id = ctx.refs().objects().resolve(text).map_err(super::id_arg)?;
        history.iter().find(|(h, _)| *h == id).map(|(id, _)| *id)
    };
    found.ok_or_else(|| {
        UsageError(format!(
            "{text:?} is not a checkpoint of job {job} (see `prodigy jobs show {job}`)"
        ))
        .into()
    })
}
