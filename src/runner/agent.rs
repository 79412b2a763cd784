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

/// A worker's worktree (`<job>@slot-<n>`), kept from one agent to the next: made once,
/// then reset between agents ([`git::Worktrees::reset_detached`]), which costs two git
/// processes and rewrites only what the last agent changed, where a new worktree costs
/// three and writes (and later deletes) every file. Each agent still starts from exactly
/// the map's base, with no file of the agent before it. A worktree git could not reset
/// safely ([`git::reusable`]) is removed and made again; a failed agent's moves to
/// `<job>@agent-<index>`, kept for inspection.
pub(super) struct Slot {
    path: PathBuf,
    /// The worktree is there and may be reset for the next agent.
    reusable: bool,
}

impl Slot {
    pub(super) fn new(path: PathBuf) -> Slot {
        Slot {
            path,
            reusable: false,
        }
    }

    /// Removes the worktree (the worker has no more items).
    pub(super) fn close(self, ctx: &AgentCtx) {
        ctx.worktrees.remove(&self.path);
    }
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

/// One agent: a fresh worktree per attempt (the slot's, reset), the template's steps,
/// its commits.
pub(super) fn run_agent(
    ctx: &AgentCtx,
    index: usize,
    slot: &mut Slot,
    tx: &mpsc::Sender<Msg>,
) -> Msg {
    let key = ctx.keys[index].clone();
    let item = &ctx.items[index];
    let spec = &ctx.spec;
    let job_id = spec.id.clone();
    let agent = format!("agent-{index}");
    let branch = agent_branch(spec, index);
    let path = slot.path.clone();
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
            |message: String, exit_code: Option<i32>, step: Option<String>, kept: Option<&Path>| {
                let failure = Failure {
                    error_message: message.clone(),
                    exit_code,
                    agent_id: Some(agent.clone()),
                    step,
                    duration_ms: Some(started.elapsed().as_millis() as u64),
                    log_location: Some(log_path.display().to_string()),
                    worktree_artifacts: kept.map(|p| json!({"worktree": p.display().to_string()})),
                    ..Failure::default()
                };
                (message, failure)
            };
        // The failed agent's worktree, kept for inspection under the item's name (the
        // slot is made again for the next agent).
        let keep = |log: &std::sync::Arc<std::sync::Mutex<std::fs::File>>| {
            let kept = agent_dir(spec, index);
            ctx.worktrees.remove(&kept);
            match ctx.worktrees.move_to(&path, &kept) {
                Ok(()) => Some(kept),
                Err(e) => {
                    write_log(log, &format!("== cannot keep the worktree: {e} ==\n"));
                    ctx.worktrees.remove(&path);
                    None
                }
            }
        };
        let log = match std::fs::create_dir_all(spec.agents_dir.join("logs"))
            .map_err(|e| e.to_string())
            .and_then(|()| open_log(&log_path).map_err(|e| e.to_string()))
        {
            Ok(l) => l,
            Err(e) => {
                let (m, f) = failure(format!("cannot open agent log: {e}"), None, None, None);
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
        let reset = std::mem::take(&mut slot.reusable)
            && ctx.worktrees.reset_detached(&path, &ctx.map_base).is_ok();
        let made = if reset {
            Ok(())
        } else {
            ctx.worktrees.remove(&path);
            ctx.worktrees.add_detached(&path, &ctx.map_base)
        };
        if let Err(e) = made {
            let (m, f) = failure(format!("worktree error: {e}"), None, None, None);
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
            match git::detached_head(&path) {
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
                slot.reusable = git::reusable(&path);
                continue;
            }
            let kept = keep(&log);
            let (m, mut fl) = failure(
                message,
                f.exit_code,
                Some(format!("line {}", f.line)),
                kept.as_deref(),
            );
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
                let kept = keep(&log);
                let (m, f) = failure(format!("worktree error: {e}"), None, None, kept.as_deref());
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
        // Uncommitted changes are the agent's scratch: only commits are merged. The
        // worktree is reset for the next agent, or removed when git could not reset it.
        slot.reusable = git::reusable(&path);
        if !slot.reusable {
            ctx.worktrees.remove(&path);
        }
        // What an earlier run kept of this item's failure (`dlq retry`) is resolved.
        ctx.worktrees.remove(&agent_dir(spec, index));
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
