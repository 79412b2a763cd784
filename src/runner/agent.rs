//! One agent (a fresh worktree per attempt, the template's steps, its commits) and one
//! step (with its `on_failure` handler and retries), shared by the map phase, setup,
//! reduce and `dlq retry`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub(super) use super::site::Site;
pub(super) use super::step::{run_step, write_log};
use super::{AgentCtx, Msg, agent_branch, agent_dir, git, open_log};
use crate::dlq::Failure;
use crate::events::record::{MapReduceEvent, now_timestamp};
use crate::state::{AgentState, ItemResult, ItemStatus, JobSpec};
use crate::workflow::template::Vars;

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
    env.extend(ctx.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
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
            log_path: Some(&log_path),
            deadline,
            mask: &ctx.mask,
            paste: &spec.env,
            base: Some(&ctx.map_base),
            track_git: ctx.track_git,
            tee: ctx.observer.clone().map(|o| {
                let agent = agent.clone();
                std::sync::Arc::new(move |line: &[u8]| o.output(&agent, line))
                    as super::exec::LineHook
            }),
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
                env: Some(&ctx.env_all),
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
            attempt: Some(attempt),
            output: output.clone(),
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
