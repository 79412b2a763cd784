//! `prodigy dlq purge`: remove old items.

use std::time::Duration;

use super::{job_or_all, queue};
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::events::record::format_timestamp;

/// Remove dead-lettered items whose last failure is older than --older-than, from JOB or
/// from every job of the repository. Asks before removing anything unless --yes;
/// --dry-run lists what would go and removes nothing. The removals are recorded in each
/// queue's history (the ref's reflog and snapshot chain).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove items whose last failure is older than this (30d, 12h, 90m).
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// Only this job.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), long, alias = "job-id", value_name = "JOB")]
    pub job: Option<String>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let jobs = job_or_all(ctx, &repo, args.job)?;
    let span = jiff::SignedDuration::try_from(args.older_than)?;
    let cutoff = format_timestamp(jiff::Timestamp::now().checked_sub(span)?);
    let mut doomed = Vec::new();
    for job in &jobs {
        let ids: Vec<String> = queue(ctx, &repo, job)?
            .snapshot()?
            .items
            .into_iter()
            .filter(|(_, s)| s.last_attempt < cutoff)
            .map(|(id, _)| id)
            .collect();
        if !ids.is_empty() {
            doomed.push((job.clone(), ids));
        }
    }
    let count: usize = doomed.iter().map(|(_, ids)| ids.len()).sum();
    for (job, ids) in &doomed {
        for id in ids {
            writeln!(
                ctx.out,
                "{}{job} {id}",
                if args.dry_run { "would remove " } else { "" }
            )?;
        }
    }
    if count == 0 {
        ctx.diag
            .note(&format!("no item's last failure is before {cutoff}"));
        return Ok(Exit::Success);
    }
    if args.dry_run {
        return Ok(Exit::Success);
    }
    if !args.yes {
        ctx.out.flush()?;
        ctx.diag.note(&format!(
            "remove {count} items from {} jobs? [y/N]",
            doomed.len()
        ));
        let answer = ctx.read_line()?.unwrap_or_default();
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(anyhow::anyhow!(
                "nothing was removed (answer y to remove, or pass --yes)"
            ));
        }
    }
    let mut removed = 0;
    for (job, ids) in &doomed {
        removed += queue(ctx, &repo, job)?.remove(ids)?.len();
    }
    ctx.diag.note(&format!("removed {removed} items"));
    Ok(Exit::Success)
}
