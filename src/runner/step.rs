//! One step, wherever it runs (setup, an agent, reduce, a session, merge, `dlq retry`):
//! its condition, its command (a shell command, a Claude call, a file to write), what it
//! captures, its `on_failure` handler and retries, the handler of its exit code, and once
//! it succeeded its `outputs:`, its validation (with `on_incomplete` rounds) and its
//! `on_success` step. Nested steps run through the same function.
//!
//! `on_failure` and retries answer the command's failure (its exit, a time-out, a
//! `commit_required` without a commit, a capture not of its format). A validation still
//! incomplete after its rounds, `outputs:` that find no file, or a failed `on_success`
//! fail the step without them; `allow_failure` forgives any failure.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::claude::Called;
use super::exec::{self, Executor, Program, StepOutcome, StepSpec};
use super::site::Site;
use super::{StepFailure, git};
use crate::events::record::MapReduceEvent;
use crate::workflow::template::{Changes, Vars};
use crate::workflow::{
    ANALYZE_REMOVED, CaptureFormat, HandlerRuns, PlanStep, PlanValidate, StepKind, Streams,
    WriteFormat, WriteSpec,
};

/// The longest command `sh -c` is given: Linux refuses a single argument over 128 KiB
/// (`MAX_ARG_STRLEN`) with a bare E2BIG.
const MAX_COMMAND: usize = 128 * 1024 - 1;

/// Internal captures: the commits before and after the step before (`${step.*}`).
const STEP_BEFORE: &str = "@step.before";
const STEP_AFTER: &str = "@step.after";

/// What a step that did not fail the phase left: its capture (read by its format) and
/// the rest of what it records, its output when a later step reads `${last.output}`, and
/// its exit code (non-zero only for a failure forgiven).
#[derive(Debug, Default)]
pub(super) struct StepOk {
    captured: Option<String>,
    /// Other names it sets: `NAME.exit_code` of `capture_streams`, `ID.NAME` of `outputs:`.
    also: Vec<(String, String)>,
    output: Option<String>,
    exit_code: i32,
    /// A Claude step's result text: `${claude.output}` after it.
    claude_output: Option<String>,
    /// The commits before and after it, when known.
    heads: Option<(String, String)>,
}

impl StepOk {
    /// Records it in a phase's captures: the step's name and `${shell.output}`, then
    /// `${last.output}` and `${last.exit_code}`. Returns the captured value.
    pub(super) fn record(
        self,
        step: &PlanStep,
        captured: &mut BTreeMap<String, String>,
    ) -> Option<String> {
        if let (Some(name), Some(value)) = (&step.capture, &self.captured) {
            captured.insert(name.clone(), value.clone());
        }
        for (k, v) in self.also {
            captured.insert(k, v);
        }
        // `${shell.output}`: the step's capture, else its output when kept.
        let shell_output = self.captured.clone().or_else(|| self.output.clone());
        captured.insert("shell.output".into(), shell_output.unwrap_or_default());
        captured.insert("last.output".into(), self.output.unwrap_or_default());
        captured.insert("last.exit_code".into(), self.exit_code.to_string());
        if let Some(text) = self.claude_output {
            captured.insert("claude.output".into(), text);
        }
        if let Some((before, after)) = self.heads {
            captured.insert(STEP_BEFORE.into(), before);
            captured.insert(STEP_AFTER.into(), after);
        }
        self.captured
    }
}

/// The names a phase's captures hold for the runner alone, not for later phases.
pub(super) const INTERNAL: [&str; 5] = [
    "shell.output",
    "last.output",
    "last.exit_code",
    STEP_BEFORE,
    STEP_AFTER,
];

/// One run of a step's command, however it ended.
struct Ran {
    outcome: StepOutcome,
    /// Why it failed when its exit code does not say (a Claude stream's error, a file
    /// that could not be written).
    why: Option<String>,
}

/// Runs one step, labelled `label` (`map/2`, `session/3/on_failure/1`) in events, with its
/// handlers and retries.
pub(super) fn run_step(
    exec: &Executor,
    site: &Site<'_>,
    step: &PlanStep,
    vars: &Vars<'_>,
) -> Result<StepOk, StepFailure> {
    let label = format!("{}/{}", site.phase, step.number);
    let start = site
        .log_path
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let result = run_labelled(exec, site, step, vars, &label);
    if let (Some(path), Some(start)) = (site.log_path, start) {
        let code = match &result {
            Ok(ok) => ok.exit_code,
            Err(f) => f.exit_code.unwrap_or(1),
        };
        keep_log(site, &label, path, start, code);
    }
    result
}

/// The most of one step's log kept in the store; a longer one keeps its end, and says
/// where the rest is.
const MAX_STEP_LOG: u64 = 16 << 20;

