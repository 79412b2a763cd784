//! `prodigy dlq stats`: counts per job and across the repository.

use super::{job_or_all, queue};
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::dlq::DlqStats;

/// Count dead-lettered items and failures: for JOB, or for every job of the repository
/// with a total.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub job: super::JobArg,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let jobs = job_or_all(ctx, &repo, args.job.get())?;
    let mut per_job = Vec::new();
    let mut total = DlqStats::default();
    for job in jobs {
        let stats = queue(ctx, &repo, &job)?.stats()?;
        total.merge(&stats);
        per_job.push((job, stats));
    }
    if args.json {
        let jobs: serde_json::Map<String, serde_json::Value> = per_job
            .iter()
            .map(|(j, s)| (j.clone(), serde_json::to_value(s).unwrap_or_default()))
            .collect();
        let doc = serde_json::json!({"repo": repo, "jobs": jobs, "total": total});
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(Exit::Success);
    }
    let out = &mut *ctx.out;
    writeln!(
        out,
        "{:<28} {:>7} {:>9} {:>9} {:>7}  TOP ERROR TYPE",
        "JOB", "ITEMS", "FAILURES", "ELIGIBLE", "REVIEW"
    )?;
    let row = |out: &mut dyn std::io::Write, name: &str, s: &DlqStats| {
        let top = s
            .by_error_type
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map_or("-".to_owned(), |(t, n)| format!("{t} ({n})"));
        writeln!(
            out,
            "{name:<28} {:>7} {:>9} {:>9} {:>7}  {top}",
            s.items, s.failures, s.eligible, s.manual_review
        )
    };
    for (job, stats) in &per_job {
        row(out, job, stats)?;
    }
    if per_job.len() != 1 {
        row(out, "(all jobs)", &total)?;
    }
    Ok(Exit::Success)
}
