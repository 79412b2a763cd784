//! `prodigy dlq inspect`: one item, its whole history, and the job's events for it.

use super::{pick_job, queue};
use crate::cli::commands::RepoArg;
use crate::cli::commands::events::human_line;
use crate::cli::{Ctx, Exit};
use crate::dlq::DlqError;
use crate::events::query::stream;
use crate::events::{EventLog, Filter};

/// Show one dead-lettered item: its data, every failure (oldest first), its worktree
/// artifacts, and the job's events about it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The item's id.
    pub item: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub job: super::JobArg,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print the item as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let job = pick_job(ctx, &repo, args.job.get())?;
    let item = queue(ctx, &repo, &job)?
        .get(&args.item)?
        .ok_or_else(|| DlqError::NoSuchItem {
            job: job.clone(),
            item: args.item.clone(),
        })?;
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&item)?)?;
        return Ok(Exit::Success);
    }
    let log = EventLog::new(ctx.refs(), &repo, &job)?;
    let out = &mut *ctx.out;
    writeln!(out, "item:        {}", item.item_id)?;
    writeln!(out, "job:         {job}")?;
    writeln!(
        out,
        "failures:    {} (first {}, last {})",
        item.failure_count, item.first_attempt, item.last_attempt
    )?;
    writeln!(out, "signature:   {}", item.error_signature)?;
    writeln!(
        out,
        "reprocess:   {}; manual review: {}",
        if item.reprocess_eligible {
            "eligible"
        } else {
            "not eligible"
        },
        if item.manual_review_required {
            "required"
        } else {
            "not required"
        }
    )?;
    writeln!(out, "data:        {}", item.item_data)?;
    if let Some(artifacts) = &item.worktree_artifacts {
        writeln!(out, "worktree:    {artifacts}")?;
    }
    writeln!(out, "\nhistory:")?;
    for f in &item.failure_history {
        writeln!(out, "  #{} {}  {}", f.attempt, f.timestamp, f.error_type)?;
        // Every line of the message (only its first was shown, with no mark of the rest).
        for line in f.error_message.lines() {
            writeln!(out, "     {line}")?;
        }
        let mut extra = Vec::new();
        if let Some(a) = &f.agent_id {
            extra.push(format!("agent {a}"));
        }
        if let Some(s) = &f.step {
            extra.push(format!("step {s}"));
        }
        if let Some(d) = f.duration_ms {
            extra.push(format!("{d} ms"));
        }
        if let Some(l) = &f.log_location {
            extra.push(format!("log {l}"));
        }
        if !extra.is_empty() {
            writeln!(out, "     {}", extra.join(", "))?;
        }
    }
    if log.exists()? {
        writeln!(out, "\nevents:")?;
        let filter = Filter {
            item: Some(item.item_id.clone()),
            ..Filter::default()
        };
        let mut lines = Vec::new();
        let skipped = stream(&log, &filter, true, true, |line| {
            if let Some(r) = &line.record {
                lines.push(human_line(r));
            }
            Ok(true)
        })?;
        for line in &lines {
            writeln!(out, "  {line}")?;
        }
        if lines.is_empty() {
            writeln!(out, "  (none)")?;
        }
        for e in &skipped {
            ctx.diag.warning(&crate::error_line(e));
        }
    }
    Ok(Exit::Success)
}