/// Keeps what the step wrote to its log (from `start`) in the store, named by a
/// `step_output` event: under the home's gc guard until the event is durable (the logger
/// holds it until then, so the step does not wait for a flush), so gc never sees the
/// object unnamed. A failure to keep it is written to the log, not the step's.
fn keep_log(site: &Site<'_>, label: &str, path: &Path, start: u64, exit_code: i32) {
    use std::io::{Read, Seek, SeekFrom};
    let kept = (|| -> Result<(), String> {
        let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let end = file.metadata().map_err(|e| e.to_string())?.len();
        let from = start.max(end.saturating_sub(MAX_STEP_LOG));
        let mut bytes = Vec::new();
        if from > start {
            bytes.extend_from_slice(
                format!(
                    "[the first {} bytes of this step's log are only in '{}']\n",
                    from - start,
                    path.display()
                )
                .as_bytes(),
            );
        }
        file.seek(SeekFrom::Start(from))
            .map_err(|e| e.to_string())?;
        file.take(end - from)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        let guard = site.refs.write_guard().map_err(|e| crate::error_line(&e))?;
        let log = site
            .refs
            .objects()
            .write(crate::store::object::ObjectType::Blob, &bytes)
            .map_err(|e| crate::error_line(&e))?;
        site.event(MapReduceEvent::StepOutput {
            job_id: site.job_id.to_owned(),
            agent_id: site.agent_id.to_owned(),
            item_id: site.item_id.map(str::to_owned),
            step: label.to_owned(),
            attempt: site.attempt,
            exit_code,
            bytes: end - start,
            log,
        });
        site.logger.hold_until_durable(guard);
        Ok(())
    })();
    if let Err(e) = kept {
        write_log(
            site.log,
            &format!("# this step's log is not in the store: {e}\n"),
        );
    }
}

fn run_labelled(
    exec: &Executor,
    site: &Site<'_>,
    step: &PlanStep,
    vars: &Vars<'_>,
    label: &str,
) -> Result<StepOk, StepFailure> {
    let fail = |message: String, exit_code, interrupted| StepFailure {
        line: step.line,
        message: site.mask.text(&message),
        detail: String::new(),
        exit_code,
        interrupted,
    };
    // What git says the step before changed, and the workflow so far, when the step reads
    // it (`${step.files_added}`).
    let (step_changes, workflow_changes) = match step.reads_git() {
        true => git_changes(site, vars),
        false => (None, None),
    };
    let vars = &Vars {
        step_changes: step_changes.as_ref(),
        workflow_changes: workflow_changes.as_ref(),
        ..*vars
    };
    if let Some(when) = &step.when
        && !when.eval(vars).map_err(|e| fail(e, None, false))?
    {
        write_log(site.log, &format!("# skipped (when: {})\n", when.text()));
        return Ok(StepOk::default());
    }
    let env = step_env(site, step, vars).map_err(|e| fail(e, None, false))?;
    let cwd = working_dir(site, step, vars).map_err(|e| fail(e, None, false))?;
    let here = Site {
        env: &env,
        cwd: &cwd,
        ..site.clone()
    };
    let site = &here;
    let track = step.commit_required || !step.outputs.is_empty() || site.track_git;
    let head_before = track.then(|| git::head(site.cwd).ok()).flatten();
    let attempts = step.on_failure.as_ref().map_or(1, |h| h.max_attempts);
    let mut last = None;
    let mut failed: Option<Ran> = None;
    let mut succeeded = None;
    for attempt in 1..=attempts {
        let ran = once(exec, site, step, vars, label)?;
        let out = &ran.outcome;
        if out.interrupted || exec.interrupted() && !out.success() {
            return Err(fail("interrupted".into(), None, true));
        }
        let ok = out.success() && ran.why.is_none();
        let no_commit = ok
            && step.commit_required
            && head_before.is_some()
            && head_before == git::head(site.cwd).ok();
        let kept = kept(step, &ran, ok);
        // A handler for this exit code decides the outcome: its success handles the code.
        if let Some((code, handler)) = step
            .on_exit_code
            .iter()
            .find(|(code, _)| *code == out.exit_code)
        {
            let mut captured = vars.captured.cloned().unwrap_or_default();
            failure_names(&mut captured, step, &ran, attempt);
            let hvars = Vars {
                captured: Some(&captured),
                ..*vars
            };
            let hlabel = format!("{label}/on_exit_code/{code}");
            write_log(site.log, &format!("# exit code {code}: its step runs\n"));
            match run_labelled(exec, site, handler, &hvars, &hlabel) {
                Ok(_) if !no_commit => {
                    succeeded = Some((ran, kept));
                    break;
                }
                Ok(_) => {}
                Err(f) if f.interrupted => return Err(f),
                Err(f) => {
                    last = Some((
                        format!("the step for exit code {code} failed: {}", f.message),
                        out.exit_code,
                        f.detail,
                    ));
                    break;
                }
            }
        }
        let capture_error = kept.as_ref().and_then(|k| k.as_ref().err()).cloned();
        if ok && !no_commit && capture_error.is_none() {
            succeeded = Some((ran, kept));
            break;
        }
        let message = if no_commit {
            "commit_required: the step succeeded but made no commit".to_owned()
        } else if let Some(why) = capture_error.filter(|_| ok) {
            why
        } else {
            failure_message(&ran, step.timeout, &out.stderr_tail)
        };
        last = Some((message, out.exit_code, out.stderr_tail.clone()));
        if let Some(h) = &step.on_failure {
            let mut captured = vars.captured.cloned().unwrap_or_default();
            failure_names(&mut captured, step, &ran, attempt);
            let mut handled = !h.steps.is_empty();
            let runs = match h.runs {
                HandlerRuns::AfterEach => true,
                // The last attempt's failure is the step's.
                HandlerRuns::BetweenAttempts => attempt < attempts,
                HandlerRuns::AfterFirst => attempt == 1,
            };
            let handlers = if runs { &h.steps[..] } else { &[][..] };
            for (i, hs) in handlers.iter().enumerate() {
                let hlabel = numbered(label, "on_failure", i, h.steps.len());
                let hvars = Vars {
                    captured: Some(&captured),
                    ..*vars
                };
                match run_labelled(exec, site, hs, &hvars, &hlabel) {
                    Ok(ok) => {
                        ok.record(hs, &mut captured);
                    }
                    Err(f) if f.interrupted => return Err(f),
                    Err(f) => {
                        write_log(
                            site.log,
                            &format!("# on_failure step failed: {}\n", f.message),
                        );
                        handled = false;
                        break;
                    }
                }
            }
            if attempt == attempts && !h.fail_workflow.unwrap_or(!handled) {
                write_log(
                    site.log,
                    match h.fail_workflow {
                        Some(_) => "# still failing; on_failure says go on\n",
                        None => "# still failing; handled by on_failure, the workflow goes on\n",
                    },
                );
                let (message, code, _) = last.take().unwrap_or_default();
                let _ = message;
                return Ok(StepOk {
                    captured: kept_forgiven(step, &ran),
                    output: output_text(step, &ran),
                    exit_code: code,
                    also: stream_names(step, &ran),
                    ..StepOk::default()
                });
            }
        }
        failed = Some(ran);
    }
    let Some((ran, kept)) = succeeded else {
        let (message, code, detail) = last.unwrap_or_default();
        if step.allow_failure {
            write_log(site.log, &format!("# failed, allowed: {message}\n"));
            // What it captured still counts (`capture_streams` records the failure).
            let (captured, also) = match &failed {
                Some(ran) => (kept_forgiven(step, ran), stream_names(step, ran)),
                None => (None, Vec::new()),
            };
            return Ok(StepOk {
                captured,
                also,
                exit_code: if code == 0 { 1 } else { code },
                ..StepOk::default()
            });
        }
        return Err(StepFailure {
            detail,
            ..fail(message, Some(code), false)
        });
    };
    // The command succeeded: what follows it.
    let head_after = track.then(|| git::head(site.cwd).ok()).flatten();
    let mut done = StepOk {
        captured: kept.and_then(Result::ok),
        also: stream_names(step, &ran),
        output: output_text(step, &ran),
        exit_code: 0,
        claude_output: (step.kind == StepKind::Claude).then(|| stdout(&ran).unwrap_or_default()),
        heads: head_before.zip(head_after),
    };
    let after = |done: &StepOk| -> Result<(), StepFailure> {
        let mut captured = vars.captured.cloned().unwrap_or_default();
        if let (Some(name), Some(v)) = (&step.capture, &done.captured) {
            captured.insert(name.clone(), v.clone());
        }
        captured.extend(done.also.iter().cloned());
        // `on_success` reads this step as the step before.
        captured.insert(
            "last.output".into(),
            done.output.clone().unwrap_or_default(),
        );
        captured.insert("last.exit_code".into(), "0".into());
        let vars = Vars {
            captured: Some(&captured),
            ..*vars
        };
        if let Some(v) = &step.validate {
            validate(exec, site, step, v, &vars, label)?;
        }
        if let Some(next) = &step.on_success {
            run_labelled(exec, site, next, &vars, &format!("{label}/on_success"))?;
        }
        Ok(())
    };
    let outputs = outputs(site, step, &done).map_err(|e| fail(e, None, false));
    let result = outputs.and_then(|found| {
        done.also.extend(found);
        after(&done)
    });
    match result {
        Ok(()) => Ok(done),
        Err(f) if f.interrupted => Err(f),
        Err(f) if step.allow_failure => {
            write_log(site.log, &format!("# failed, allowed: {}\n", f.message));
            done.exit_code = f.exit_code.filter(|c| *c != 0).unwrap_or(1);
            Ok(done)
        }
        Err(f) => Err(f),
    }
}

