//! `prodigy dlq …`: the dead-letter queues of a repository's jobs. One file per subcommand.

pub mod add;
pub mod analyze;
pub mod clear;
pub mod export;
pub mod inspect;
pub mod list;
pub mod purge;
pub mod retry;
pub mod stats;

use crate::cli::{Ctx, Exit, UsageError};
use crate::dlq::DeadLetterQueue;
use crate::store::refs::RefKind;

/// Dead-lettered items: the work items whose agents failed past their retries, with their
/// whole failure history.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Record a failure of an item (from a script; runners use the library).
    Add(add::Args),
    /// List dead-lettered items.
    List(list::Args),
    /// Show one item with its whole history and the job's events for it.
    Inspect(inspect::Args),
    /// Group failures into patterns by their normalised signature.
    Analyze(analyze::Args),
    /// Count items and failures, per job and across the repository.
    Stats(stats::Args),
    /// Export a job's items as JSON or CSV.
    Export(export::Args),
    /// Remove items whose last failure is older than a given age.
    Purge(purge::Args),
    /// Run items again through the job's agent template.
    Retry(retry::Args),
    /// Empty a job's queue (the original's spelling; asks first).
    Clear(clear::Args),
}

/// The job, given as an argument or, in the original's spellings, as `--job-id` (also
/// `--job`, `--workflow-id`).
#[derive(Debug, Clone, clap::Args)]
pub struct JobArg {
    /// The job.
    #[arg(value_name = "JOB", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: Option<String>,
    /// The job, as the original spells it.
    #[arg(
        long = "job-id",
        visible_alias = "job",
        alias = "workflow-id",
        value_name = "JOB",
        conflicts_with = "job",
        value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids()
    )]
    pub job_id: Option<String>,
}

impl JobArg {
    /// The job given, either way.
    pub fn get(&self) -> Option<String> {
        self.job.clone().or_else(|| self.job_id.clone())
    }
}

/// Runs a dlq subcommand.
pub fn exec(cmd: DlqCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    match cmd {
        DlqCommand::Add(args) => add::exec(args, ctx),
        DlqCommand::List(args) => list::exec(args, ctx),
        DlqCommand::Inspect(args) => inspect::exec(args, ctx),
        DlqCommand::Analyze(args) => analyze::exec(args, ctx),
        DlqCommand::Stats(args) => stats::exec(args, ctx),
        DlqCommand::Export(args) => export::exec(args, ctx),
        DlqCommand::Purge(args) => purge::exec(args, ctx),
        DlqCommand::Retry(args) => retry::exec(args, ctx),
        DlqCommand::Clear(args) => clear::exec(args, ctx),
    }
}

/// The jobs of `repo` whose queue holds items, sorted.
pub fn jobs_with_items(ctx: &Ctx<'_>, repo: &str) -> anyhow::Result<Vec<String>> {
    let refs = ctx.refs();
    let mut jobs = Vec::new();
    for (name, _) in refs.list(Some(&format!("{}/{repo}", RefKind::Dlq.as_str())))? {
        let queue = DeadLetterQueue::new(refs.clone(), repo, name.job())?;
        if !queue.snapshot()?.items.is_empty() {
            jobs.push(name.job().to_owned());
        }
    }
    Ok(jobs)
}

/// The job to use: the one given, else the only job of the repository holding items.
pub fn pick_job(ctx: &Ctx<'_>, repo: &str, job: Option<String>) -> anyhow::Result<String> {
    if let Some(job) = job {
        crate::names::validate("job id", &job)?;
        if !job_exists(ctx, repo, &job)? {
            return Err(crate::state::StateError::NoJob {
                repo: repo.to_owned(),
                job,
            }
            .into());
        }
        return Ok(job);
    }
    let jobs = jobs_with_items(ctx, repo)?;
    match jobs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(anyhow::anyhow!(
            "no job of repo {repo} has dead-lettered items"
        )),
        many => Err(UsageError(format!(
            "{} jobs of repo {repo} have dead-lettered items ({}); name one",
            many.len(),
            many.join(", ")
        ))
        .into()),
    }
}

/// True when `repo` has a job `job`: a queue, a state or an event log of it.
pub fn job_exists(ctx: &Ctx<'_>, repo: &str, job: &str) -> anyhow::Result<bool> {
    let refs = ctx.refs();
    for kind in [RefKind::Dlq, RefKind::State] {
        let name = crate::store::refs::RefName::new(kind, repo, job)?;
        if refs.read(&name)?.is_some() {
            return Ok(true);
        }
    }
    Ok(crate::events::EventLog::new(refs, repo, job)?.exists()?)
}

/// The job given (validated, and known to the repository, as [`pick_job`] wants it: a
/// name that is no job was a row of zeros and exit 0), or every job of `repo` whose queue
/// holds items.
pub fn job_or_all(ctx: &Ctx<'_>, repo: &str, job: Option<String>) -> anyhow::Result<Vec<String>> {
    match job {
        Some(job) => Ok(vec![pick_job(ctx, repo, Some(job))?]),
        None => jobs_with_items(ctx, repo),
    }
}

/// Opens the queue of `repo`/`job`.
pub fn queue(ctx: &Ctx<'_>, repo: &str, job: &str) -> anyhow::Result<DeadLetterQueue> {
    Ok(DeadLetterQueue::new(ctx.refs(), repo, job)?)
}
