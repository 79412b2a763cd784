//! `prodigy jobs` and `prodigy jobs show JOB`: jobs from their state refs.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::state::{Checkpoint, JobStateManager};
use crate::store::object::ObjectId;
use crate::store::refs::RefKind;

/// List the jobs of this repository (or of every repository) with their phase, item counts
/// and times, from their newest checkpoints.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[allow(missing_docs)]
    #[command(subcommand)]
    pub command: Option<JobsCommand>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// List the jobs of every repository.
    #[arg(long, conflicts_with = "repo")]
    pub all_repos: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Only sessions (sequential workflows).
    #[arg(long)]
    pub sessions: bool,
}

/// `jobs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Show one job: phase, counts, times, worktrees, agents at work, checkpoint history.
    Show(ShowArgs),
    /// Delete a job: its refs (state, events, dead-letter queue, archive; their reflogs
    /// keep the history until gc) and its worktrees. Its branch stays. Asks first.
    Rm(RmArgs),
}

/// Delete a job.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The job id.
    #[arg(value_name = "JOB", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Do not ask.
    #[arg(short = 'y', long, alias = "force", short_alias = 'f')]
    pub yes: bool,
}

/// Runs `jobs rm`.
pub fn exec_rm(args: RmArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let refs = ctx.refs();
    let states = JobStateManager::new(refs.clone(), &repo)?;
    if !args.yes {
        let what = match states.head(&args.job) {
            Ok((_, c)) => format!("job {} ({})", args.job, c.phase.as_str()),
            Err(_) => format!("job {}", args.job),
        };
        ctx.diag.note(&format!(
            "delete {what}: its state, events, dead-letter queue and worktrees? [y/N]"
        ));
        let answer = ctx.read_line()?.unwrap_or_default();
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(
                crate::cli::UsageError("nothing deleted (answer y, or give -y)".into()).into(),
            );
        }
    }
    let removed = crate::runner::cleanup::remove_job(&ctx.home, &refs, &repo, &args.job)?;
    for r in &removed.refs {
        writeln!(ctx.out, "deleted {r}")?;
    }
    ctx.diag.note(&format!(
        "job {} deleted ({} refs, {} worktrees); its reflogs keep the history until `prodigy gc` expires them",
        args.job,
        removed.refs.len(),
        removed.worktrees.len()
    ));
    Ok(Exit::Success)
}

