//! One agent (a fresh worktree per attempt, the template's steps, its commits) and one
//! step (with its `on_failure` handler and retries), shared by the map phase, setup,
//! reduce and `dlq retry`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::claude::Called;
use super::exec::{self, Executor, Program, StepSpec};
pub(super) use super::site::Site;
use super::{AgentCtx, Msg, StepFailure, agent_branch, agent_dir, git, open_log};
use crate::dlq::Failure;
use crate::events::record::{MapReduceEvent, now_timestamp};
use crate::state::{AgentState, ItemResult, ItemStatus, JobSpec};
use crate::workflow::template::Vars;
use crate::workflow::{PlanStep, StepKind};

/// The longest command `sh -c` is given: Linux refuses a single argument over 128 KiB
/// (`MAX_ARG_STRLEN`) with a bare E2BIG.
const MAX_COMMAND: usize = 128 * 1024 - 1;

/// What an agent whose steps all succeeded leaves at once, beside its worktree
/// (`<job>@agent-<i>.done`), before the slower work of reporting it: if the runner dies
/// before its checkpoint records the item, `resume` adopts the result instead of running
/// the agent again. Made visible by a rename (no fsync: it guards against a killed runner,
/// not a lost machine, after which the agent simply runs again).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DoneMarker {
    pub attempt: u32,
    pub head: String,
    pub output: Option<String>,
    pub duration_ms: u64,
}

pub(super) fn marker_path(spec: &JobSpec, index: usize) -> PathBuf {
    let mut name = agent_dir(spec, index).into_os_string();
    name.push(".done");
    PathBuf::from(name)
}

fn write_marker(path: &Path, marker: &DoneMarker) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let bytes = serde_json::to_vec(marker).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The commit a worktree's detached `HEAD` names, read from its files (no git process, so
/// the marker is written within microseconds of the last step's end).
fn detached_head(worktree: &Path) -> Option<String> {
    let dotgit = std::fs::read_to_string(worktree.join(".git")).ok()?;
    let gitdir = Path::new(dotgit.strip_prefix("gitdir:")?.trim()).to_owned();
    let head = std::fs::read_to_string(gitdir.join("HEAD")).ok()?;
    let head = head.trim();
    (head.len() >= 40 && head.bytes().all(|b| b.is_ascii_hexdigit())).then(|| head.to_owned())
}

/// Runs a step's or handler's command: `sh -c`, or a Claude call (whose output is its
/// result text, always kept).
fn launch(
    exec: &Executor,
    site: &Site<'_>,
    kind: StepKind,
    label: &str,
    command: &str,
    timeout: Option<Duration>,
    capture: bool,
) -> std::io::Result<Called> {
    match kind {
        StepKind::Shell => exec
            .run(&StepSpec {
                program: Program::Shell(command),
                cwd: site.cwd,
                env: site.env,
                timeout,
                capture: capture.then_some(exec::MAX_CAPTURE),
                log: site.log,
                lines: None,
            })
            .map(|outcome| Called {
                outcome,
                failure: None,
            }),
        StepKind::Claude => super::claude::call(exec, site, label, command, timeout),
    }
}

/// What a step that did not fail the phase left: its capture (read by its format), its
/// output when a later step reads `${last.output}`, and its exit code (non-zero only for a
/// failure its `on_failure` forgave with `fail_workflow: false`).
#[derive(Debug, Default)]
pub(super) struct StepOk {
    captured: Option<String>,
    output: Option<String>,
    exit_code: i32,
    /// A Claude step's result text: `${claude.output}` after it.
    claude_output: Option<String>,
}

impl StepOk {
    /// Records it in `vars`'s captures: the step's name and `${shell.output}`, then
    /// `${last.output}` and `${last.exit_code}`. Returns the captured value.
    pub(super) fn record(
        self,
        step: &PlanStep,
        captured: &mut BTreeMap<String, String>,
    ) -> Option<String> {
        if let (Some(name), Some(value)) = (&step.capture, &self.captured) {
            captured.insert(name.clone(), value.clone());
        }
        // `${shell.output}`: the step's capture, else its output when kept.
        let shell_output = self.captured.clone().or_else(|| self.output.clone());
        captured.insert("shell.output".into(), shell_output.unwrap_or_default());
        captured.insert("last.output".into(), self.output.unwrap_or_default());
        captured.insert("last.exit_code".into(), self.exit_code.to_string());
        if let Some(text) = self.claude_output {
            captured.insert("claude.output".into(), text);
        }
        self.captured
    }
}