/// The changes of the step before (its recorded commits) and of the workflow since its
/// base; `None` where git cannot tell.
fn git_changes(site: &Site<'_>, vars: &Vars<'_>) -> (Option<Changes>, Option<Changes>) {
    let captured = vars.captured;
    let step = captured
        .and_then(|c| Some((c.get(STEP_BEFORE)?, c.get(STEP_AFTER)?)))
        .and_then(|(a, b)| git::changes(site.cwd, a, b).ok());
    let workflow = site
        .base
        .and_then(|base| git::changes(site.cwd, base, "HEAD").ok());
    (step, workflow)
}

/// The step's environment: the site's, with the step's own `env:` rendered over it.
fn step_env(
    site: &Site<'_>,
    step: &PlanStep,
    vars: &Vars<'_>,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = match step.clear_env {
        // Only what the step says, and what the runner tells every step.
        true => site
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("PRODIGY_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        false => site.env.clone(),
    };
    for (k, t) in &step.env {
        env.insert(
            k.clone(),
            t.render(vars).map_err(|e| format!("env {k}: {e}"))?,
        );
    }
    Ok(env)
}

/// Where the step runs: its worktree, or `working_dir` inside it (or elsewhere when
/// written so: an absolute path, or `..`), which must be a directory. A `working_dir`
/// made from variables (an item's fields, captures) must stay inside the worktree, as
/// `write_file`'s path must: their text is data, and may not choose where a step runs.
fn working_dir(site: &Site<'_>, step: &PlanStep, vars: &Vars<'_>) -> Result<PathBuf, String> {
    let Some(t) = &step.working_dir else {
        return Ok(site.cwd.to_owned());
    };
    let dir = t.render(vars).map_err(|e| format!("working_dir: {e}"))?;
    let path = site.cwd.join(dir.trim());
    if !path.is_dir() {
        return Err(format!(
            "working_dir '{}' is not a directory",
            path.display()
        ));
    }
    if t.reads_variables() {
        // The resolved directory is where the step runs: a link swapped after the check
        // changes nothing.
        let resolved = match (path.canonicalize(), site.cwd.canonicalize()) {
            (Ok(dir), Ok(worktree)) if dir.starts_with(&worktree) => Some(dir),
            _ => None,
        };
        let Some(dir) = resolved else {
            return Err(format!(
                "working_dir '{}' (from '{}') leaves the worktree '{}': one made from variables must stay inside it",
                path.display(),
                t.source(),
                site.cwd.display()
            ));
        };
        return Ok(dir);
    }
    Ok(path)
}

