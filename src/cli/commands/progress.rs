//! What `run`, `resume` and `dlq retry` share: signal handling (SIGINT/SIGTERM stop the job
//! at a checkpoint; a second one exits at once), the step supervisor, the progress bar on
//! a terminal, and the report of a finished job.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::output::Diag;
use crate::cli::{Ctx, Exit};
use crate::runner::cleanup::MergeBack;
use crate::runner::{Observer, Options, Outcome, Progress, RunError};

struct Bar {
    bar: Option<ProgressBar>,
    diag: Diag,
    /// Agents' output too (`-v`); job-level steps' output is always shown.
    agents: bool,
    /// Nothing but the summary (`--json`).
    silent: bool,
}

impl Observer for Bar {
    fn progress(&self, p: &Progress) {
        if let Some(bar) = &self.bar {
            bar.set_length(p.total as u64);
            bar.set_position((p.done + p.failed) as u64);
            bar.set_message(format!(
                "{}: {} done, {} failed, {} running",
                p.phase.as_str(),
                p.done,
                p.failed,
                p.running
            ));
        }
    }

    fn note(&self, text: &str) {
        if self.silent {
            return;
        }
        match &self.bar {
            Some(bar) => bar.suspend(|| self.diag.note(text)),
            None => self.diag.note(text),
        }
    }

    fn output(&self, source: &str, line: &[u8]) {
        let agent = source.starts_with("agent-");
        if self.silent || (agent && !self.agents) {
            return;
        }
        let prefix = match agent {
            true => format!("[{source}] "),
            false => "  | ".to_owned(),
        };
        match &self.bar {
            Some(bar) => bar.suspend(|| self.diag.output(&prefix, line)),
            None => self.diag.output(&prefix, line),
        }
    }
}

/// A progress bar for long work on a terminal, `None` with `-q`, with `--json` (`quiet`)
/// or when stderr is not a terminal. Cleared when dropped.
pub fn bar(ctx: &Ctx<'_>, quiet: bool) -> Option<ProgressBar> {
    (ctx.progress && !quiet).then(|| {
        let bar = ProgressBar::new(0).with_finish(indicatif::ProgressFinish::AndClear);
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} {bar:30} {pos}/{len} [{elapsed_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    })
}

/// Runner options for a command: interrupt flag wired to SIGINT and SIGTERM, this binary
/// as the step supervisor, a progress bar when stderr is a terminal.
pub fn options(ctx: &Ctx<'_>) -> anyhow::Result<Options> {
    options_for(ctx, false)
}

/// [`options`], quiet but for the summary when `json` (`--json`: stdout holds one object,
/// stderr only errors).
pub fn options_for(ctx: &Ctx<'_>, json: bool) -> anyhow::Result<Options> {
    let interrupt = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the first is being handled exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&interrupt))?;
        signal_hook::flag::register(signal, Arc::clone(&interrupt))?;
    }
    let bar = (ctx.progress && !json).then(|| {
        // Cleared when the runner drops it, before the summary is printed.
        let bar = ProgressBar::new(0).with_finish(indicatif::ProgressFinish::AndClear);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    Ok(Options {
        supervisor: std::env::current_exe().ok(),
        interrupt,
        observer: Some(Arc::new(Bar {
            bar,
            diag: ctx.diag.clone(),
            agents: ctx.diag.is_verbose(),
            silent: json,
        })),
        ..Options::default()
    })
}

/// Prints a finished job (id on stdout, a summary on stderr; with `json` one summary
/// object on stdout) or returns its error. A job that finished with failed items exits
/// [`Exit::Incomplete`]. With `yes` (or a yes on a terminal) a complete job's result is
/// merged back into the branch the repository was on, as the original merges it, unless
/// the workflow's own `merge:` steps do that.
pub fn finish(
    ctx: &mut Ctx<'_>,
    outcome: Result<Outcome, RunError>,
    json: bool,
    yes: bool,
) -> anyhow::Result<Exit> {
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            if json && let Some(job) = failed_job(&e) {
                let summary = serde_json::json!({
                    "job": job,
                    "status": "failed",
                    "error": crate::error_line(&e),
                });
                writeln!(ctx.out, "{summary}")?;
            }
            return Err(e.into());
        }
    };
    let c = outcome.counters;
    let exit = match c.failed {
        0 => Exit::Success,
        _ if outcome.merge_pending => Exit::Success,
        _ => Exit::Incomplete,
    };
    let back = match !outcome.merge_pending
        && !outcome.merges_itself
        && (outcome.steps.is_some() || c.done > 0)
    {
        true if yes || (!json && asked_to_merge(ctx, &outcome)?) => Some(
            crate::runner::cleanup::merge_back(&ctx.refs(), &outcome.repo, &outcome.job_id)?,
        ),
        _ => None,
    };
    if json {
        let status = if outcome.merge_pending {
            "merge_pending"
        } else {
            "complete"
        };
        let summary = serde_json::json!({
            "job": outcome.job_id,
            "repo": outcome.repo,
            "kind": if outcome.steps.is_some() { "session" } else { "job" },
            "status": status,
            "already_complete": outcome.already_complete,
            "steps": outcome.steps,
            "total": c.total,
            "done": c.done,
            "failed": c.failed,
            "worktree": outcome.worktree,
            "branch": outcome.branch,
            "merged_into": match &back {
                Some(MergeBack::Merged { into, .. } | MergeBack::AlreadyMerged { into }) => {
                    Some(into)
                }
                _ => None,
            },
            "exit_code": exit as i32,
        });
        writeln!(ctx.out, "{summary}")?;
        return Ok(exit);
    }
    let already = if outcome.already_complete {
        "was already "
    } else {
        ""
    };
    if outcome.merge_pending {
        match outcome.steps {
            Some(steps) => ctx.diag.note(&format!(
                "session {}: its {steps} steps are done; the workflow's merge: steps wait for a yes",
                outcome.job_id,
            )),
            None => ctx.diag.note(&format!(
                "job {}: reduce is done; the workflow's merge: steps wait for a yes",
                outcome.job_id,
            )),
        }
        ctx.diag.hint(&format!(
            "run them with `prodigy resume {} -y`, or merge yourself: `git merge {}`",
            outcome.job_id, outcome.branch
        ));
        writeln!(ctx.out, "{}", outcome.job_id)?;
        return Ok(Exit::Success);
    }
    if let Some(steps) = outcome.steps {
        ctx.diag.note(&format!(
            "session {} {already}complete: {steps} steps; result in '{}' (branch {})",
            outcome.job_id,
            outcome.worktree.display(),
            outcome.branch
        ));
        merged_back(ctx, &outcome, back.as_ref());
        writeln!(ctx.out, "{}", outcome.job_id)?;
        return Ok(Exit::Success);
    }
    ctx.diag.note(&format!(
        "job {} {already}complete: {} items, {} done, {} failed; result in '{}' (branch {})",
        outcome.job_id,
        c.total,
        c.done,
        c.failed,
        outcome.worktree.display(),
        outcome.branch
    ));
    if c.done > 0 {
        merged_back(ctx, &outcome, back.as_ref());
    }
    if c.failed > 0 {
        ctx.diag.hint(&format!(
            "see the failures with `prodigy dlq list {}`; retry them with `prodigy dlq retry {}` (exit code 3: items failed)",
            outcome.job_id, outcome.job_id
        ));
    }
    writeln!(ctx.out, "{}", outcome.job_id)?;
    Ok(exit)
}

