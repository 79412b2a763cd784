//! `prodigy dlq list`: dead-lettered items, from the snapshot only.

use super::{pick_job, queue};
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit, UsageError};
use crate::dlq::{ItemFilter, analyze};

/// How to group the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// One row per normalised error signature.
    Signature,
}

/// List a job's dead-lettered items: item, error type, failures, last failure, signature.
/// Without JOB, the only job of the repository with items is used.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub job: super::JobArg,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only items eligible for reprocessing.
    #[arg(long)]
    pub eligible: bool,
    /// Only items matching this expression, e.g. "error_type == 'timeout' && failure_count >= 2"
    /// (fields: item_id, error_type, failure_count, first_attempt, last_attempt,
    /// error_signature, reprocess_eligible, manual_review_required, error_message,
    /// item.<key>; operators: == != < <= > >= ~ contains, && || !, parentheses).
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// At most N rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Group the items.
    #[arg(long, value_enum, value_name = "KEY")]
    pub group_by: Option<GroupBy>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let filter = args
        .filter
        .as_deref()
        .map(ItemFilter::parse)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    let repo = args.repo.resolve(ctx)?;
    let job = pick_job(ctx, &repo, args.job.get())?;
    let queue = queue(ctx, &repo, &job)?;
    let mut snapshot = queue.snapshot()?;
    if args.eligible {
        snapshot.items.retain(|_, s| s.reprocess_eligible);
    }
    if let Some(filter) = &filter {
        let mut kept = std::collections::BTreeMap::new();
        for (id, s) in std::mem::take(&mut snapshot.items) {
            let keep = if filter.needs_item() {
                filter.matches_item(&queue.item(&s)?, &s)
            } else {
                filter.matches_summary(&id, &s)
            };
            if keep {
                kept.insert(id, s);
            }
        }
        snapshot.items = kept;
    }
    let limit = args.limit.unwrap_or(usize::MAX);
    if args.group_by == Some(GroupBy::Signature) {
        let patterns: Vec<_> = analyze(&snapshot).into_iter().take(limit).collect();
        if args.json {
            writeln!(ctx.out, "{}", serde_json::to_string_pretty(&patterns)?)?;
            return Ok(Exit::Success);
        }
        writeln!(
            ctx.out,
            "{:>6} {:>8}  {:<27}  SIGNATURE",
            "ITEMS", "FAILURES", "LAST FAILURE"
        )?;
        for p in patterns {
            writeln!(
                ctx.out,
                "{:>6} {:>8}  {:<27}  {}",
                p.items, p.failures, p.last_seen, p.signature
            )?;
        }
        return Ok(Exit::Success);
    }
    let mut rows: Vec<_> = snapshot.items.into_iter().take(limit).collect();
    // Summaries written before names were kept: the item's own data tells.
    for (_, s) in rows.iter_mut().filter(|(_, s)| s.name.is_none()) {
        s.name = queue
            .item(s)
            .ok()
            .and_then(|item| crate::dlq::readable_name(&item.item_data));
    }
    if args.json {
        let doc: Vec<_> = rows
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["item_id"] = serde_json::Value::String(id.clone());
                v
            })
            .collect();
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(Exit::Success);
    }
    if rows.is_empty() {
        ctx.diag
            .note(&format!("no dead-lettered items in job {job}"));
        return Ok(Exit::Success);
    }
    writeln!(
        ctx.out,
        "{:<16} {:<20} {:<20} {:>8}  {:<27}  SIGNATURE",
        "ITEM", "NAME", "ERROR TYPE", "FAILURES", "LAST FAILURE"
    )?;
    for (id, s) in rows {
        writeln!(
            ctx.out,
            "{:<16} {:<20} {:<20} {:>8}  {:<27}  {}",
            id,
            s.name.as_deref().unwrap_or("-"),
            s.error_type.to_string(),
            s.failure_count,
            s.last_attempt,
            s.error_signature
        )?;
    }
    Ok(Exit::Success)
}
