//! `prodigy checkpoints list|show|clean`: the original's spellings, on the jobs' state.

use crate::cli::commands::RepoArg;
use crate::cli::commands::jobs::{self, RmArgs, ShowArgs};
use crate::cli::{Ctx, Exit, UsageError};

/// The original's checkpoint commands: here a job's checkpoints are its state ref's
/// history; these are `prodigy jobs`, `jobs show` and `jobs rm` under the original's names.
#[derive(Debug, clap::Subcommand)]
pub enum CheckpointsCommand {
    /// The jobs and their newest checkpoints (`prodigy jobs`), or one job's checkpoints.
    #[command(alias = "ls")]
    List(ListArgs),
    /// One job and its checkpoints (`prodigy jobs show`).
    Show(ShowOne),
    /// Delete a job's state with the rest of it (`prodigy jobs rm`), or with --all every
    /// complete job's.
    Clean(CleanArgs),
}

/// `checkpoints list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this job's checkpoints.
    #[arg(long = "workflow-id", alias = "job-id", value_name = "JOB", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: Option<String>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `checkpoints show`.
#[derive(Debug, clap::Args)]
pub struct ShowOne {
    /// The job.
    #[arg(value_name = "JOB", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `checkpoints clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// The job.
    #[arg(long = "workflow-id", alias = "job-id", value_name = "JOB", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: Option<String>,
    /// Every complete job.
    #[arg(long, conflicts_with = "job")]
    pub all: bool,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Do not ask.
    #[arg(short = 'f', long = "force", alias = "yes")]
    pub yes: bool,
}

/// Runs a checkpoints subcommand.
pub fn exec(cmd: CheckpointsCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    match cmd {
        CheckpointsCommand::List(a) => match a.job {
            Some(job) => jobs::exec_show(
                ShowArgs {
                    job,
                    repo: a.repo,
                    json: a.json,
                    limit: 0,
                },
                ctx,
            ),
            None => jobs::exec(
                jobs::Args {
                    command: None,
                    repo: a.repo,
                    all_repos: false,
                    json: a.json,
                    sessions: false,
                },
                ctx,
            ),
        },
        CheckpointsCommand::Show(a) => jobs::exec_show(
            ShowArgs {
                job: a.job,
                repo: a.repo,
                json: a.json,
                limit: 0,
            },
            ctx,
        ),
        CheckpointsCommand::Clean(a) => match (a.job, a.all) {
            (Some(job), _) => jobs::exec_rm(
                RmArgs {
                    job,
                    repo: a.repo,
                    yes: a.yes,
                },
                ctx,
            ),
            (None, true) => remove_complete(ctx, &a.repo, a.yes, false),
            (None, false) => {
                Err(UsageError("name a job with --workflow-id, or give --all".into()).into())
            }
        },
    }
}

/// `jobs rm` of every complete job (only sessions when `sessions`), asked once.
pub fn remove_complete(
    ctx: &mut Ctx<'_>,
    repo: &RepoArg,
    yes: bool,
    sessions: bool,
) -> anyhow::Result<Exit> {
    let repo_name = repo.resolve(ctx)?;
    let states = crate::state::JobStateManager::new(ctx.refs(), &repo_name)?;
    let mut done = Vec::new();
    let jobs = states.list_readable(|job, e| {
        super::skipping_job(ctx, &repo_name, job, &crate::error_line(&e));
    })?;
    for (job, _, c) in jobs {
        if c.phase != crate::state::Phase::Complete {
            continue;
        }
        let spec = states.read_spec(&c.spec)?;
        let session = spec.workflow.get("map").is_none_or(|m| m.is_null());
        if sessions && !session {
            continue;
        }
        done.push(job);
    }
    if done.is_empty() {
        ctx.diag.note("nothing complete to remove");
        return Ok(Exit::Success);
    }
    if !yes {
        ctx.diag.note(&format!(
            "delete {} complete {} ({})? [y/N]",
            done.len(),
            if sessions { "sessions" } else { "jobs" },
            done.join(", ")
        ));
        let answer = ctx.read_line()?.unwrap_or_default();
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(UsageError("nothing deleted (answer y, or give -f)".into()).into());
        }
    }
    for job in done {
        jobs::exec_rm(
            RmArgs {
                job,
                repo: RepoArg {
                    repo: Some(repo_name.clone()),
                },
                yes: true,
            },
            ctx,
        )?;
    }
    Ok(Exit::Success)
}