/// Runs one step, with its `on_failure` handler and retries.
pub(super) fn run_step(
    exec: &Executor,
    site: &Site<'_>,
    step: &PlanStep,
    vars: &Vars<'_>,
) -> Result<StepOk, StepFailure> {
    let (cwd, log, deadline) = (site.cwd, site.log, site.deadline);
    let fail = |message: String, exit_code, interrupted| StepFailure {
        line: step.line,
        message,
        detail: String::new(),
        exit_code,
        interrupted,
    };
    if let Some(when) = &step.when
        && !when.eval(vars).map_err(|e| fail(e, None, false))?
    {
        write_log(log, &format!("# skipped (when: {})\n", when.text()));
        return Ok(StepOk::default());
    }
    let mut command = step
        .command
        .render(vars)
        .map_err(|e| fail(e, None, false))?;
    if step.kind == StepKind::Claude
        && let Some(arg) = site.env.get("ARG")
    {
        // The original pastes `--args`'s value into Claude commands (`/implement $ARG`);
        // a shell step reads `$ARG` from its environment.
        command = paste_arg(&command, arg);
    }
    if command.len() > MAX_COMMAND {
        return Err(fail(
            format!(
                "the command is {} KiB after interpolation, more than the system takes in one \
                 argument ({} KiB); read big values from files instead (reduce steps get \
                 $PRODIGY_MAP_RESULTS, the path of ${{map.results_json}})",
                command.len() / 1024,
                MAX_COMMAND / 1024
            ),
            None,
            false,
        ));
    }
    let label = format!("{}/{}", site.phase, step.number);
    let claude = step.kind == StepKind::Claude;
    let attempts = step.on_failure.as_ref().map_or(1, |h| h.max_attempts);
    let mut last = None;
    for attempt in 1..=attempts {
        let timeout = limit(step.timeout, deadline);
        if timeout == Some(Duration::ZERO) {
            return Err(fail(
                "agent timed out (agent_timeout_secs)".into(),
                Some(exec::TIMEOUT_EXIT),
                false,
            ));
        }
        let key = if claude { "claude: " } else { "" };
        match &step.name {
            Some(name) => write_log(log, &format!("$ {key}{command}   # {name}\n")),
            None => write_log(log, &format!("$ {key}{command}\n")),
        }
        // `commit_required`: the commit the worktree is at before the step.
        let before = step.commit_required.then(|| super::git::head(cwd).ok());
        let keep = step.capture.is_some() || step.keep_output;
        let called =
            launch(exec, site, step.kind, &label, &command, timeout, keep).map_err(|e| {
                let program = if claude { "claude" } else { "sh" };
                fail(format!("cannot start {program}: {e}"), None, false)
            })?;
        let (out, why) = (called.outcome, called.failure);
        if out.interrupted {
            return Err(fail("interrupted".into(), None, true));
        }
        let succeeded = out.success() && why.is_none();
        let no_commit = succeeded
            && before
                .as_ref()
                .is_some_and(|b| *b == super::git::head(cwd).ok());
        // The captured value, read by the step's capture_format.
        let over = out.stdout_bytes > super::exec::MAX_CAPTURE as u64;
        let kept = (keep || claude) && succeeded;
        let text = match kept {
            // A capture is whole or an error, never silently cut.
            true if over => Err(format!(
                "the step printed {} bytes, more than the {} MiB a capture holds; write the \
                 output to a file and read it from there",
                out.stdout_bytes,
                super::exec::MAX_CAPTURE >> 20
            )),
            true => out.stdout_text(),
            false => Ok(""),
        };
        let captured = match (&step.capture, &text) {
            (Some(name), Err(why)) if kept => Some(Err(format!("capture {name}: {why}"))),
            (Some(_), Ok(text)) if kept => Some(step.capture_format.read(text)),
            (None, Err(why)) if kept => Some(Err(format!("capture_output: {why}"))),
            _ => None,
        };
        if succeeded && !no_commit {
            let output = step
                .keep_output
                .then(|| text.as_deref().unwrap_or_default().to_owned());
            let claude_output = claude.then(|| text.as_deref().unwrap_or_default().to_owned());
            match captured {
                None => {
                    return Ok(StepOk {
                        output,
                        claude_output,
                        ..StepOk::default()
                    });
                }
                Some(Ok(value)) => {
                    return Ok(StepOk {
                        captured: Some(value),
                        output,
                        exit_code: 0,
                        claude_output,
                    });
                }
                Some(Err(_)) => {}
            }
        }
        let message = if no_commit {
            "commit_required: the step succeeded but made no commit".to_owned()
        } else if let Some(Err(why)) = captured {
            why
        } else if out.timed_out {
            format!(
                "timed out after {} (stopped with its process group: SIGTERM, then SIGKILL \
                 after the grace period)",
                {
                    let limit = timeout.unwrap_or(out.duration);
                    match limit.as_secs() {
                        0 => format!("{}ms", limit.as_millis()),
                        secs => format!("{secs}s"),
                    }
                }
            )
        } else if let Some(why) = why {
            why
        } else {
            // One line for messages; the whole tail goes to the DLQ and the log.
            let last = super::last_line(&out.stderr_tail);
            if last.is_empty() {
                format!("exit code {}", out.exit_code)
            } else {
                format!("exit code {}: {last}", out.exit_code)
            }
        };
        let code = out.exit_code;
        last = Some((message, code, out.stderr_tail.clone()));
        if let Some(h) = &step.on_failure {
            let mut captured = vars.captured.cloned().unwrap_or_default();
            captured.insert("shell.output".into(), out.stderr_tail.clone());
            let hvars = Vars {
                captured: Some(&captured),
                ..*vars
            };
            if let Ok(cmd) = h.command.render(&hvars) {
                let key = if h.kind == StepKind::Claude {
                    "claude: "
                } else {
                    ""
                };
                write_log(log, &format!("$ {key}{cmd}   # on_failure\n"));
                let _ = launch(
                    exec,
                    site,
                    h.kind,
                    &format!("{label}/on_failure"),
                    &cmd,
                    limit(h.timeout, deadline),
                    false,
                );
            }
            if exec.interrupted() {
                return Err(fail("interrupted".into(), None, true));
            }
            if attempt == attempts && !h.fail_workflow {
                let output = match step.keep_output.then(|| out.stdout_text()) {
                    None => None,
                    Some(Ok(text)) => Some(text.to_owned()),
                    Some(Err(why)) => {
                        let detail = out.stderr_tail.clone();
                        last = Some((format!("capture_output: {why}"), code, detail));
                        break;
                    }
                };
                return Ok(StepOk {
                    captured: None,
                    output,
                    exit_code: code,
                    claude_output: None,
                });
            }
        }
    }
    let (message, code, detail) = last.unwrap_or_default();
    Err(StepFailure {
        detail,
        ..fail(message, Some(code), false)
    })
}