/// Runs the command once.
fn once(
    exec: &Executor,
    site: &Site<'_>,
    step: &PlanStep,
    vars: &Vars<'_>,
    label: &str,
) -> Result<Ran, StepFailure> {
    let fail = |message: String| StepFailure {
        line: step.line,
        message: site.mask.text(&message),
        detail: String::new(),
        exit_code: None,
        interrupted: false,
    };
    let timeout = limit(step.timeout, site.deadline);
    if timeout == Some(Duration::ZERO) {
        return Err(StepFailure {
            exit_code: Some(exec::TIMEOUT_EXIT),
            ..fail("agent timed out (agent_timeout_secs)".into())
        });
    }
    let started = Instant::now();
    let ended = |ok: bool, why: Option<String>| Ran {
        outcome: StepOutcome {
            exit_code: if ok { 0 } else { 1 },
            timed_out: false,
            interrupted: false,
            stdout: Vec::new(),
            stdout_bytes: 0,
            stdout_tail: Vec::new(),
            stderr_tail: String::new(),
            stderr: Vec::new(),
            duration: started.elapsed(),
        },
        why,
    };
    match step.kind {
        StepKind::Analyze => Ok(ended(false, Some(ANALYZE_REMOVED.to_owned()))),
        StepKind::WriteFile => {
            let w = step.write.as_ref().expect("a write_file step has its spec");
            match write_file(site, w, vars) {
                Ok(line) => {
                    write_log(site.log, &format!("{line}\n"));
                    Ok(ended(true, None))
                }
                Err(e) => Ok(ended(false, Some(format!("write_file: {e}")))),
            }
        }
        StepKind::Shell | StepKind::Claude => {
            let claude = step.kind == StepKind::Claude;
            let mut command = step.command.render(vars).map_err(fail)?;
            if claude {
                // The original pastes the workflow's variables into Claude commands
                // (`/implement $ARG --project $PROJECT`); a shell step reads them from its
                // environment.
                command = paste(&command, site.paste);
            }
            if command.len() > MAX_COMMAND {
                return Err(fail(format!(
                    "the command is {} KiB after interpolation, more than the system takes in \
                     one argument ({} KiB); read big values from files instead (reduce steps \
                     get $PRODIGY_MAP_RESULTS, the path of ${{map.results_json}})",
                    command.len() / 1024,
                    MAX_COMMAND / 1024
                )));
            }
            let key = if claude { "claude: " } else { "" };
            let shown = site.mask.text(&command);
            match &step.name {
                Some(name) => write_log(site.log, &format!("$ {key}{shown}   # {name}\n")),
                None => write_log(site.log, &format!("$ {key}{shown}\n")),
            }
            let keep = step.capture.is_some() || step.keep_output || step.streams.extended();
            let called = launch(exec, site, step, label, &command, timeout, keep).map_err(|e| {
                let program = if claude { "claude" } else { "sh" };
                fail(format!("cannot start {program}: {e}"))
            })?;
            Ok(Ran {
                outcome: called.outcome,
                why: called.failure,
            })
        }
    }
}

/// Runs a step's command: `sh -c`, or a Claude call (whose output is its result text,
/// always kept).
fn launch(
    exec: &Executor,
    site: &Site<'_>,
    step: &PlanStep,
    label: &str,
    command: &str,
    timeout: Option<Duration>,
    capture: bool,
) -> std::io::Result<Called> {
    match step.kind {
        StepKind::Claude => super::claude::call(exec, site, label, command, timeout),
        _ => exec
            .run(&StepSpec {
                program: Program::Shell(command),
                cwd: site.cwd,
                env: site.env,
                timeout,
                capture: capture.then_some(exec::MAX_CAPTURE),
                log: site.log,
                lines: None,
                clear_env: step.clear_env,
                keep_stderr: step.streams.stderr,
                mask: Some(Arc::clone(site.mask)),
                tee: site.tee.clone(),
            })
            .map(|outcome| Called {
                outcome,
                failure: None,
            }),
    }
}

/// The step's standard output as text, or why it is not one.
fn stdout(ran: &Ran) -> Result<String, String> {
    let out = &ran.outcome;
    if out.stdout_bytes > exec::MAX_CAPTURE as u64 {
        // A capture is whole or an error, never silently cut.
        return Err(format!(
            "the step printed {} bytes, more than the {} MiB a capture holds; write the output \
             to a file and read it from there",
            out.stdout_bytes,
            exec::MAX_CAPTURE >> 20
        ));
    }
    out.stdout_text().map(str::to_owned)
}

/// The step's standard error as text (kept whole for `capture_streams`).
fn stderr(ran: &Ran) -> Result<String, String> {
    std::str::from_utf8(&ran.outcome.stderr)
        .map(|s| s.trim_end_matches('\n').to_owned())
        .map_err(|e| {
            format!(
                "its standard error is not UTF-8 at byte {}",
                e.valid_up_to()
            )
        })
}