/// On a terminal, asks whether to merge a complete job's result back.
fn asked_to_merge(ctx: &mut Ctx<'_>, outcome: &Outcome) -> anyhow::Result<bool> {
    // Only where the question is seen: a terminal on stderr too, not `-q`.
    if !ctx.progress || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Ok(false);
    }
    ctx.diag.note(&format!(
        "{} is done: merge {} into the branch you started it on? [y/N]",
        outcome.job_id, outcome.branch
    ));
    let answer = ctx.read_line()?.unwrap_or_default();
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Says what became of the result: merged back, left (and why), or where it waits.
fn merged_back(ctx: &Ctx<'_>, outcome: &Outcome, back: Option<&MergeBack>) {
    if outcome.merges_itself {
        return;
    }
    match back {
        Some(MergeBack::Merged { into, dir }) => ctx.diag.note(&format!(
            "merged {} into {into} in '{}'",
            outcome.branch,
            dir.display()
        )),
        Some(MergeBack::AlreadyMerged { into }) => ctx
            .diag
            .note(&format!("{} is already merged into {into}", outcome.branch)),
        Some(MergeBack::Left(why)) => {
            ctx.diag
                .note(&format!("not merged into your branch: {why}"));
            ctx.diag.hint(&format!(
                "merge it yourself: `git merge {}` in your repository",
                outcome.branch
            ));
        }
        None => ctx.diag.hint(&format!(
            "to bring the result into your branch, run `git merge {}` in your repository \
             (or run with -y)",
            outcome.branch
        )),
    }
}

/// The job a run's error is about, when the job exists (it stopped, failed a step, or was
/// interrupted).
fn failed_job(e: &RunError) -> Option<&str> {
    match e {
        RunError::Stopped { job, .. }
        | RunError::Step { job, .. }
        | RunError::Interrupted { job }
        | RunError::LeaseLost { job, .. } => Some(job),
        _ => None,
    }
}
