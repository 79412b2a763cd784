//! `prodigy events clean`: apply a retention policy to jobs' event logs.

use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit, UsageError};
use crate::config::Config;
use crate::events::retain::{Retention, parse_size};
use crate::store::refs::RefKind;

/// Keep the newest events of jobs' logs within a policy — exactly — and remove the rest,
/// or move it to the job's archive log (`events show JOB --archived` reads it).
///
/// With no limit given, the repository's policy from config.json in the home is used
/// (none: nothing is removed).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove events older than this (30d, 12h, 90m).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: Option<std::time::Duration>,
    /// Keep only the newest N events of each job.
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,
    /// Keep only the newest events of each job that fit in this size (10M, 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Move what goes to the job's archive log instead of dropping it.
    #[arg(long)]
    pub archive: bool,
    /// Print what would go, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this job.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), long, alias = "job-id", value_name = "JOB", conflicts_with = "all_jobs")]
    pub job: Option<String>,
    /// Every job of the repository (the default).
    #[arg(long)]
    pub all_jobs: bool,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Every repository.
    #[arg(long, conflicts_with = "repo")]
    pub all_repos: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("bad age {text:?}: {e} (examples: 30d, 12h, 90m)"))
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let refs = ctx.refs();
    // A store that cannot be used is refused even when there turns out to be nothing to
    // do, as every other command refuses it.
    refs.objects().usable()?;
    let repos: Vec<String> = if args.all_repos {
        let mut r: Vec<String> = refs
            .list(Some(RefKind::Events.as_str()))?
            .into_iter()
            .map(|(n, _)| n.repo().to_owned())
            .collect();
        r.dedup();
        r
    } else {
        vec![args.repo.resolve(ctx)?]
    };
    let flags = Retention {
        max_age: args.older_than,
        max_events: args.max_events,
        max_size: args.max_size,
        archive: args.archive,
        auto: false,
    };
    let config = Config::load(&ctx.home)?;
    let now = jiff::Timestamp::now();
    let mut reports = Vec::new();
    for repo in &repos {
        let policy = if flags.is_unlimited() {
            if args.archive {
                return Err(UsageError(
                    "--archive needs a limit (--older-than, --max-events, --max-size)".into(),
                )
                .into());
            }
            config.policy(repo).clone()
        } else {
            flags.clone()
        };
        if policy.is_unlimited() {
            ctx.diag.note(&format!(
                "repo {repo}: no limit given and no retention policy in config.json; nothing to do"
            ));
            continue;
        }
        let jobs: Vec<String> = match &args.job {
            Some(job) => {
                crate::names::validate("job id", job)?;
                vec![job.clone()]
            }
            None => {
                // A job's ref and its writers' refs: one job.
                let mut jobs: Vec<String> = refs
                    .list(Some(&format!("events/{repo}")))?
                    .into_iter()
                    .filter(|(n, _)| n.repo() == repo)
                    .map(|(n, _)| n.job().to_owned())
                    .collect();
                jobs.dedup();
                if jobs.is_empty() {
                    return Err(crate::events::EventError::NoSuchRepo { repo: repo.clone() }.into());
                }
                jobs
            }
        };
        for job in jobs {
            let log = super::open_existing(ctx, repo, &job)?;
            reports.push(log.clean(&policy, now, args.dry_run)?);
        }
    }
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&reports)?)?;
        return Ok(Exit::Success);
    }
    for r in &reports {
        let verb = match (r.dry_run, r.archived) {
            (true, true) => "would archive",
            (true, false) => "would remove",
            (false, true) => "archived",
            (false, false) => "removed",
        };
        writeln!(
            ctx.out,
            "{}/{}: {verb} {} of {} events ({} bytes), kept {} (oldest kept {})",
            r.repo,
            r.job,
            r.events_removed,
            r.events_before,
            r.bytes_removed,
            r.events_kept,
            r.oldest_kept.as_deref().unwrap_or("-")
        )?;
    }
    Ok(Exit::Success)
}
