//! What `run`, `resume` and `dlq retry` share: signal handling (SIGINT/SIGTERM stop the job
//! at a checkpoint; a second one exits at once), the step supervisor, the progress bar on
//! a terminal, and the report of a finished job.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::output::Diag;
use crate::cli::{Ctx, Exit};
use crate::runner::{Observer, Options, Outcome, Progress, RunError};

struct Bar {
    bar: Option<ProgressBar>,
    diag: Diag,
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
        match &self.bar {
            Some(bar) => bar.suspend(|| self.diag.note(text)),
            None => self.diag.note(text),
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
    let interrupt = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the first is being handled exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&interrupt))?;
        signal_hook::flag::register(signal, Arc::clone(&interrupt))?;
    }
    let bar = ctx.progress.then(|| {
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
        })),
        ..Options::default()
    })
}

/// Prints a finished job (id on stdout, a summary on stderr) or returns its error.
pub fn finish(ctx: &mut Ctx<'_>, outcome: Result<Outcome, RunError>) -> anyhow::Result<Exit> {
    let outcome = outcome?;
    let c = outcome.counters;
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
        ctx.diag.hint(&format!(
            "to bring the result into your branch, run `git merge {}` in your repository",
            outcome.branch
        ));
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
        ctx.diag.hint(&format!(
            "to bring the result into your branch, run `git merge {}` in your repository",
            outcome.branch
        ));
    }
    if c.failed > 0 {
        ctx.diag.hint(&format!(
            "see the failures with `prodigy dlq list {}`; retry them with `prodigy dlq retry {}`",
            outcome.job_id, outcome.job_id
        ));
    }
    writeln!(ctx.out, "{}", outcome.job_id)?;
    Ok(Exit::Success)
}
