//! `prodigy events follow`: print events as appends land, from any worktree.

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

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let log = EventLog::new(ctx.refs(), &repo, &args.job)?;
    let mut seen = if args.from_start {
        None
    } else {
        log.refs().read(log.name())?
    };
    loop {
        let head = log.refs().read(log.name())?;
        if head != seen {
            // Readers take no lock: the head only ever moves forward along its chain.
            let (nodes, _) = log.nodes_between(head, seen, false)?;
            for (_, node) in &nodes {
                let lines = log.batch_lines(node)?;
                for json in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if args.json {
                        ctx.out
                            .write_all(json)
                            .and_then(|_| ctx.out.write_all(b"\n"))
                            .map_err(io_error)?;
                    } else {
                        let record: EventRecord = serde_json::from_slice(json)?;
                        writeln!(ctx.out, "{}", human_line(&record))?;
                    }
                }
            }
            ctx.out.flush()?;
            seen = head;
        }
        std::thread::sleep(args.interval);
    }
}
