//! `prodigy logs JOB`: what a job's steps printed and its Claude calls' transcripts, read
//! from the store (so they outlive the worktrees, travel with `store push/pull`, and read
//! the same on any host).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::cli::commands::RepoArg;
use crate::cli::commands::events::open_existing;
use crate::cli::output::UsageError;
use crate::cli::{Ctx, Exit};
use crate::events::EventLog;
use crate::events::calls::{self, Call, StepLog};
use crate::runner::claude::assistant_text;

/// Show what a job's steps printed (setup, agents, reduce, retries, merge), each headed by
/// its step, agent, item, attempt and exit code; a Claude call shows the assistant's text
/// instead of its raw stream, headed by its turns, tokens and cost. With --json the
/// Claude calls' streams as claude wrote them (stream-json lines), nothing else. Read from
/// the store: the worktrees may be gone, the job may have run on another host.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job id.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), value_name = "JOB")]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only this work item's agent.
    #[arg(long, value_name = "ID")]
    pub item: Option<String>,
    /// Only this step: its number in its phase (`2`), or `PHASE/N` (`setup/1`, `map/2`,
    /// `reduce/1`, `session/3`, `merge/1`, with `/on_failure` for a handler), or `merge`
    /// (the Claude merge of a conflict).
    #[arg(long, value_name = "N")]
    pub step: Option<String>,
    /// Print the Claude calls' streams as claude wrote them (stream-json lines), nothing
    /// else.
    #[arg(long)]
    pub json: bool,
    /// Keep printing steps as they end, until the job completes or stops. A job with no
    /// runner of its own (its events only appended, by `events append`) is followed until
    /// interrupted, as `events follow` follows it.
    #[arg(short, long)]
    pub follow: bool,
}

/// One thing to show: a step's output, or a Claude call (with the step output it matches,
/// which it replaces).
enum Entry<'a> {
    Output(&'a StepLog),
    Call(&'a Call),
}

impl Entry<'_> {
    fn step(&self) -> &str {
        match self {
            Entry::Output(s) => &s.step,
            Entry::Call(c) => &c.step,
        }
    }

    fn item(&self) -> Option<&str> {
        match self {
            Entry::Output(s) => s.item_id.as_deref(),
            Entry::Call(c) => c.item_id.as_deref(),
        }
    }

    fn timestamp(&self) -> &str {
        match self {
            Entry::Output(s) => &s.timestamp,
            Entry::Call(c) => &c.timestamp,
        }
    }

    /// What identifies it across polls (`--follow`).
    fn key(&self) -> String {
        match self {
            Entry::Output(s) => format!("o {} {} {} {}", s.agent_id, s.step, s.attempt, s.log),
            Entry::Call(c) => format!("c {} {} {} {}", c.agent_id, c.step, c.attempt, c.timestamp),
        }
    }
}