/// The capture's value by the step's format, when it captures (and has run to its
/// end, or records more than its output): `Err` says why it cannot be made.
fn kept(step: &PlanStep, ran: &Ran, ok: bool) -> Option<Result<String, String>> {
    // A failed step captures only what records the failure: its streams' fields, or a
    // boolean capture (then false, as the original).
    if !ok && !step.streams.extended() && step.capture_format != CaptureFormat::Boolean {
        return None;
    }
    kept_read(step, ran, ok)
}

/// What a failed step whose failure was forgiven (`allow_failure`, or `on_failure` going
/// on) captured: what it printed, as the original captures it before it handles the
/// failure, so the steps after it read it.
fn kept_forgiven(step: &PlanStep, ran: &Ran) -> Option<String> {
    kept_read(step, ran, false).and_then(Result::ok)
}

fn kept_read(step: &PlanStep, ran: &Ran, ok: bool) -> Option<Result<String, String>> {
    let name = step.capture.as_ref()?;
    let text = match step.streams.stdout {
        true => stdout(ran),
        false => stderr(ran),
    };
    Some(
        text.and_then(|t| step.capture_format.read(&t, ok))
            .map_err(|why| format!("capture {name}: {why}")),
    )
}

/// `NAME.stderr`, `NAME.exit_code`, `NAME.success`, `NAME.duration` of `capture_streams`.
fn stream_names(step: &PlanStep, ran: &Ran) -> Vec<(String, String)> {
    let Some(name) = &step.capture else {
        return Vec::new();
    };
    let Streams {
        stdout,
        stderr: err,
        exit_code,
        success,
        duration,
    } = step.streams;
    let out = &ran.outcome;
    let mut also = Vec::new();
    if err && stdout {
        also.push((format!("{name}.stderr"), stderr(ran).unwrap_or_default()));
    }
    if exit_code {
        also.push((format!("{name}.exit_code"), out.exit_code.to_string()));
    }
    if success {
        let ok = out.success() && ran.why.is_none();
        also.push((format!("{name}.success"), ok.to_string()));
    }
    if duration {
        also.push((
            format!("{name}.duration"),
            format!("{:.3}", out.duration.as_secs_f64()),
        ));
    }
    also
}

/// The output the next step reads as `${last.output}`, when it does.
fn output_text(step: &PlanStep, ran: &Ran) -> Option<String> {
    step.keep_output.then(|| stdout(ran).unwrap_or_default())
}

/// The most of a failed step's output a handler's `${shell.output}` holds: its end, from
/// a line's start. A command given it stays well under [`MAX_COMMAND`].
const HANDLER_OUTPUT: usize = crate::runner::exec::STDOUT_TAIL;

/// What a failure handler reads: `${shell.output}` (what the failed step printed, as the
/// original gives it to its sessions' handlers: `STDOUT:\n…\n\nSTDERR:\n…`, or the one
/// stream it wrote to; of standard output the last [`HANDLER_OUTPUT`] bytes from a line's
/// start, of standard error its tail), `${shell.stderr}`, `${shell.stdout}` (whole),
/// `${shell.exit_code}` and `${shell.attempt}`, and the step's own capture name: what it
/// printed (its standard output, or when that is empty its standard error's tail).
fn failure_names(
    captured: &mut BTreeMap<String, String>,
    step: &PlanStep,
    ran: &Ran,
    attempt: u32,
) {
    let out = &ran.outcome;
    let tail = match &ran.why {
        Some(why) if out.stderr_tail.trim().is_empty() => why.clone(),
        _ => out.stderr_tail.trim_end_matches('\n').to_owned(),
    };
    let stdout = out.stdout_text().unwrap_or_default();
    let printed = match stdout.trim().is_empty() {
        true => &tail,
        false => stdout,
    };
    // The end of all it printed (the capture holds its first MiB only), from a line's
    // start when the tail begins inside one.
    let stdout_end = String::from_utf8_lossy(&out.stdout_tail);
    let stdout_end = end_of(&stdout_end, HANDLER_OUTPUT).trim_end_matches('\n');
    // Both streams, as the original's sessions give a handler (`STDOUT:`/`STDERR:`), or
    // the one it wrote to.
    let output = match (stdout_end.trim().is_empty(), tail.trim().is_empty()) {
        (true, _) => tail.clone(),
        (false, true) => stdout_end.to_owned(),
        (false, false) => format!("STDOUT:\n{stdout_end}\n\nSTDERR:\n{tail}"),
    };
    captured.insert("shell.output".into(), output);
    captured.insert("shell.stderr".into(), tail.clone());
    captured.insert("shell.stdout".into(), stdout.to_owned());
    captured.insert("shell.exit_code".into(), out.exit_code.to_string());
    // Which attempt failed, from 1 (the original's `${shell.attempt}`).
    captured.insert("shell.attempt".into(), attempt.to_string());
    if let Some(name) = step
        .capture
        .as_ref()
        .filter(|c| !["shell.output", "claude.output"].contains(&c.as_str()))
    {
        captured.insert(name.clone(), printed.to_owned());
    }
}

/// The last `most` bytes of `text` or fewer, from the start of a line (from a character's
/// when one line is longer).
fn end_of(text: &str, most: usize) -> &str {
    if text.len() <= most {
        return text;
    }
    let mut from = text.len() - most;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    // Already at a line's start.
    if text.as_bytes()[from - 1] == b'\n' {
        return &text[from..];
    }
    match text[from..].find('\n') {
        Some(at) if at + 1 < text.len() - from => &text[from + at + 1..],
        _ => &text[from..],
    }
}

