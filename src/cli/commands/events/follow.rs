//! `prodigy events follow`: print events as appends land, from any worktree.

use std::collections::HashMap;
use std::time::Duration;

use super::human_line;
use super::show::io_error;
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::events::{EventLog, EventRecord};

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
/// chain: a batch holds one writer's records in `seq` order and its log node names the
/// writer and the range, so the highest `seq` printed per writer says what was seen even
/// after `events clean` or retention rewrote the chain (which then no longer reaches the
/// last head seen, and is walked whole). Only a batch that straddles what was printed has
/// its records parsed for their `seq`.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let log = EventLog::new(ctx.refs(), &repo, &args.job)?;
    let mut printed: HashMap<String, u64> = HashMap::new();
    let mut seen = None;
    if !args.from_start {
        // What is there now counts as seen: the nodes say it, no batch is read.
        seen = log.refs().read(log.name())?;
        for (_, node) in log.nodes_between(seen, None, false)?.0 {
            note(&mut printed, &node.writer, node.seq_last);
        }
    }
    loop {
        let head = log.refs().read(log.name())?;
        if head != seen {
            // Readers take no lock.
            let (nodes, _) = log.nodes_between(head, seen, false)?;
            for (_, node) in &nodes {
                let max = printed.get(&node.writer).copied();
                if max.is_some_and(|m| node.seq_last <= m) {
                    continue;
                }
                let straddles = max.filter(|m| node.seq_first <= *m);
                let lines = log.batch_lines(node)?;
                for json in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let record = if !args.json || straddles.is_some() {
                        Some(serde_json::from_slice::<EventRecord>(json)?)
                    } else {
                        None
                    };
                    if let (Some(m), Some(r)) = (straddles, &record)
                        && r.seq <= m
                    {
                        continue;
                    }
                    match record {
                        Some(r) if !args.json => writeln!(ctx.out, "{}", human_line(&r))?,
                        _ => ctx
                            .out
                            .write_all(json)
                            .and_then(|_| ctx.out.write_all(b"\n"))
                            .map_err(io_error)?,
                    }
                }
                note(&mut printed, &node.writer, node.seq_last);
            }
            ctx.out.flush()?;
            seen = head;
        }
        std::thread::sleep(args.interval);
    }
}

fn note(printed: &mut HashMap<String, u64>, writer: &str, seq: u64) {
    let max = printed.entry(writer.to_owned()).or_insert(seq);
    *max = (*max).max(seq);
}
