//! `prodigy events …`: append to and read jobs' event logs. One file per subcommand.

pub mod append;
pub mod clean;
pub mod export;
pub mod follow;
pub mod ls;
pub mod search;
pub mod show;
pub mod stats;

use crate::cli::{Ctx, Exit};
use crate::events::{EventError, EventLog, EventRecord};

/// Append to and read jobs' event logs. Every worktree of a repository sees the same jobs;
/// --repo reaches another repository's.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Append JSON Lines of events to a job's log.
    Append(append::Args),
    /// List jobs with their event counts and time ranges.
    Ls(ls::Args),
    /// Show a job's events, oldest first.
    Show(show::Args),
    /// Count events by type, agent or job, with outcomes and durations.
    Stats(stats::Args),
    /// Search events with a regular expression.
    Search(search::Args),
    /// Print a job's events as they are appended, until interrupted.
    Follow(follow::Args),
    /// Export a job's events as JSON Lines, JSON, CSV or Markdown.
    Export(export::Args),
    /// Apply a retention policy: keep the newest events, archive or remove the rest.
    Clean(clean::Args),
}

/// Opens the log of `job`, failing when the job has no events.
pub fn open_existing(ctx: &Ctx<'_>, repo: &str, job: &str) -> anyhow::Result<EventLog> {
    let log = EventLog::new(ctx.refs(), repo, job)?;
    if !log.exists()? {
        return Err(EventError::NoSuchJob {
            repo: repo.to_owned(),
            job: job.to_owned(),
        }
        .into());
    }
    Ok(log)
}

/// The jobs with events in `repo` (or every repo); jobs whose log head cannot be read are
/// reported as warnings. Returns the jobs and whether any was skipped.
pub fn list_jobs_warning(
    ctx: &Ctx<'_>,
    repo: Option<&str>,
) -> anyhow::Result<(Vec<crate::events::JobEvents>, bool)> {
    let (jobs, errors) = crate::events::list_jobs(&ctx.refs(), repo)?;
    for e in &errors {
        ctx.diag.warning(&crate::error_line(e));
    }
    Ok((jobs, !errors.is_empty()))
}

/// Runs an events subcommand.
pub fn exec(cmd: EventsCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    match cmd {
        EventsCommand::Append(args) => append::exec(args, ctx),
        EventsCommand::Ls(args) => ls::exec(args, ctx),
        EventsCommand::Show(args) => show::exec(args, ctx),
        EventsCommand::Stats(args) => stats::exec(args, ctx),
        EventsCommand::Search(args) => search::exec(args, ctx),
        EventsCommand::Follow(args) => follow::exec(args, ctx),
        EventsCommand::Export(args) => export::exec(args, ctx),
        EventsCommand::Clean(args) => clean::exec(args, ctx),
    }
}

/// One record as a human-readable line: time, type, agent, item, the other fields.
pub fn human_line(r: &EventRecord) -> String {
    let mut details = Vec::new();
    if let Some(fields) = r.event.as_object() {
        for (k, v) in fields {
            if matches!(k.as_str(), "event_type" | "job_id" | "agent_id" | "item_id") {
                continue;
            }
            let shown = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            details.push(format!("{k}={}", ellipsis(&shown, 80)));
        }
    }
    format!(
        "{}  {:<22} {:<14} {:<10} {}",
        r.timestamp,
        r.event_type(),
        r.agent_id().unwrap_or("-"),
        r.item_id().unwrap_or("-"),
        details.join(" ")
    )
    .trim_end()
    .to_owned()
}

fn ellipsis(s: &str, n: usize) -> String {
    let s = s.replace(['\n', '\r', '\t'], " ");
    if s.chars().count() <= n {
        s
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