/// One line saying how the command failed.
fn failure_message(ran: &Ran, timeout: Option<Duration>, stderr_tail: &str) -> String {
    let out = &ran.outcome;
    if out.timed_out {
        let shown = |limit: Duration| match limit.as_secs() {
            0 => format!("{}ms", limit.as_millis()),
            secs => format!("{secs}s"),
        };
        // Its own limit, or what was left of its phase's or agent's.
        let what = match timeout {
            Some(t) if out.duration >= t => format!("timed out after {}", shown(t)),
            _ => "timed out: the time limit of its phase or agent ran out".to_owned(),
        };
        return format!(
            "{what} (stopped with its process group: SIGTERM, then SIGKILL after the grace \
             period)"
        );
    }
    if let Some(why) = &ran.why {
        return why.clone();
    }
    // One line for messages; the whole tail goes to the DLQ and the log.
    let last = super::last_line(stderr_tail);
    if last.is_empty() {
        format!("exit code {}", out.exit_code)
    } else {
        format!("exit code {}: {last}", out.exit_code)
    }
}

/// `outputs:`: for each, the first file (by path) of the step's commits that matches its
/// glob, as `${ID.NAME}`.
fn outputs(
    site: &Site<'_>,
    step: &PlanStep,
    done: &StepOk,
) -> Result<Vec<(String, String)>, String> {
    if step.outputs.is_empty() {
        return Ok(Vec::new());
    }
    let files = match &done.heads {
        Some((before, after)) if before != after => git::changes(site.cwd, before, after)
            .map(|c| {
                let mut all: Vec<String> = c.added.into_iter().chain(c.modified).collect();
                all.sort();
                all
            })
            .map_err(|e| format!("outputs: {e}"))?,
        _ => Vec::new(),
    };
    step.outputs
        .iter()
        .map(|(var, pattern)| {
            files
                .iter()
                .find(|f| crate::workflow::glob::matches(pattern, f))
                .map(|f| (var.clone(), f.clone()))
                .ok_or_else(|| {
                    format!(
                        "outputs: ${{{var}}}: no file the step committed matches {pattern:?}{}",
                        if files.is_empty() {
                            " (it committed nothing)"
                        } else {
                            ""
                        }
                    )
                })
        })
        .collect()
}

/// A validation's result, as the step's result file (or last command) gives it.
#[derive(Debug, Clone)]
struct Verdict {
    completion: f64,
    status: String,
    /// The result's fields, for `${validation.*}`.
    fields: serde_json::Map<String, Value>,
}

impl Verdict {
    /// A result that could not be had: 0% with the reason as what is missing.
    fn failed(why: String) -> Verdict {
        let mut fields = serde_json::Map::new();
        fields.insert("missing".into(), Value::from(vec![why]));
        fields.insert("gaps".into(), Value::Object(serde_json::Map::new()));
        Verdict {
            completion: 0.0,
            status: "failed".into(),
            fields,
        }
    }

    /// Reads a result: a JSON object with a number `completion_percentage` (or
    /// `completion`); anything else is a failed validation saying why, never a pass.
    fn read(text: &str, what: &str) -> Verdict {
        let parsed: Result<Value, _> = serde_json::from_str(text.trim());
        let Ok(Value::Object(fields)) = parsed else {
            return Verdict::failed(format!("{what} is not a JSON object"));
        };
        let completion = fields
            .get("completion_percentage")
            .or_else(|| fields.get("completion"))
            .and_then(Value::as_f64);
        let Some(completion) = completion else {
            return Verdict::failed(format!("{what} has no number completion_percentage"));
        };
        let status = fields
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        Verdict {
            completion,
            status,
            fields,
        }
    }

