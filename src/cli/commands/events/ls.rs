//! `prodigy events ls`: jobs with event counts and time ranges, from head nodes only.

use super::list_jobs_warning;
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};

/// List the jobs of this repository (or of every repository) that have events, with their
/// event counts and time ranges. Reads one log node per job, never the events.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// List the jobs of every repository.
    #[arg(long, conflicts_with = "repo")]
    pub all_repos: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = if args.all_repos {
        None
    } else {
        Some(args.repo.resolve(ctx)?)
    };
    let (jobs, skipped) = list_jobs_warning(ctx, repo.as_deref())?;
    let exit = if skipped {
        Exit::Failure
    } else {
        Exit::Success
    };
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&jobs)?)?;
        return Ok(exit);
    }
    if jobs.is_empty() {
        ctx.diag.note(&format!(
            "no jobs with events in {}",
            repo.as_deref()
                .map_or("any repo".to_owned(), |r| format!("repo {r}"))
        ));
        return Ok(exit);
    }
    let dash = || "-".to_owned();
    if args.all_repos {
        writeln!(
            ctx.out,
            "{:<20} {:<28} {:>10} {:<27} LAST",
            "REPO", "JOB", "EVENTS", "FIRST"
        )?;
    } else {
        writeln!(
            ctx.out,
            "{:<28} {:>10} {:<27} LAST",
            "JOB", "EVENTS", "FIRST"
        )?;
    }
    for j in jobs {
        let first = j.total.first_ts.unwrap_or_else(dash);
        let last = j.total.last_ts.unwrap_or_else(dash);
        if args.all_repos {
            writeln!(
                ctx.out,
                "{:<20} {:<28} {:>10} {first:<27} {last}",
                j.repo, j.job, j.total.count
            )?;
        } else {
            writeln!(
                ctx.out,
                "{:<28} {:>10} {first:<27} {last}",
                j.job, j.total.count
            )?;
        }
    }
    Ok(exit)
}