/// Show one job.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The job id.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), value_name = "JOB")]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Show the newest N checkpoints (0: all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub limit: usize,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    match args.command {
        Some(JobsCommand::Show(show)) => return exec_show(show, ctx),
        Some(JobsCommand::Rm(rm)) => return exec_rm(rm, ctx),
        None => {}
    }
    let repos = if args.all_repos {
        // Names only: a broken ref is the job's to report, below.
        let mut repos: Vec<String> = ctx
            .refs()
            .list_each(Some(RefKind::State.as_str()))?
            .into_iter()
            .map(|(n, _)| n.repo().to_owned())
            .collect();
        repos.dedup();
        repos
    } else {
        vec![args.repo.resolve(ctx)?]
    };
    let mut rows = Vec::new();
    for repo in &repos {
        let states = JobStateManager::new(ctx.refs(), repo)?;
        for (job, head) in states.list_each()? {
            // A job that cannot be read is named and skipped, the others listed (as git
            // ignores a broken ref with a warning); fsck says more.
            let read = head.map_err(anyhow::Error::from).and_then(|(id, c)| {
                let spec = states.read_spec(&c.spec)?;
                let mut row = summary(repo, &job, &id, &c, &spec.started);
                runner(&states, &job, &c, &mut row)?;
                Ok((row, spec))
            });
            let (mut row, spec) = match read {
                Ok(read) => read,
                Err(e) => {
                    super::skipping_job(ctx, repo, &job, &format_args!("{e:#}"));
                    continue;
                }
            };
            let session = spec.workflow.get("map").is_none_or(|m| m.is_null());
            row["kind"] = json!(if session { "session" } else { "job" });
            if args.sessions && !session {
                continue;
            }
            rows.push(row);
        }
    }
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(Exit::Success);
    }
    let interrupted: Vec<&str> = rows
        .iter()
        .filter(|r| r["status"] == "interrupted")
        .filter_map(|r| r["job"].as_str())
        .collect();
    if let [one] = interrupted.as_slice() {
        ctx.diag.hint(&format!(
            "`prodigy resume {one}` finishes the interrupted job"
        ));
    } else if !interrupted.is_empty() {
        ctx.diag.hint(&format!(
            "`prodigy resume JOB` finishes an interrupted job ({})",
            interrupted.join(", ")
        ));
    }
    if rows.is_empty() {
        ctx.diag.note(&format!(
            "no jobs in {}",
            if args.all_repos {
                "any repo".to_owned()
            } else {
                format!("repo {}", repos[0])
            }
        ));
        return Ok(Exit::Success);
    }
    if args.all_repos {
        write!(ctx.out, "{:<20} ", "REPO")?;
    }
    writeln!(
        ctx.out,
        "{:<28} {:<9} {:>6} {:>6} {:>6} {:>7} {:<27} DURATION",
        "JOB", "PHASE", "DONE", "FAILED", "PENDING", "TOTAL", "STARTED"
    )?;
    for r in &rows {
        if args.all_repos {
            write!(ctx.out, "{:<20} ", r["repo"].as_str().unwrap_or(""))?;
        }
        writeln!(
            ctx.out,
            "{:<28} {:<9} {:>6} {:>6} {:>6} {:>7} {:<27} {}",
            r["job"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["done"].as_u64().unwrap_or(0),
            r["failed"].as_u64().unwrap_or(0),
            r["pending"].as_u64().unwrap_or(0),
            r["total"].as_u64().unwrap_or(0),
            r["started"].as_str().unwrap_or("-"),
            r["duration"].as_str().unwrap_or("-"),
        )?;
    }
    Ok(Exit::Success)
}

/// Whether a job that is not finished has a runner: `running` (with its pid and host, as
/// its run lock or lease says) or `interrupted` (no process holds it: `prodigy resume`).
fn runner(
    states: &JobStateManager,
    job: &str,
    c: &Checkpoint,
    row: &mut Value,
) -> anyhow::Result<()> {
    use crate::store::refs::Holder;
    if c.phase == crate::state::Phase::Complete {
        return Ok(());
    }
    let holder = states.refs().job_holder(&states.ref_name(job)?)?;
    match holder {
        Some(Holder::Process { pid, host, .. }) => {
            row["status"] = json!("running");
            row["runner"] = json!({"pid": pid, "host": host});
        }
        Some(Holder::Host {
            host,
            pid,
            remaining_secs,
            ..
        }) => {
            row["status"] = json!("running");
            row["runner"] = json!({"pid": pid, "host": host, "lease_secs": remaining_secs});
        }
        None if c.error.is_none() => row["status"] = json!("interrupted"),
        None => {}
    }
    Ok(())
}

fn duration(start: &str, end: Option<&str>) -> Option<String> {
    let start: jiff::Timestamp = start.parse().ok()?;
    let end: jiff::Timestamp = end?.parse().ok()?;
    let ms = (end.as_millisecond() - start.as_millisecond()).max(0) as u64;
    // Whole seconds once there are any: milliseconds of a long job are noise.
    let shown = if ms >= 1000 { ms / 1000 * 1000 } else { ms };
    Some(humantime::format_duration(std::time::Duration::from_millis(shown)).to_string())
}