    /// `${validation.*}`: each field of the result (text as it is, a list of strings
    /// joined by ", ", other JSON as JSON), and `completion`, `missing_count`,
    /// `attempt_number`; `gaps` is always JSON.
    fn names(&self, attempt: u32) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .fields
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(a) if k != "gaps" && a.iter().all(Value::is_string) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    other => other.to_string(),
                };
                (format!("validation.{k}"), text)
            })
            .collect();
        let missing = self
            .fields
            .get("missing")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        out.push(("validation.completion".into(), self.completion.to_string()));
        out.push(("validation.missing_count".into(), missing.to_string()));
        out.push(("validation.attempt_number".into(), attempt.to_string()));
        if !self.fields.contains_key("gaps") {
            out.push(("validation.gaps".into(), "{}".into()));
        }
        if !self.fields.contains_key("missing") {
            out.push(("validation.missing".into(), String::new()));
        }
        out.push(("validation.status".into(), self.status.clone()));
        out
    }

    fn missing(&self) -> Vec<String> {
        self.fields
            .get("missing")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Validates a step that succeeded: runs the validation, and while the result is under
/// the threshold, `on_incomplete` then the validation again, up to its attempts.
fn validate(
    exec: &Executor,
    site: &Site<'_>,
    step: &PlanStep,
    v: &PlanValidate,
    vars: &Vars<'_>,
    label: &str,
) -> Result<(), StepFailure> {
    let fail = |message: String| StepFailure {
        line: v.line,
        message: site.mask.text(&message),
        detail: String::new(),
        exit_code: None,
        interrupted: false,
    };
    let mut env = site.env.clone();
    env.insert("PRODIGY_VALIDATION".into(), "true".into());
    let vsite = Site {
        env: &env,
        ..site.clone()
    };
    let rounds = v.on_incomplete.as_ref().map_or(0, |i| i.max_attempts);
    let mut verdict = check(exec, &vsite, v, vars, label, 1)?;
    record(site, label, v, &verdict, 1);
    let mut round = 0;
    while verdict.completion < v.threshold && round < rounds {
        let Some(inc) = &v.on_incomplete else { break };
        round += 1;
        write_log(
            site.log,
            &format!(
                "# validation {:.1}% < {}%: on_incomplete, round {round} of {rounds}\n",
                verdict.completion, v.threshold
            ),
        );
        let mut captured = vars.captured.cloned().unwrap_or_default();
        captured.extend(verdict.names(round));
        let mut handled = true;
        for (i, s) in inc.steps.iter().enumerate() {
            let ilabel = numbered(label, "on_incomplete", i, inc.steps.len());
            let ivars = Vars {
                captured: Some(&captured),
                ..*vars
            };
            match run_labelled(exec, site, s, &ivars, &ilabel) {
                Ok(ok) => {
                    ok.record(s, &mut captured);
                }
                Err(f) if f.interrupted => return Err(f),
                Err(f) => {
                    write_log(
                        site.log,
                        &format!("# on_incomplete step failed: {}\n", f.message),
                    );
                    handled = false;
                    break;
                }
            }
        }
        if !handled {
            break;
        }
        verdict = check(exec, &vsite, v, vars, label, round + 1)?;
        record(site, label, v, &verdict, round + 1);
    }
    if verdict.completion >= v.threshold {
        return Ok(());
    }
    let gaps = verdict.missing().join("; ");
    let message = format!(
        "validation: {:.1}% complete, under the threshold of {}%{}{}",
        verdict.completion,
        v.threshold,
        match round {
            0 => String::new(),
            n => format!(" after {n} on_incomplete round(s)"),
        },
        if gaps.is_empty() {
            String::new()
        } else {
            format!(" (missing: {gaps})")
        }
    );
    let fail_workflow = v.on_incomplete.as_ref().is_none_or(|i| i.fail_workflow);
    if fail_workflow {
        return Err(fail(message));
    }
    write_log(
        site.log,
        &format!("# {message}; on_incomplete says go on\n"),
    );
    let _ = step;
    Ok(())
}

/// One validation: its commands, then the result from the result file or the last
/// command's output.
fn check(
    exec: &Executor,
    site: &Site<'_>,
    v: &PlanValidate,
    vars: &Vars<'_>,
    label: &str,
    attempt: u32,
) -> Result<Verdict, StepFailure> {
    let mut captured = vars.captured.cloned().unwrap_or_default();
    let mut last_output = String::new();
    for (i, s) in v.steps.iter().enumerate() {
        let vvars = Vars {
            captured: Some(&captured),
            ..*vars
        };
        let vlabel = numbered(label, "validate", i, v.steps.len());
        let vlabel = match attempt {
            1 => vlabel,
            n => format!("{vlabel}#{n}"),
        };
        // The result, when it comes from a command, is its output.
        let mut s = s.clone();
        s.keep_output = true;
        match run_labelled(exec, site, &s, &vvars, &vlabel) {
            Ok(ok) => {
                last_output = ok.output.clone().unwrap_or_default();
                ok.record(&s, &mut captured);
            }
            Err(f) if f.interrupted => return Err(f),
            Err(f) => {
                return Ok(Verdict::failed(format!(
                    "validation step {} failed: {}",
                    i + 1,
                    f.message
                )));
            }
        }
    }
    match &v.result_file {
        Some(t) => {
            let vvars = Vars {
                captured: Some(&captured),
                ..*vars
            };
            let name = t.render(&vvars).map_err(|e| StepFailure {
                line: v.line,
                message: format!("validate: result_file: {e}"),
                detail: String::new(),
                exit_code: None,
                interrupted: false,
            })?;
            let path = site.cwd.join(name.trim());
            Ok(match crate::fsutil::read_text(&path) {
                Ok(text) => Verdict::read(&site.mask.text(&text), &format!("'{}'", name.trim())),
                Err(e) => {
                    Verdict::failed(format!("cannot read result_file '{}': {e}", name.trim()))
                }
            })
        }
        None => Ok(Verdict::read(&last_output, "the validation's output")),
    }
}

/// Logs a validation's result: the step log and a `step_validated` event.
fn record(site: &Site<'_>, label: &str, v: &PlanValidate, verdict: &Verdict, attempt: u32) {
    let passed = verdict.completion >= v.threshold;
    write_log(
        site.log,
        &format!(
            "# validation {attempt}: {:.1}% (threshold {}%): {}\n",
            verdict.completion,
            v.threshold,
            if passed { "passed" } else { "incomplete" }
        ),
    );
    site.event(MapReduceEvent::StepValidated {
        job_id: site.job_id.to_owned(),
        agent_id: site.agent_id.to_owned(),
        item_id: site.item_id.map(str::to_owned),
        step: label.to_owned(),
        attempt,
        completion: verdict.completion,
        threshold: v.threshold,
        status: verdict.status.clone(),
        passed,
        missing: verdict
            .missing()
            .into_iter()
            .map(|m| site.mask.text(&m))
            .collect(),
    });
}

/// Writes a `write_file:` step's file: its path must stay inside the worktree (no `..`,
/// not absolute, no symbolic link on the way out); the content is checked as JSON or YAML
/// when the format says so. Returns the line for the log.
fn write_file(site: &Site<'_>, w: &WriteSpec, vars: &Vars<'_>) -> Result<String, String> {
    let name = w.path.render(vars)?;
    let content = w.content.render(vars)?;
    let rel = Path::new(name.trim());
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "path {:?} leaves the worktree (it must be relative, without ..)",
            name.trim()
        ));
    }
    // Git's own files are not the worktree's: a worktree's `.git` says where its
    // repository is, and an item that rewrote it sent the agent's commits to the user's
    // own branch. An empty path names no file.
    if rel
        .components()
        .any(|c| c.as_os_str().eq_ignore_ascii_case(".git"))
    {
        return Err(format!(
            "path {:?} is inside git's own files (.git), which a step may not write",
            name.trim()
        ));
    }
    if rel.file_name().is_none() {
        return Err(format!("path {:?} names no file", name.trim()));
    }
    let path = site.cwd.join(rel);
    let parent = path.parent().unwrap_or(site.cwd).to_owned();
    if w.create_dirs {
        std::fs::create_dir_all(&parent)
            .map_err(|e| format!("cannot make '{}': {e}", parent.display()))?;
    }
    // A directory on the way that is a link out of the worktree is refused too.
    let root = site
        .cwd
        .canonicalize()
        .map_err(|e| format!("cannot read '{}': {e}", site.cwd.display()))?;
    let real_parent = parent.canonicalize().map_err(|e| {
        format!(
            "no directory '{}' ({e}); set create_dirs: true",
            parent.display()
        )
    })?;
    if !real_parent.starts_with(&root) {
        return Err(format!(
            "path {:?} leads out of the worktree through a symbolic link",
            name.trim()
        ));
    }
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!("path {:?} is a symbolic link", name.trim()));
    }
    let bytes = match w.format {
        WriteFormat::Text => content.into_bytes(),
        WriteFormat::Json => {
            let v: Value = serde_json::from_str(&content)
                .map_err(|e| format!("the content is not JSON: {e}"))?;
            let mut text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            text.push('\n');
            text.into_bytes()
        }
        WriteFormat::Yaml => {
            let v: Value = serde_saphyr::from_str(&content)
                .map_err(|e| format!("the content is not YAML (nor JSON): {e}"))?;
            serde_saphyr::to_string(&v)
                .map_err(|e| e.to_string())?
                .into_bytes()
        }
    };
    let len = bytes.len();
    let target = real_parent.join(path.file_name().unwrap_or_default());
    crate::fsutil::write_atomic(&target, &real_parent, &bytes, w.mode.unwrap_or(0o644))
        .map_err(|e| crate::error_line(&e))?;
    Ok(format!("wrote {len} bytes to {}", name.trim()))
}