/// `$ARG` and `${ARG}` in `command` replaced by `arg` (not `$ARGS`, `$ARG_X`).
fn paste_arg(command: &str, arg: &str) -> String {
    let mut out = String::with_capacity(command.len());
    let mut rest = command;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let word_end = |s: &str| {
            s.chars()
                .next()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
        };
        if let Some(tail) = after.strip_prefix("${ARG}") {
            out.push_str(arg);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("$ARG").filter(|t| word_end(t)) {
            out.push_str(arg);
            rest = tail;
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

fn limit(step: Option<Duration>, deadline: Option<Instant>) -> Option<Duration> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match (step, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub(super) fn write_log(log: &Arc<Mutex<File>>, text: &str) {
    use std::io::Write;
    let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
    let _ = f.write_all(text.as_bytes());
}

fn meta(agent: &str, worktree: &Path) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("agent_id".into(), Value::String(agent.to_owned()));
    m.insert(
        "worktree".into(),
        Value::String(worktree.display().to_string()),
    );
    m
}

/// One agent: a fresh worktree per attempt, the template's steps, its commits.
pub(super) fn run_agent(ctx: &AgentCtx, index: usize, tx: &mpsc::Sender<Msg>) -> Msg {
    let key = ctx.keys[index].clone();
    let item = &ctx.items[index];
    let spec = &ctx.spec;
    let job_id = spec.id.clone();
    let agent = format!("agent-{index}");
    let branch = agent_branch(spec, index);
    let path = agent_dir(spec, index);
    let log_path = spec.agents_dir.join("logs").join(format!("{agent}.log"));
    let logger = &ctx.logger;
    let log_event = |e: MapReduceEvent| {
        let _ = logger.log_with_metadata(e, meta(&agent, &path));
    };
    let mut env = spec.env.clone();
    env.insert("PRODIGY_JOB_ID".into(), job_id.clone());
    env.insert("PRODIGY_AGENT_ID".into(), agent.clone());
    env.insert("PRODIGY_ITEM_ID".into(), key.clone());
    // The item for scripts that read it rather than have it pasted: JSON, exact.
    env.insert("PRODIGY_ITEM".into(), item.to_string());
    env.insert("PRODIGY_AUTOMATION".into(), "true".into());
    env.insert("PRODIGY_WORKTREE".into(), path.display().to_string());
    let started_all = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if attempt > 1 {
            let backoff = ctx.plan.retry.delay(attempt);
            log_event(MapReduceEvent::AgentRetrying {
                job_id: job_id.clone(),
                agent_id: agent.clone(),
                item_id: key.clone(),
                attempt,
                backoff_ms: backoff.as_millis() as u64,
            });
            // A delay too long for the clock is no delay limit: wait until interrupted.
            let until = Instant::now()
                .checked_add(backoff)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
            while Instant::now() < until && !ctx.exec.interrupted() {
                std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
            }
        }
        if ctx.exec.interrupted() {
            return Msg::Interrupted(key);
        }
        let started = Instant::now();
        let failure =
            |message: String, exit_code: Option<i32>, step: Option<String>, keep: bool| {
                let failure = Failure {
                    error_message: message.clone(),
                    exit_code,
                    agent_id: Some(agent.clone()),
                    step,
                    duration_ms: Some(started.elapsed().as_millis() as u64),
                    log_location: Some(log_path.display().to_string()),
                    worktree_artifacts: keep
                        .then(|| json!({"worktree": path.display().to_string()})),
                    ..Failure::default()
                };
                (message, failure)
            };
        let log = match std::fs::create_dir_all(spec.agents_dir.join("logs"))
            .map_err(|e| e.to_string())
            .and_then(|()| open_log(&log_path).map_err(|e| e.to_string()))
        {
            Ok(l) => l,
            Err(e) => {
                let (m, f) = failure(format!("cannot open agent log: {e}"), None, None, false);
                return finished_failed(&key, index, &agent, attempt, started_all, m, f);
            }
        };
        write_log(
            &log,
            &format!(
                "== {agent} item {key} attempt {attempt} at {} ==\n",
                now_timestamp()
            ),
        );
        let _ = std::fs::remove_file(marker_path(spec, index));
        ctx.worktrees.remove(&path);
        if let Err(e) = ctx.worktrees.add_detached(&path, &ctx.map_base) {
            let (m, f) = failure(format!("worktree error: {e}"), None, None, false);
            log_event(MapReduceEvent::AgentFailed {
                job_id: job_id.clone(),
                agent_id: agent.clone(),
                item_id: key.clone(),
                error: m.clone(),
                retry_eligible: attempt < ctx.max_attempts,
            });
            if attempt < ctx.max_attempts {
                continue;
            }
            return finished_failed(&key, index, &agent, attempt, started_all, m, f);
        }
        log_event(MapReduceEvent::WorktreeCreated {
            job_id: job_id.clone(),
            agent_id: agent.clone(),
            worktree_name: path.display().to_string(),
            branch: branch.clone(),
        });
        let _ = tx.send(Msg::Started(
            key.clone(),
            AgentState {
                agent_id: agent.clone(),
                index,
                worktree: path.clone(),
                branch: branch.clone(),
                attempt,
                started: now_timestamp(),
            },
        ));
        log_event(MapReduceEvent::AgentStarted {
            job_id: job_id.clone(),
            agent_id: agent.clone(),
            item_id: key.clone(),
            worktree: path.display().to_string(),
            attempt,
        });
        let deadline = ctx.plan.agent_timeout.and_then(|t| started.checked_add(t));
        let site = Site {
            logger,
            refs: &ctx.refs,
            job_id: &job_id,
            agent_id: &agent,
            item_id: Some(&key),
            phase: "map",
            metadata: meta(&agent, &path),
            attempt,
            cwd: &path,
            env: &env,
            log: &log,
            deadline,
        };
        let mut captured = ctx.setup_captured.clone();
        let mut output = None;
        let mut error = None;
        for step in &ctx.plan.agent {
            let vars = Vars {
                item: Some(item),
                item_id: &key,
                item_index: index,
                total: ctx.items.len(),
                env: Some(&spec.env),
                workflow_name: ctx.plan.name(),
                job_id: &job_id,
                captured: Some(&captured),
                ..Vars::default()
            };
            match run_step(&ctx.exec, &site, step, &vars) {
                Ok(ok) => {
                    if let Some(value) = ok.record(step, &mut captured) {
                        // Whole: a capture is at most MAX_CAPTURE, more fails the step.
                        output = Some(value);
                    }
                }
                Err(f) if f.interrupted => {
                    let _ = tx.send(Msg::Interrupted(key.clone()));
                    return Msg::Interrupted(key);
                }
                Err(f) => {
                    error = Some(f);
                    break;
                }
            }
        }
        let marker = marker_path(spec, index);
        if error.is_none() {
            match detached_head(&path) {
                Some(head) => {
                    let done = DoneMarker {
                        attempt,
                        head,
                        output: output.clone(),
                        duration_ms: started.elapsed().as_millis() as u64,
                    };
                    if let Err(e) = write_marker(&marker, &done) {
                        write_log(
                            &log,
                            &format!("== cannot write {}: {e} ==\n", marker.display()),
                        );
                    }
                }
                None => write_log(&log, "== HEAD is not detached: no done marker ==\n"),
            }
        }
        if let Some(f) = error {
            let message = format!("step at line {} failed: {}", f.line, f.message);
            let detail = if f.detail.trim().is_empty() {
                message.clone()
            } else {
                format!("{message}\nstderr:\n{}", f.detail.trim_end())
            };
            write_log(&log, &format!("== failed: {message} ==\n"));
            log_event(MapReduceEvent::AgentFailed {
                job_id: job_id.clone(),
                agent_id: agent.clone(),
                item_id: key.clone(),
                error: message.clone(),
                retry_eligible: attempt < ctx.max_attempts,
            });
            if attempt < ctx.max_attempts {
                continue;
            }
            let (m, mut fl) = failure(message, f.exit_code, Some(format!("line {}", f.line)), true);
            fl.error_message = detail;
            return finished_failed(&key, index, &agent, attempt, started_all, m, fl);
        }
        // The agent worked on a detached HEAD; a branch keeps its commits (if any) reachable
        // until they are merged.
        let commits = match git::commits_since(&path, &ctx.map_base).and_then(|c| {
            if let Some(last) = c.last() {
                ctx.worktrees.set_branch(&branch, last)?;
            }
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                let (m, f) = failure(format!("worktree error: {e}"), None, None, true);
                return finished_failed(&key, index, &agent, attempt, started_all, m, f);
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        log_event(MapReduceEvent::AgentCompleted {
            job_id: job_id.clone(),
            agent_id: agent.clone(),
            item_id: key.clone(),
            duration_ms,
            commits: commits.clone(),
            json_log_location: Some(log_path.display().to_string()),
        });
        // Reported before the clean-up, to narrow the window in which a crash makes a
        // finished agent run again; a worktree left behind is removed by the next run.
        let _ = tx.send(Msg::Finished(
            key.clone(),
            ItemResult {
                index,
                status: ItemStatus::Done,
                agent_id: agent.clone(),
                attempts: attempt,
                duration_ms,
                commits: commits.clone(),
                merged: false,
                output,
                error: None,
            },
            None,
        ));
        // Uncommitted changes are the agent's scratch: only commits are merged.
        ctx.worktrees.remove(&path);
        log_event(MapReduceEvent::WorktreeCleaned {
            job_id: job_id.clone(),
            agent_id: agent.clone(),
            worktree_name: path.display().to_string(),
        });
        return Msg::Cleaned;
    }
}

fn finished_failed(
    key: &str,
    index: usize,
    agent: &str,
    attempts: u32,
    started: Instant,
    message: String,
    failure: Failure,
) -> Msg {
    Msg::Finished(
        key.to_owned(),
        ItemResult {
            index,
            status: ItemStatus::Failed,
            agent_id: agent.to_owned(),
            attempts,
            duration_ms: started.elapsed().as_millis() as u64,
            commits: Vec::new(),
            merged: false,
            output: None,
            error: Some(message),
        },
        Some(failure),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn arg_is_pasted_as_a_word() {
        assert_eq!(
            super::paste_arg("/implement $ARG --x ${ARG} $ARGS $ARG_1 $", "12"),
            "/implement 12 --x 12 $ARGS $ARG_1 $"
        );
    }
}