fn step_matches(want: &str, step: &str) -> bool {
    match want.parse::<usize>() {
        Ok(n) => {
            let mut parts = step.split('/');
            parts.next();
            parts.next().and_then(|p| p.parse().ok()) == Some(n) && parts.next().is_none()
        }
        Err(_) => step == want,
    }
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    if let Some(step) = &args.step {
        let ok = step.parse::<usize>().is_ok_and(|n| n > 0)
            || step == "merge"
            || step.split_once('/').is_some_and(|(phase, rest)| {
                ["setup", "map", "reduce", "session", "merge"].contains(&phase)
                    && rest
                        .split('/')
                        .next()
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|n| n > 0)
            });
        if !ok {
            return Err(UsageError(format!(
                "--step {step:?}: give a step number (2), PHASE/N (setup/1, map/2, reduce/1, session/3) or merge"
            ))
            .into());
        }
    }
    let repo = args.repo.resolve(ctx)?;
    // A job just started may have no events yet: followed, it is waited for.
    let started = args.follow
        && crate::state::JobStateManager::new(ctx.refs(), &repo)?
            .head(&args.job)
            .is_ok();
    let log = match started {
        true => EventLog::new(ctx.refs(), &repo, &args.job)?,
        false => open_existing(ctx, &repo, &args.job)?,
    };
    let mut shown: BTreeSet<String> = BTreeSet::new();
    loop {
        let printed = print_new(&args, ctx, &log, &mut shown)?;
        if !args.follow {
            if printed == 0 && shown.is_empty() {
                ctx.diag.note(&format!(
                    "job {} has no step output or Claude calls{}",
                    args.job,
                    if args.item.is_some() || args.step.is_some() {
                        " that match"
                    } else {
                        ""
                    }
                ));
            }
            return Ok(Exit::Success);
        }
        ctx.out.flush()?;
        if let Some(exit) = finished(ctx, &repo, &args.job)? {
            // What ended with the job is printed before saying so.
            print_new(&args, ctx, &log, &mut shown)?;
            return Ok(exit);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `Some` once the job no longer runs: complete (0), stopped or without a runner (1).
fn finished(ctx: &Ctx<'_>, repo: &str, job: &str) -> anyhow::Result<Option<Exit>> {
    let states = crate::state::JobStateManager::new(ctx.refs(), repo)?;
    let Ok((_, c)) = states.head(job) else {
        return Ok(None);
    };
    if c.phase == crate::state::Phase::Complete {
        ctx.diag.note(&format!("job {job} completed"));
        return Ok(Some(Exit::Success));
    }
    if states.refs().job_holder(&states.ref_name(job)?)?.is_none() {
        ctx.diag.note(&format!(
            "job {job} does not run now{}",
            match &c.error {
                Some(e) => format!(": {e}"),
                None => " (interrupted: `prodigy resume` finishes it)".to_owned(),
            }
        ));
        return Ok(Some(Exit::Failure));
    }
    Ok(None)
}

/// Prints the entries not shown yet; returns how many.
fn print_new(
    args: &Args,
    ctx: &mut Ctx<'_>,
    log: &EventLog,
    shown: &mut BTreeSet<String>,
) -> anyhow::Result<usize> {
    if !log.exists()? {
        return Ok(0);
    }
    let outputs = calls::step_logs(log)?;
    let all = calls::read(log)?;
    // A Claude step's output is its call, shown as the call.
    let mut by_call: HashMap<(&str, &str, u32), Vec<&Call>> = HashMap::new();
    for c in &all.calls {
        by_call
            .entry((&c.agent_id, &c.step, c.attempt))
            .or_default()
            .push(c);
    }
    let mut entries: Vec<Entry<'_>> = all.calls.iter().map(Entry::Call).collect();
    for o in &outputs {
        let is_call = by_call.contains_key(&(o.agent_id.as_str(), o.step.as_str(), o.attempt));
        if !is_call && !args.json {
            entries.push(Entry::Output(o));
        }
    }
    entries.sort_by(|a, b| a.timestamp().cmp(b.timestamp()));
    let objects = ctx.refs().objects().clone();
    let mut printed = 0;
    for entry in entries {
        if args
            .item
            .as_ref()
            .is_some_and(|i| entry.item() != Some(i.as_str()))
            || args
                .step
                .as_ref()
                .is_some_and(|s| !step_matches(s, entry.step()))
            || !shown.insert(entry.key())
        {
            continue;
        }
        printed += 1;
        match entry {
            Entry::Output(o) => {
                let text = objects.read(&o.log)?.payload;
                let mut head = format!("== {} {}", o.step, o.agent_id);
                if let Some(item) = &o.item_id {
                    head.push_str(&format!(" item {item}"));
                }
                head.push_str(&format!(
                    " attempt {}: exit {}, {} bytes ==",
                    o.attempt, o.exit_code, o.bytes
                ));
                writeln!(ctx.out, "{head}")?;
                ctx.out.write_all(&text)?;
                if !text.ends_with(b"\n") && !text.is_empty() {
                    writeln!(ctx.out)?;
                }
            }
            Entry::Call(call) => print_call(ctx, &objects, call, args.json)?,
        }
    }
    Ok(printed)
}

fn print_call(
    ctx: &mut Ctx<'_>,
    objects: &crate::store::object::ObjectStore,
    call: &Call,
    json: bool,
) -> anyhow::Result<()> {
    let transcript = match call.transcript {
        Some(id) => Some(objects.read(&id)?.payload),
        None => None,
    };
    if json {
        if let Some(bytes) = &transcript {
            ctx.out.write_all(bytes)?;
            if !bytes.ends_with(b"\n") && !bytes.is_empty() {
                writeln!(ctx.out)?;
            }
        }
        return Ok(());
    }
    let mut head = format!("== {} {}", call.step, call.agent_id);
    if let Some(item) = &call.item_id {
        head.push_str(&format!(" item {item}"));
    }
    head.push_str(&format!(
        " attempt {}: exit {}",
        call.attempt, call.exit_code
    ));
    if let Some(turns) = call.num_turns {
        head.push_str(&format!(", {turns} turns"));
    }
    if let Some(usd) = call.total_cost_usd {
        head.push_str(&format!(", ${usd}"));
    }
    head.push_str(&format!(
        ", {} in / {} out tokens, {} ms",
        call.usage.input_tokens, call.usage.output_tokens, call.duration_ms
    ));
    writeln!(ctx.out, "{head} ==")?;
    if let Some(command) = &call.command {
        writeln!(ctx.out, "$ claude {command}")?;
    }
    if let Some(error) = &call.error {
        writeln!(ctx.out, "error: {error}")?;
    }
    match &transcript {
        Some(bytes) => write!(ctx.out, "{}", assistant_text(bytes))?,
        None => writeln!(ctx.out, "(no transcript was kept)")?,
    }
    Ok(())
}