/// `$NAME` and `${NAME}` in `command` replaced by the values of `names` (not `$NAMES`,
/// `$NAME_X`).
pub(super) fn paste(command: &str, names: &BTreeMap<String, String>) -> String {
    if names.is_empty() || !command.contains('$') {
        return command.to_owned();
    }
    let mut out = String::with_capacity(command.len());
    let mut rest = command;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        match names.get(name) {
            Some(value) if !name.is_empty() => {
                out.push_str(value);
                rest = &after[len..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A nested step's label: `map/2/on_failure`, or with several `map/2/on_failure/1`, ….
fn numbered(label: &str, what: &str, i: usize, of: usize) -> String {
    match of {
        1 => format!("{label}/{what}"),
        _ => format!("{label}/{what}/{}", i + 1),
    }
}

fn limit(step: Option<Duration>, deadline: Option<Instant>) -> Option<Duration> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match (step, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub(super) fn write_log(log: &Arc<Mutex<std::fs::File>>, text: &str) {
    use std::io::Write;
    let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
    let _ = f.write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// The end of a text from a line's start: a whole line is kept when the cut falls
    /// just after a line break, a partial one dropped.
    #[test]
    fn the_end_of_a_text_starts_a_line() {
        assert_eq!(super::end_of("aaa\nbbb\n", 4), "bbb\n");
        assert_eq!(super::end_of("aaa\nbbb\n", 5), "bbb\n");
        assert_eq!(super::end_of("aaa\nbbb\n", 8), "aaa\nbbb\n");
        assert_eq!(super::end_of("aaaaaa", 3), "aaa");
        // The cut just after a break: that line is whole, kept.
        assert_eq!(super::end_of("aaa\nbbb\nccc", 7), "bbb\nccc");
        assert_eq!(super::end_of("aaa\nbbb\nccc", 6), "ccc");
    }

    #[test]
    fn variables_are_pasted_as_words() {
        let names: BTreeMap<String, String> = [("ARG", "12"), ("PROJECT", "p x")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        assert_eq!(
            super::paste(
                "/implement $ARG --x ${ARG} $ARGS $ARG_1 $ --p $PROJECT",
                &names
            ),
            "/implement 12 --x 12 $ARGS $ARG_1 $ --p p x"
        );
    }

    #[test]
    fn results_are_read_strictly() {
        let v = super::Verdict::read(
            r#"{"completion_percentage": 80, "status": "incomplete", "missing": ["a", "b"],
                "gaps": {"x": {"description": "d"}}, "incomplete_specs": ["s1"]}"#,
            "r",
        );
        assert_eq!(v.completion, 80.0);
        let names: BTreeMap<String, String> = v.names(2).into_iter().collect();
        assert_eq!(names["validation.missing"], "a, b");
        assert_eq!(names["validation.missing_count"], "2");
        assert_eq!(names["validation.gaps"], r#"{"x":{"description":"d"}}"#);
        assert_eq!(names["validation.incomplete_specs"], "s1");
        assert_eq!(names["validation.attempt_number"], "2");
        // What is not a result is a failed validation, never a pass.
        for bad in [
            "",
            "[]",
            "{\"status\": \"complete\"}",
            "{\"completion_percentage\": \"x\"}",
        ] {
            assert_eq!(super::Verdict::read(bad, "r").completion, 0.0, "{bad}");
        }
    }
}
