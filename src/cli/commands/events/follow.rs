//! `prodigy events follow`: print events as appends land, from any worktree.

use std::collections::HashMap;
use std::time::Duration;

use super::human_line;
use super::show::io_error;
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::events::{EventLog, EventRecord};
use crate::object::ObjectId;

/// Print a job's events as they are appended (by any process, in any worktree), until
/// interrupted. Starts at the current end of the log; --from-start prints what is already
/// there first. A job that has no events yet is waited for.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job.
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print the existing events first.
    #[arg(long)]
    pub from_start: bool,
    /// Print JSON Lines.
    #[arg(long)]
    pub json: bool,
    /// How often to look for new events.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// Runs the command. What was printed is tracked by identity, not by position in the
/// chain: each writer's records carry increasing sequence numbers, so the highest printed
/// per writer says what was seen even after `events clean` or retention rewrote the chain
/// (which then no longer reaches the last head seen).
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let log = EventLog::new(ctx.refs(), &repo, &args.job)?;
    let mut printed: HashMap<String, u64> = HashMap::new();
    let mut seen = None;
    if !args.from_start {
        // What is there now counts as seen.
        seen = log.refs().read(log.name())?;
        for_each_record(&log, seen, None, |record, _| {
            note(&mut printed, &record);
            Ok(())
        })?;
    }
    loop {
        let head = log.refs().read(log.name())?;
        if head != seen {
            // Readers take no lock. A head that moved forward reaches the last one seen;
            // a rewritten chain does not, so the walk reads it whole, and what was
            // printed is skipped.
            for_each_record(&log, head, seen, |record, json| {
                if printed
                    .get(&record.writer)
                    .is_some_and(|max| record.seq <= *max)
                {
                    return Ok(());
                }
                note(&mut printed, &record);
                if args.json {
                    ctx.out
                        .write_all(json)
                        .and_then(|_| ctx.out.write_all(b"\n"))
                        .map_err(io_error)?;
                } else {
                    writeln!(ctx.out, "{}", human_line(&record))?;
                }
                Ok(())
            })?;
            ctx.out.flush()?;
            seen = head;
        }
        std::thread::sleep(args.interval);
    }
}

fn note(printed: &mut HashMap<String, u64>, record: &EventRecord) {
    let max = printed.entry(record.writer.clone()).or_insert(record.seq);
    *max = (*max).max(record.seq);
}

/// Calls `f` with each record (and its JSON line) of the nodes after `stop` up to `head`,
/// oldest first.
fn for_each_record(
    log: &EventLog,
    head: Option<ObjectId>,
    stop: Option<ObjectId>,
    mut f: impl FnMut(EventRecord, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (nodes, _) = log.nodes_between(head, stop, false)?;
    for (_, node) in &nodes {
        let lines = log.batch_lines(node)?;
        for json in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record: EventRecord = serde_json::from_slice(json)?;
            f(record, json)?;
        }
    }
    Ok(())
}
