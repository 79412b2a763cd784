//! `prodigy dlq analyze`: failure patterns.

use super::{pick_job, queue};
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};

/// Group a job's failures into patterns by normalised signature (paths, numbers, hex,
/// uuids and timestamps removed): items and failures per pattern, first and last seen,
/// sample items, and the distribution of error types.
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
    let job = pick_job(ctx, &repo, args.job.get())?;
    let queue = queue(ctx, &repo, &job)?;
    let patterns = queue.analyze()?;
    let stats = queue.stats()?;
    if args.json {
        let doc = serde_json::json!({"job": job, "patterns": patterns, "error_types": stats.by_error_type});
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(Exit::Success);
    }
    let out = &mut *ctx.out;
    writeln!(
        out,
        "{} items, {} failures, {} patterns in job {job}",
        stats.items,
        stats.failures,
        patterns.len()
    )?;
    for (n, p) in patterns.iter().enumerate() {
        writeln!(out, "\n{}. {}", n + 1, p.signature)?;
        writeln!(
            out,
            "   {} items, {} failures, {}  {}",
            p.items,
            p.failures,
            p.error_type,
            crate::cli::output::bar(p.items, stats.items, 20)
        )?;
        writeln!(
            out,
            "   first seen {}, last seen {}",
            p.first_seen, p.last_seen
        )?;
        writeln!(out, "   e.g. {}", p.sample_items.join(", "))?;
    }
    if !stats.by_error_type.is_empty() {
        writeln!(out, "\nerror types:")?;
        let mut types: Vec<_> = stats.by_error_type.iter().collect();
        types.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let max = types.first().map_or(0, |(_, n)| **n);
        for (t, n) in types {
            let share = 100.0 * *n as f64 / stats.items.max(1) as f64;
            let chart = crate::cli::output::bar(*n, max, 20);
            writeln!(out, "  {t:<20} {n:>6}  {share:>5.1}%  {chart}")?;
        }
    }
    Ok(Exit::Success)
}
