//! `prodigy events follow`: print events as appends land, from any worktree.

use std::collections::HashMap;
use std::time::Duration;

use super::human_line;
use super::show::io_error;
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::events::{EventLog, EventRecord};
use crate::store::object::ObjectId;
use crate::store::refs::RefName;

/// Print a job's events as they are appended (by any process, in any worktree). Starts at
/// the current end of the log; --from-start prints what is already there first. Ends when
/// the job completes (exit 0) or stops on a failure (exit 1), and says so when its runner
/// is gone (exit 1: `prodigy resume` finishes it); a log with no runner of its own (only
/// `events append`) is followed until interrupted. An unknown job is refused at once
/// unless --wait.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), required_unless_present = "job_id")]
    pub job: Option<String>,
    /// The job, as the original spells it.
    #[arg(long = "job-id", value_name = "JOB", conflicts_with = "job", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job_id: Option<String>,
    /// Wait for a job that does not exist yet (one about to be started).
    #[arg(long)]
    pub wait: bool,
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

/// Runs the command. Each chain of the job (its own ref, each writer's) is looked at from
/// the head last seen; what appeared in all of them is printed merged by time. What was
/// printed is tracked by identity, not by position in a chain: a batch holds one writer's
/// records in `seq` order and its log node names the writer and the range, so the highest
/// `seq` printed per writer says what was seen even after `events clean` or retention
/// rewrote a chain (which then no longer reaches the last head seen, and is walked whole).
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let job = args
        .job
        .clone()
        .or_else(|| args.job_id.clone())
        .unwrap_or_default();
    let log = EventLog::new(ctx.refs(), &repo, &job)?;
    let states = crate::state::JobStateManager::new(ctx.refs(), &repo)?;
    let has_state = |states: &crate::state::JobStateManager| states.head(&job).ok();
    if !args.wait && !log.exists()? && has_state(&states).is_none() {
        return Err(crate::events::EventError::NoSuchJob {
            repo: repo.clone(),
            job: job.clone(),
        }
        .into());
    }
    let mut printed: HashMap<String, u64> = HashMap::new();
    // The head of each chain (the job's, each writer's) up to which all is seen.
    let mut seen: HashMap<RefName, ObjectId> = HashMap::new();
    if !args.from_start {
        // What is there now counts as seen: the nodes say it, no batch is read.
        for (chain, head) in log.chains()? {
            for (_, node) in chain.nodes_between(Some(head), None, false)?.0 {
                note(&mut printed, &node.writer, node.seq_last);
            }
            seen.insert(chain.name().clone(), head);
        }
    }
    let mut polls: u64 = 0;
    // Why following ends, told after one more look at the log.
    let mut finishing: Option<(Exit, String)> = None;
    let mut had_state = false;
    loop {
        polls += 1;
        let mut ended = None;
        // What appeared since the last look, in every chain, printed merged by time.
        let mut fresh: Vec<EventRecord> = Vec::new();
        let mut raw: HashMap<(String, u64), Vec<u8>> = HashMap::new();
        // Readers take no lock.
        for (chain, head) in log.chains()? {
            let stop = seen.get(chain.name()).copied();
            if stop == Some(head) {
                continue;
            }
            let (nodes, _) = chain.nodes_between(Some(head), stop, false)?;
            for (_, node) in &nodes {
                let max = printed.get(&node.writer).copied();
                if max.is_some_and(|m| node.seq_last <= m) {
                    continue;
                }
                let lines = chain.batch_lines(node)?;
                for json in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let record = serde_json::from_slice::<EventRecord>(json)?;
                    if printed
                        .get(&record.writer)
                        .is_some_and(|m| record.seq <= *m)
                    {
                        continue;
                    }
                    if args.json {
                        raw.insert((record.writer.clone(), record.seq), json.to_vec());
                    }
                    fresh.push(record);
                }
                if node.summary.types.contains_key("job_completed") {
                    ended = Some(Exit::Success);
                } else if node.summary.types.contains_key("job_failed") {
                    ended = Some(Exit::Failure);
                }
            }
            seen.insert(chain.name().clone(), head);
        }
        fresh.sort_by(|a, b| {
            (&a.timestamp, &a.writer, a.seq).cmp(&(&b.timestamp, &b.writer, b.seq))
        });
        for r in &fresh {
            match raw.get(&(r.writer.clone(), r.seq)) {
                Some(json) => ctx
                    .out
                    .write_all(json)
                    .and_then(|_| ctx.out.write_all(b"\n"))
                    .map_err(io_error)?,
                None => writeln!(ctx.out, "{}", human_line(r))?,
            }
        }
        for r in fresh {
            note(&mut printed, &r.writer, r.seq);
        }
        ctx.out.flush()?;
        // The last look, taken after the runner let go, is printed: now say why it ended.
        if let Some((exit, said)) = finishing.take() {
            match exit {
                Exit::Success => ctx.diag.note(&said),
                _ => ctx.diag.error(&said),
            }
            if exit != Exit::Success && said.contains("has no runner") {
                ctx.diag
                    .hint(&format!("`prodigy resume {job}` finishes it"));
            }
            return Ok(exit);
        }
        // Whether a runner holds the job (a log with no job state has no runner to ask
        // about): a complete job may be running again (`dlq retry`), so a job_completed
        // read, an old one with `--from-start` say, ends nothing while it is held.
        let state = has_state(&states);
        if state.is_some() {
            had_state = true;
        } else if had_state {
            ctx.diag
                .error(&format!("job {job} was removed while it was followed"));
            return Ok(Exit::Failure);
        }
        let held = || -> anyhow::Result<bool> {
            Ok(match &state {
                Some(_) => states.refs().job_holder(&states.ref_name(&job)?)?.is_some(),
                None => false,
            })
        };
        match ended {
            Some(exit) if !held()? => {
                let said = match exit {
                    Exit::Success => format!("job {job} completed"),
                    _ => format!("job {job} stopped on a failure"),
                };
                ctx.diag.note(&said);
                return Ok(exit);
            }
            _ => {}
        }
        // About once a second: is anyone still running the job? The lock is asked before
        // the state is read (a runner that saves complete, then lets go, is complete),
        // and once it is free the log is read once more before the end is told.
        let every = (1000 / args.interval.as_millis().max(1)).max(1) as u64;
        if polls.is_multiple_of(every) && state.is_some() {
            let held = held()?;
            if let Some((_, c)) = has_state(&states).filter(|_| !held) {
                let complete = c.phase == crate::state::Phase::Complete;
                finishing = Some(if complete {
                    (Exit::Success, format!("job {job} is complete"))
                } else if let Some(error) = c.error {
                    (
                        Exit::Failure,
                        format!("job {job} stopped on a failure: {error}"),
                    )
                } else {
                    (
                        Exit::Failure,
                        format!(
                            "job {job} has no runner now (it was interrupted, or its runner died)"
                        ),
                    )
                });
                continue;
            }
        }
        std::thread::sleep(args.interval);
    }
}

fn note(printed: &mut HashMap<String, u64>, writer: &str, seq: u64) {
    let max = printed.entry(writer.to_owned()).or_insert(seq);
    *max = (*max).max(seq);
}