fn summary(repo: &str, job: &str, id: &ObjectId, c: &Checkpoint, started: &str) -> Value {
    let status = match (&c.error, c.phase) {
        (Some(_), phase) => format!("failed:{}", phase.as_str()),
        (None, phase) => phase.as_str().to_owned(),
    };
    json!({
        "repo": repo,
        "job": job,
        "phase": c.phase,
        "status": status,
        "error": c.error,
        "total": c.counters.total,
        "done": c.counters.done,
        "failed": c.counters.failed,
        "pending": c.counters.pending(),
        "running": c.running.len(),
        "started": started,
        "updated": c.created,
        "ended": c.ended,
        "duration": duration(started, c.ended.as_deref()),
        "checkpoint": id.to_string(),
        "version": c.version,
    })
}

/// Runs `jobs show`.
pub fn exec_show(args: ShowArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    crate::names::validate("job id", &args.job)?;
    let repo = args.repo.resolve(ctx)?;
    let states = JobStateManager::new(ctx.refs(), &repo)?;
    let history = states.history(&args.job)?;
    let (head_id, head) = &history[0];
    let spec = states.read_spec(&head.spec)?;
    let mut row = summary(&repo, &args.job, head_id, head, &spec.started);
    runner(&states, &args.job, head, &mut row)?;
    row["workflow"] = json!(spec.workflow_path);
    row["base_commit"] = json!(spec.base_commit);
    row["branch"] = json!(spec.branch);
    row["worktree"] = json!(spec.worktree);
    row["worktree_exists"] = json!(spec.worktree.exists());
    row["imported_from"] = json!(spec.imported_from);
    let agents: BTreeMap<&String, Value> = head
        .running
        .iter()
        .map(|(k, a)| {
            (
                k,
                json!({"agent_id": a.agent_id, "index": a.index, "worktree": a.worktree, "attempt": a.attempt, "started": a.started}),
            )
        })
        .collect();
    row["running_agents"] = json!(agents);
    let shown = match args.limit {
        0 => history.len(),
        n => n.min(history.len()),
    };
    row["checkpoint_count"] = json!(history.len());
    let checkpoints: Vec<Value> = history[..shown]
        .iter()
        .map(|(id, c)| {
            json!({
                "version": c.version,
                "id": id.to_string(),
                "created": c.created,
                "phase": c.phase,
                "reason": c.reason,
                "done": c.counters.done,
                "failed": c.counters.failed,
                "full": c.full,
            })
        })
        .collect();
    row["checkpoints"] = json!(checkpoints);
    let claude = claude_calls(ctx, &repo, &args.job)?;
    if let Some(calls) = &claude {
        row["claude"] = calls.totals_json();
    }
    let validations = validations(ctx, &repo, &args.job)?;
    if !validations.is_empty() {
        row["validations"] = json!(validations);
    }
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&row)?)?;
        return Ok(Exit::Success);
    }
    let s = |k: &str| match &row[k] {
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        v => v.to_string(),
    };
    writeln!(ctx.out, "job:        {}", args.job)?;
    writeln!(ctx.out, "repo:       {repo}")?;
    writeln!(ctx.out, "phase:      {}", s("status"))?;
    if let Some(e) = &head.error {
        writeln!(ctx.out, "error:      {e}")?;
    }
    match row["status"].as_str() {
        Some("running") => writeln!(
            ctx.out,
            "runner:     pid {} on {}",
            row["runner"]["pid"],
            row["runner"]["host"].as_str().unwrap_or("this host")
        )?,
        Some("interrupted") => writeln!(
            ctx.out,
            "runner:     none (interrupted): `prodigy resume {}` finishes it",
            args.job
        )?,
        _ => {}
    }
    writeln!(
        ctx.out,
        "items:      {} total, {} done, {} failed, {} pending",
        s("total"),
        s("done"),
        s("failed"),
        s("pending")
    )?;
    writeln!(ctx.out, "started:    {}", s("started"))?;
    writeln!(ctx.out, "ended:      {}", s("ended"))?;
    writeln!(ctx.out, "duration:   {}", s("duration"))?;
    if let Some(from) = &spec.imported_from {
        writeln!(
            ctx.out,
            "imported:   from {from} (the original tool; not resumable)"
        )?;
    }
    writeln!(ctx.out, "workflow:   {}", s("workflow"))?;
    writeln!(ctx.out, "base:       {}", s("base_commit"))?;
    writeln!(
        ctx.out,
        "worktree:   {}{}",
        s("worktree"),
        if spec.worktree.as_os_str().is_empty() || spec.worktree.exists() {
            ""
        } else {
            " (missing)"
        }
    )?;
    writeln!(ctx.out, "branch:     {}", s("branch"))?;
    for a in head.running.values() {
        writeln!(
            ctx.out,
            "agent:      {} item {} attempt {} in {}",
            a.agent_id,
            a.index,
            a.attempt,
            a.worktree.display()
        )?;
    }
    if let Some(calls) = &claude {
        write_claude_totals(ctx.out, calls)?;
    }
    for v in &validations {
        writeln!(
            ctx.out,
            "validated:  {} {}{} #{}: {}% of {}% {}",
            v.step,
            v.agent_id,
            v.item_id
                .as_deref()
                .map(|i| format!(" item {i}"))
                .unwrap_or_default(),
            v.attempt,
            v.completion,
            v.threshold,
            if v.passed { "passed" } else { "incomplete" }
        )?;
    }
    match shown == history.len() {
        true => writeln!(ctx.out, "checkpoints ({}):", history.len())?,
        false => writeln!(
            ctx.out,
            "checkpoints (newest {shown} of {}; --limit 0 for all):",
            history.len()
        )?,
    }
    for (id, c) in &history[..shown] {
        writeln!(
            ctx.out,
            "  {:>5}  {}  {}  {:<8} {:>6} done {:>6} failed  {}",
            c.version,
            &id.to_string()[..12],
            c.created,
            c.phase.as_str(),
            c.counters.done,
            c.counters.failed,
            c.reason
        )?;
    }
    Ok(Exit::Success)
}

/// The Claude calls of a job, when its event log has any (read from the batches that hold
/// them only).
pub fn claude_calls(
    ctx: &Ctx<'_>,
    repo: &str,
    job: &str,
) -> anyhow::Result<Option<crate::events::calls::Calls>> {
    let log = crate::events::EventLog::new(ctx.refs(), repo, job)?;
    let Some(totals) = log.totals()? else {
        return Ok(None);
    };
    if !totals.total.types.contains_key("claude_call_finished") {
        return Ok(None);
    }
    Ok(Some(crate::events::calls::read(&log)?))
}

/// The validations of a job's steps, when its event log has any.
fn validations(
    ctx: &Ctx<'_>,
    repo: &str,
    job: &str,
) -> anyhow::Result<Vec<crate::events::calls::Validation>> {
    let log = crate::events::EventLog::new(ctx.refs(), repo, job)?;
    let Some(totals) = log.totals()? else {
        return Ok(Vec::new());
    };
    if !totals.total.types.contains_key("step_validated") {
        return Ok(Vec::new());
    }
    Ok(crate::events::calls::validations(&log)?)
}

/// Tokens and cost of a job's Claude calls: the job's, then per agent and per step.
pub fn write_claude_totals(
    out: &mut (dyn std::io::Write + Send),
    calls: &crate::events::calls::Calls,
) -> std::io::Result<()> {
    let line = |t: &crate::events::calls::Totals| {
        format!(
            "{} call{} ({} failed), {} in / {} out / {} cache-write / {} cache-read tokens, ${}",
            t.calls,
            if t.calls == 1 { "" } else { "s" },
            t.failed,
            t.usage.input_tokens,
            t.usage.output_tokens,
            t.usage.cache_creation_input_tokens,
            t.usage.cache_read_input_tokens,
            t.cost_usd()
        )
    };
    writeln!(out, "claude:     {}", line(&calls.job))?;
    for (agent, t) in &calls.agents {
        writeln!(out, "  agent {agent:<14} {}", line(t))?;
    }
    for (step, t) in &calls.steps {
        writeln!(out, "  step  {step:<14} {}", line(t))?;
    }
    Ok(())
}
