//! The MapReduce runner (DESIGN.md §9): `run`, `resume` and `dlq retry`.
//!
//! A job runs in its own git worktree (`worktrees/<repo>/<job>/parent`, branch
//! `prodigy/<job>` made from the recorded base commit): setup there, then one agent per
//! work item in a worktree of its own (`…/agent-<index>`, branch `prodigy/<job>-agent-<index>`
//! made from the job's worktree after setup), then the agents' commits merged into the
//! job's worktree, then reduce there. Every change of state is a checkpoint
//! ([`crate::state`]) written after the events that explain it are durable; `resume`
//! starts from the checkpoint alone, recreating whatever worktree is missing.

mod agent;
pub mod exec;
pub mod git;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::dlq::filter::ItemFilter;
use crate::dlq::{DeadLetterQueue, DlqError, Failure};
use crate::events::EventError;
use crate::events::logger::{EventLogger, Thresholds};
use crate::events::record::{MapReduceEvent, now_timestamp};
use crate::fsutil::{self, FsError, IoContext};
use crate::home::Home;
use crate::lock::LockOptions;
use crate::names::{self, NameError};
use crate::object::ObjectId;
use crate::refs::RefStore;
use crate::repo::{self, RepoError};
use crate::state::{
    AgentState, Counters, ItemResult, ItemStatus, JobSpec, JobState, JobStateManager, Phase,
    StateError, item_key,
};
use crate::workflow::template::Vars;
use crate::workflow::{OnItemFailure, Plan, WorkflowError, input};
use agent::{run_agent, run_step};
use exec::{Executor, StepSpec};
use git::GitError;

/// Failures of the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job's lease on a remote store was lost (another host took the job over after
    /// it expired): this runner stops.
    #[error(
        "job '{job}' lost its lease: {why}; this runner stopped (another host may be running it)"
    )]
    LeaseLost {
        /// The job.
        job: String,
        /// How it was lost.
        why: String,
    },
    /// The workflow file.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// Job state.
    #[error(transparent)]
    State(#[from] StateError),
    /// Repository names.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A git command.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The event log.
    #[error(transparent)]
    Events(#[from] EventError),
    /// The dead-letter queue.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// A file operation.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A bad job id.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Not inside git.
    #[error("'{}' is not inside a git repository (agents work in git worktrees)", .path.display())]
    NotGit {
        /// The directory.
        path: PathBuf,
    },
    /// The work items could not be made.
    #[error("{}: map.input: {message}", .workflow.display())]
    Input {
        /// The workflow file.
        workflow: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A setup or reduce step failed.
    #[error("job '{job}': {phase} step at line {line} failed: {message}")]
    Step {
        /// The job.
        job: String,
        /// setup or reduce.
        phase: &'static str,
        /// The step's line in the workflow.
        line: u64,
        /// What happened.
        message: String,
    },
    /// SIGINT or SIGTERM: a checkpoint was written.
    #[error(
        "job '{job}' was interrupted; its checkpoint is saved (resume it with `prodigy resume {job}`)"
    )]
    Interrupted {
        /// The job.
        job: String,
    },
    /// The error policy stopped the job.
    #[error("job '{job}' stopped: {reason}")]
    Stopped {
        /// The job.
        job: String,
        /// Why.
        reason: String,
    },
    /// `run` would reuse a branch that some other job left.
    #[error("branch '{branch}' already exists in '{}' (left by an earlier job with this id?); delete it with `git branch -D {branch}` or choose another --job-id", .repo.display())]
    BranchExists {
        /// The branch.
        branch: String,
        /// The repository.
        repo: PathBuf,
    },
}

impl crate::hint::Hint for RunError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            RunError::LeaseLost { .. } => Some(crate::hint::LEASE),
            RunError::Workflow(e) => e.hint(),
            RunError::State(e) => e.hint(),
            RunError::Repo(e) => e.hint(),
            RunError::Git(e) => e.hint(),
            RunError::Events(e) => e.hint(),
            RunError::Dlq(e) => e.hint(),
            RunError::Fs(e) => e.hint(),
            RunError::NotGit { .. } => Some(
                "run it inside a git repository, or name one with `prodigy run WORKFLOW -p DIR`",
            ),
            RunError::Input { .. } => {
                Some("no item ran: fix the input, then start a new job with `prodigy run`")
            }
            RunError::Step { .. } => Some(
                "the step's log is in the job's logs/ (`prodigy jobs show <job>`); `prodigy resume <job>` runs it again",
            ),
            RunError::Stopped { .. } => Some(
                "the agents' logs are in the job's logs/ (`prodigy jobs show <job>`); `prodigy resume <job>` runs the items left",
            ),
            RunError::Name(_) | RunError::Interrupted { .. } | RunError::BranchExists { .. } => {
                None
            }
        }
    }
}

/// How far a job got, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Items in all.
    pub total: usize,
    /// Items done.
    pub done: usize,
    /// Items failed.
    pub failed: usize,
    /// Agents at work.
    pub running: usize,
}

/// Told what the runner is doing (the library never prints; a front end may).
pub trait Observer: Send + Sync {
    /// Items moved.
    fn progress(&self, _progress: &Progress) {}
    /// A phase began or a notable thing happened.
    fn note(&self, _text: &str) {}
}

/// How to run.
#[derive(Clone, Default)]
pub struct Options {
    /// The job id (`run` only; default: generated).
    pub job_id: Option<String>,
    /// Agents at once (overrides the workflow).
    pub max_parallel: Option<usize>,
    /// The `prodigy` binary, to supervise steps (see [`exec`]).
    pub supervisor: Option<PathBuf>,
    /// Set by a signal handler to stop the job at a checkpoint.
    pub interrupt: Arc<AtomicBool>,
    /// Progress reports.
    pub observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("job_id", &self.job_id)
            .field("max_parallel", &self.max_parallel)
            .field("supervisor", &self.supervisor)
            .finish()
    }
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The job.
    pub job_id: String,
    /// Its repo name.
    pub repo: String,
    /// Its counters.
    pub counters: Counters,
    /// The job's worktree (holding the merged result).
    pub worktree: PathBuf,
    /// The job's branch.
    pub branch: String,
    /// `resume` found the job complete and did nothing.
    pub already_complete: bool,
}

/// Starts a job for the workflow at `workflow`, in the repository holding `dir`.
pub fn run(home: &Home, workflow: &Path, dir: &Path, opts: Options) -> Result<Outcome, RunError> {
    let plan = Plan::load(workflow)?;
    let location = repo::locate(dir)?;
    if !location.is_git {
        return Err(RunError::NotGit {
            path: dir.to_owned(),
        });
    }
    let repo_name = repo::resolve_repo_name(home, dir)?;
    let base_commit = git::head(dir)?;
    let job_id = match &opts.job_id {
        Some(id) => id.clone(),
        None => generate_job_id(),
    };
    names::validate("job id", &job_id)?;
    let refs = RefStore::new(home, LockOptions::from_env());
    let states = JobStateManager::new(refs.clone(), &repo_name)?;
    let lock = states.lock_job(&job_id)?;
    let branch = format!("prodigy/{job_id}");
    // A job of this id: resume it (its branch is its result, not a leftover).
    if states
        .refs()
        .read(&states.ref_name(&job_id)?)
        .map_err(StateError::from)?
        .is_some()
    {
        return Err(StateError::Exists {
            repo: repo_name.clone(),
            job: job_id.clone(),
        }
        .into());
    }
    if git::branch_exists(&location.root, &branch) {
        return Err(RunError::BranchExists {
            branch,
            repo: location.root,
        });
    }
    let job_dir = job_dir(home, &repo_name, &job_id);
    let spec = JobSpec {
        id: job_id.clone(),
        repo: repo_name.clone(),
        repo_root: location.root.clone(),
        workflow_path: std::path::absolute(workflow).unwrap_or_else(|_| workflow.to_owned()),
        workflow: plan.to_json(),
        base_commit,
        branch,
        worktree: job_dir.join(format!("{job_id}@job")),
        agents_dir: job_dir,
        env: plan.env.clone(),
        started: now_timestamp(),
        workflow_source: plan.source.clone(),
        imported_from: None,
    };
    let state = states.create(spec)?;
    let mut job = Job::new(home, refs, states, plan, state, opts)?;
    job.note(&format!(
        "job {job_id} of repo {repo_name}: workflow {}, worktree '{}'",
        job.plan.name(),
        job.state.spec.worktree.display()
    ));
    job.run_lock = Some(lock);
    job.drive()
}

/// Finishes an interrupted job from its newest checkpoint (or from `from`).
pub fn resume(
    home: &Home,
    repo_name: &str,
    job_id: &str,
    from: Option<ObjectId>,
    opts: Options,
) -> Result<Outcome, RunError> {
    let refs = RefStore::new(home, LockOptions::from_env());
    let states = JobStateManager::new(refs.clone(), repo_name)?;
    names::validate("job id", job_id)?;
    // An unknown job is refused before its lock file is made.
    states.head(job_id)?;
    let lock = states.lock_job(job_id)?;
    let mut state = match from {
        Some(at) => states.load_at(job_id, at)?,
        None => states.load(job_id)?,
    };
    relocate(home, &mut state.spec);
    if state.checkpoint.phase == Phase::Complete {
        // Nothing to do, like `git merge` of a merged branch: a script may resume blindly.
        return Ok(Outcome {
            job_id: job_id.to_owned(),
            repo: repo_name.to_owned(),
            counters: state.checkpoint.counters,
            worktree: state.spec.worktree.clone(),
            branch: state.spec.branch.clone(),
            already_complete: true,
        });
    }
    let plan = Plan::parse(&state.spec.workflow_path, &state.spec.workflow_source)?;
    let mut job = Job::new(home, refs, states, plan, state, opts)?;
    let pending = job.state.checkpoint.counters.pending();
    let version = job.state.checkpoint.version;
    job.log(MapReduceEvent::CheckpointLoaded {
        job_id: job_id.to_owned(),
        version,
    })?;
    job.log(MapReduceEvent::JobResumed {
        job_id: job_id.to_owned(),
        checkpoint_version: version,
        pending_items: pending,
    })?;
    job.state.checkpoint.error = None;
    job.state.checkpoint.ended = None;
    job.rewind = from.is_some();
    job.run_lock = Some(lock);
    job.drive()
}

/// What `dlq retry` should do.
#[derive(Debug, Clone, Default)]
pub struct RetryOptions {
    /// Only items matching this.
    pub filter: Option<ItemFilter>,
    /// Attempts per item (default 1).
    pub max_retries: u32,
}

/// What `dlq retry` did.
#[derive(Debug, Clone, Default)]
pub struct RetryOutcome {
    /// Items that now succeed (removed from the queue).
    pub succeeded: Vec<String>,
    /// Items that failed again (their history grew).
    pub failed: Vec<String>,
}

/// Re-runs dead-lettered items of a job through its agent template in fresh worktrees;
/// a success is merged into the job's worktree and leaves the queue.
pub fn retry_dlq(
    home: &Home,
    repo_name: &str,
    job_id: &str,
    retry: RetryOptions,
    opts: Options,
) -> Result<RetryOutcome, RunError> {
    let refs = RefStore::new(home, LockOptions::from_env());
    let states = JobStateManager::new(refs.clone(), repo_name)?;
    names::validate("job id", job_id)?;
    // An unknown job is refused before its lock file is made.
    states.head(job_id)?;
    let lock = states.lock_job(job_id)?;
    let mut state = states.load(job_id)?;
    relocate(home, &mut state.spec);
    let plan = Plan::parse(&state.spec.workflow_path, &state.spec.workflow_source)?;
    let mut job = Job::new(home, refs, states, plan, state, opts)?;
    job.run_lock = Some(lock);
    job.retry(retry)
}

/// Where a job's worktrees live: `<home>/worktrees/<repo>/<job>`.
fn job_dir(home: &Home, repo: &str, job: &str) -> PathBuf {
    home.root().join("worktrees").join(repo).join(job)
}

/// A job resumed by another home than the one that started it — another host sharing a
/// remote store — works in worktrees of its own home, from the repository of the current
/// directory (a clone of the same repository there). The store carries the job's events,
/// DLQ and checkpoints; commits reach the other host only through git.
fn relocate(home: &Home, spec: &mut JobSpec) {
    if spec.agents_dir.starts_with(home.root()) {
        return;
    }
    let dir = job_dir(home, &spec.repo, &spec.id);
    spec.worktree = dir.join(format!("{}@job", spec.id));
    spec.agents_dir = dir;
    if let Some(here) = std::env::current_dir()
        .ok()
        .and_then(|cwd| repo::locate(&cwd).ok())
    {
        spec.repo_root = here.root;
    }
}

fn generate_job_id() -> String {
    let now = jiff::Timestamp::now();
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[24..];
    format!("mr-{}-{suffix}", now.strftime("%Y%m%d-%H%M%S"))
}

/// What the agents share (read-only).
struct AgentCtx {
    plan: Plan,
    /// What setup captured (agents see it).
    setup_captured: BTreeMap<String, String>,
    spec: JobSpec,
    worktrees: git::Worktrees,
    map_base: String,
    exec: Executor,
    logger: Arc<EventLogger>,
    items: Vec<Value>,
    keys: Vec<String>,
    max_attempts: u32,
}

enum Msg {
    Started(String, AgentState),
    Finished(String, ItemResult, Option<Failure>),
    Interrupted(String),
    Cleaned,
}

struct StepFailure {
    line: u64,
    /// One line.
    message: String,
    /// The failed command's standard error (its tail), for the DLQ.
    detail: String,
    exit_code: Option<i32>,
    interrupted: bool,
}

struct Job {
    states: JobStateManager,
    dlq: DeadLetterQueue,
    plan: Plan,
    state: JobState,
    logger: Arc<EventLogger>,
    exec: Executor,
    observer: Option<Arc<dyn Observer>>,
    max_parallel: usize,
    started: Instant,
    /// `resume --from`: put the job's branch back where the checkpoint saw it.
    rewind: bool,
    /// The run lock (a lease on a remote store), held while the job runs.
    run_lock: Option<crate::state::RunLock>,
}

impl Job {
    fn new(
        _home: &Home,
        refs: RefStore,
        states: JobStateManager,
        plan: Plan,
        state: JobState,
        opts: Options,
    ) -> Result<Job, RunError> {
        let repo = state.spec.repo.clone();
        let id = state.spec.id.clone();
        let logger = EventLogger::with_refs(refs.clone(), &repo, &id, Thresholds::default())?;
        let dlq = DeadLetterQueue::new(refs, &repo, &id)?;
        Ok(Job {
            states,
            dlq,
            max_parallel: opts.max_parallel.unwrap_or(plan.max_parallel).max(1),
            plan,
            state,
            logger: Arc::new(logger),
            exec: Executor::new(
                opts.supervisor.clone(),
                opts.interrupt.clone(),
                // The command line refuses a bad value before any command runs.
                exec::kill_grace_from_env().unwrap_or(exec::DEFAULT_KILL_GRACE),
            ),
            observer: opts.observer.clone(),
            started: Instant::now(),
            rewind: false,
            run_lock: None,
        })
    }

    fn id(&self) -> &str {
        &self.state.spec.id
    }

    fn log(&self, event: MapReduceEvent) -> Result<(), RunError> {
        Ok(self.logger.log(event)?)
    }

    fn note(&self, text: &str) {
        if let Some(o) = &self.observer {
            o.note(text);
        }
    }

    fn progress(&self) {
        if let Some(o) = &self.observer {
            let c = self.state.checkpoint.counters;
            o.progress(&Progress {
                phase: self.state.checkpoint.phase,
                total: c.total,
                done: c.done,
                failed: c.failed,
                running: self.state.checkpoint.running.len(),
            });
        }
    }

    /// Events first, then the checkpoint that relies on them.
    fn save(&mut self, reason: &str) -> Result<(), RunError> {
        if let Some(why) = self.run_lock.as_ref().and_then(|l| l.lost()) {
            return Err(RunError::LeaseLost {
                job: self.id().to_owned(),
                why,
            });
        }
        self.logger.flush()?;
        self.states.save(&mut self.state, reason)?;
        let c = &self.state.checkpoint;
        self.logger.log(MapReduceEvent::CheckpointCreated {
            job_id: self.state.spec.id.clone(),
            version: c.version,
            agents_completed: c.counters.done + c.counters.failed,
        })?;
        Ok(())
    }

    /// Records an interrupt (checkpoint, `job_paused`) and gives the error the run ends
    /// with: [`RunError::Interrupted`], or why recording it failed.
    fn interrupted(&mut self) -> RunError {
        self.state.checkpoint.running.clear();
        let recorded = self.save("interrupted").and_then(|()| {
            let version = self.state.checkpoint.version;
            self.log(MapReduceEvent::JobPaused {
                job_id: self.id().to_owned(),
                checkpoint_version: version,
            })?;
            Ok(self.logger.flush()?)
        });
        match recorded {
            Ok(()) => RunError::Interrupted {
                job: self.id().to_owned(),
            },
            Err(e) => e,
        }
    }

    /// Stops the job for `reason` (its error policy, a failed step): records it
    /// (checkpoint with the error, `job_failed`) and gives the error the run ends with,
    /// [`RunError::Stopped`], or why recording it failed.
    fn stop(&mut self, reason: String) -> RunError {
        self.state.checkpoint.error = Some(reason.clone());
        self.state.checkpoint.ended = Some(now_timestamp());
        self.state.checkpoint.running.clear();
        let recorded = self.save("stopped").and_then(|()| {
            self.log(MapReduceEvent::JobFailed {
                job_id: self.id().to_owned(),
                error: reason.clone(),
                partial_results: self.state.checkpoint.counters.done,
            })?;
            Ok(self.logger.flush()?)
        });
        match recorded {
            Ok(()) => RunError::Stopped {
                job: self.id().to_owned(),
                reason,
            },
            Err(e) => e,
        }
    }

    /// The environment of the job's own steps (setup, the input command, reduce): the
    /// workflow's, the job id, and as in the original, `PRODIGY_AUTOMATION=true` and
    /// `PRODIGY_WORKTREE` (the job worktree).
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = self.state.spec.env.clone();
        env.insert("PRODIGY_JOB_ID".into(), self.state.spec.id.clone());
        env.insert("PRODIGY_AUTOMATION".into(), "true".into());
        env.insert(
            "PRODIGY_WORKTREE".into(),
            self.state.spec.worktree.display().to_string(),
        );
        env
    }

    /// Makes sure the job's worktree exists: recreated on its branch (which keeps setup's
    /// and the merges' commits) or, when the branch is gone too, from the base commit.
    fn worktrees(&self) -> git::Worktrees {
        let spec = &self.state.spec;
        let lock = spec
            .agents_dir
            .parent()
            .unwrap_or(&spec.agents_dir)
            .join("worktrees.lock");
        git::Worktrees::new(&spec.repo_root, &lock)
    }

    /// Returns true when the job's branch was missing (made again from the base commit).
    fn ensure_parent(&self) -> Result<bool, RunError> {
        let spec = &self.state.spec;
        fsutil::ensure_dir(self.states.refs().home_root(), &spec.agents_dir)?;
        // What a killed runner's git left: locked or half-made registrations, lock files on
        // the job's branches, a merge half done. No agent is at work yet.
        let prefix = format!("{}@", spec.id);
        self.worktrees()
            .repair(&spec.agents_dir, |name| name.starts_with(&prefix))?;
        git::recover(
            &spec.repo_root,
            &spec.branch,
            &agent_refs(spec),
            &spec.worktree,
        )?;
        let marker = pending_path(spec);
        match Pending::read(&marker)? {
            // Killed while checking the worktree out: files without an index. Made again.
            Some(Pending::Create) => self.worktrees().remove(&spec.worktree),
            Some(Pending::Merge(keep)) if spec.worktree.join(".git").exists() => {
                self.note("undoing a merge that stopped half-way");
                git::restore(&spec.worktree, &keep)?;
            }
            _ => {}
        }
        Pending::clear(&marker)?;
        if spec.worktree.join(".git").exists() {
            return Ok(false);
        }
        if spec.worktree.exists() {
            std::fs::remove_dir_all(&spec.worktree).at("remove stale worktree", &spec.worktree)?;
        }
        let branch_lost = !git::branch_exists(&spec.repo_root, &spec.branch);
        Pending::Create.write(&marker)?;
        self.worktrees()
            .add_on_branch(&spec.worktree, &spec.branch, &spec.base_commit)?;
        Pending::clear(&marker)?;
        self.log(MapReduceEvent::WorktreeCreated {
            job_id: spec.id.clone(),
            agent_id: "job".into(),
            worktree_name: spec.worktree.display().to_string(),
            branch: spec.branch.clone(),
        })?;
        Ok(branch_lost)
    }

    /// Resets the job's branch (and worktree) to what the loaded checkpoint recorded, so
    /// that merges and job steps after it are not applied twice.
    fn rewind_branch(&mut self) -> Result<(), RunError> {
        let c = &self.state.checkpoint;
        let target = match (&c.job_head, c.setup_done) {
            (Some(head), _) => head.clone(),
            (None, 0) => self.state.spec.base_commit.clone(),
            (None, _) => return Ok(()),
        };
        let worktree = self.state.spec.worktree.clone();
        if git::head(&worktree)? != target {
            self.note(&format!(
                "resetting branch {} to {}",
                self.state.spec.branch,
                &target[..12.min(target.len())]
            ));
            git::git(&worktree, &["reset", "-q", "--hard", &target])?;
        }
        Ok(())
    }

    fn drive(&mut self) -> Result<Outcome, RunError> {
        if self.ensure_parent()? && self.state.checkpoint.phase != Phase::Setup {
            self.reclaim_commits()?;
        }
        if self.rewind {
            self.rewind_branch()?;
        }
        loop {
            if self.exec.interrupted() {
                return Err(self.interrupted());
            }
            self.progress();
            match self.state.checkpoint.phase {
                Phase::Setup => self.setup()?,
                Phase::Map => self.map()?,
                Phase::Merge => self.merge()?,
                Phase::Reduce => self.reduce()?,
                Phase::Complete => return self.complete(),
            }
        }
    }

    fn open_log(&self, name: &str) -> Result<Arc<Mutex<File>>, RunError> {
        let dir = self.state.spec.agents_dir.join("logs");
        fsutil::ensure_dir(self.states.refs().home_root(), &dir)?;
        open_log(&dir.join(name))
    }

    /// Runs job-level steps (setup or reduce) from `from`, checkpointing after each.
    fn job_steps(&mut self, phase: Phase) -> Result<(), RunError> {
        let (steps, name) = match phase {
            Phase::Setup => (self.plan.setup.clone(), "setup"),
            _ => (self.plan.reduce.clone(), "reduce"),
        };
        let log = self.open_log(&format!("{name}.log"))?;
        let mut env = self.env();
        let results_json = if phase == Phase::Reduce {
            // Also as a file: a command line holds at most 128 KiB per argument, and the
            // results of many agents do not fit in `${map.results_json}`.
            let json = self.results_json();
            let path = self.state.spec.agents_dir.join("map-results.json");
            std::fs::write(&path, &json).at("write map results", &path)?;
            env.insert("PRODIGY_MAP_RESULTS".into(), path.display().to_string());
            json
        } else {
            String::new()
        };
        // Captures of earlier steps of this phase survive a resume in the checkpoint;
        // reduce also sees setup's.
        let mut captured = match phase {
            Phase::Setup => BTreeMap::new(),
            _ => self.state.checkpoint.setup_captured.clone(),
        };
        captured.extend(self.state.checkpoint.captured.clone());
        loop {
            let done = match phase {
                Phase::Setup => self.state.checkpoint.setup_done,
                _ => self.state.checkpoint.reduce_done,
            };
            let Some(step) = steps.get(done) else {
                return Ok(());
            };
            self.note(&format!("{name} step {}/{}", done + 1, steps.len()));
            let c = self.state.checkpoint.counters;
            let vars = Vars {
                total: c.total,
                successful: c.done,
                failed: c.failed,
                results_json: &results_json,
                env: Some(&self.state.spec.env),
                workflow_name: self.plan.name(),
                job_id: &self.state.spec.id,
                captured: Some(&captured),
                ..Vars::default()
            };
            let worktree = self.state.spec.worktree.clone();
            match run_step(&self.exec, step, &vars, &worktree, &env, &log, None) {
                Ok(ok) => {
                    ok.record(step, &mut captured);
                }
                Err(f) if f.interrupted => return Err(self.interrupted()),
                Err(f) => {
                    let reason = format!("{name} step at line {} failed: {}", f.line, f.message);
                    // The job records the failure; a failure to record it says so instead.
                    match self.stop(reason) {
                        RunError::Stopped { .. } => {}
                        failed => return Err(failed),
                    }
                    return Err(RunError::Step {
                        job: self.id().to_owned(),
                        phase: name,
                        line: f.line,
                        message: f.message,
                    });
                }
            }
            match phase {
                Phase::Setup => self.state.checkpoint.setup_done += 1,
                _ => self.state.checkpoint.reduce_done += 1,
            }
            self.state.checkpoint.captured = captured.clone();
            self.state.checkpoint.job_head = git::head(&worktree).ok();
            self.save(&format!("{name} step {} done", done + 1))?;
        }
    }

    fn setup(&mut self) -> Result<(), RunError> {
        self.job_steps(Phase::Setup)?;
        // The work items, made in the job's worktree after setup.
        let worktree = self.state.spec.worktree.clone();
        let (bytes, what, from_file) = match input::source(&self.plan, &worktree) {
            input::Source::File(path) => {
                if !path.is_file() {
                    let input = self.plan.workflow.map.input.value.clone();
                    return Err(self.input_error(format!(
                        "'{input}' is not in the job's worktree '{}' (a checkout of commit {}): commit it, or make it in setup",
                        worktree.display(),
                        &self.state.spec.base_commit[..12.min(self.state.spec.base_commit.len())]
                    )));
                }
                let bytes = std::fs::read(&path).at("read map.input", &path)?;
                (bytes, format!("'{}'", path.display()), true)
            }
            input::Source::Command(cmd) => {
                let log = self.open_log("input.log")?;
                let env = self.env();
                let out = self
                    .exec
                    .run(&StepSpec {
                        command: &cmd,
                        cwd: &worktree,
                        env: &env,
                        timeout: None,
                        capture: true,
                        log: &log,
                    })
                    .map_err(|e| self.input_error(format!("cannot start {cmd:?}: {e}")))?;
                if out.interrupted {
                    return Err(self.interrupted());
                }
                if !out.success() {
                    return Err(self.input_error(format!(
                        "the command {cmd:?} failed with exit code {}: {}",
                        out.exit_code,
                        last_line(&out.stderr_tail)
                    )));
                }
                (out.stdout, format!("the output of {cmd:?}"), false)
            }
        };
        let items = input::items(&self.plan, &bytes, &what, from_file)
            .map_err(|message| self.input_error(message))?;
        // The items object is named by the checkpoint saved below; gc must not come between.
        let _gc = self.states.refs().write_guard().map_err(StateError::from)?;
        let items_id = self.states.store_items(&items)?;
        let map_base = git::head(&worktree)?;
        let c = &mut self.state.checkpoint;
        c.items = Some(items_id);
        c.counters.total = items.len();
        c.job_head = Some(map_base.clone());
        c.map_base = Some(map_base);
        c.phase = Phase::Map;
        // Setup's captures go on to the agents and reduce; `captured` is reduce's now.
        c.setup_captured = std::mem::take(&mut c.captured);
        for own in ["shell.output", "last.output", "last.exit_code"] {
            c.setup_captured.remove(own);
        }
        self.log(MapReduceEvent::JobStarted {
            job_id: self.id().to_owned(),
            config: self.state.spec.workflow.clone(),
            total_items: items.len(),
            timestamp: self.state.spec.started.clone(),
        })?;
        self.save("phase map")?;
        Ok(())
    }

    fn input_error(&mut self, message: String) -> RunError {
        // The job records the failure; the run ends with the input's own error, or with
        // why recording it failed.
        match self.stop(format!("map.input: {message}")) {
            RunError::Stopped { .. } => RunError::Input {
                workflow: self.state.spec.workflow_path.clone(),
                message,
            },
            failed => failed,
        }
    }

    fn agent_ctx(&self, items: Vec<Value>, keys: Vec<String>, max_attempts: u32) -> AgentCtx {
        AgentCtx {
            plan: self.plan.clone(),
            setup_captured: self.state.checkpoint.setup_captured.clone(),
            spec: self.state.spec.clone(),
            worktrees: self.worktrees(),
            map_base: self
                .state
                .checkpoint
                .map_base
                .clone()
                .unwrap_or_else(|| self.state.spec.base_commit.clone()),
            exec: self.exec.clone(),
            logger: Arc::clone(&self.logger),
            items,
            keys,
            max_attempts,
        }
    }

    fn load_items(&self) -> Result<(Vec<Value>, Vec<String>), RunError> {
        let items = match self.state.checkpoint.items {
            Some(id) => self.states.load_items(&id)?,
            None => Vec::new(),
        };
        let keys = items
            .iter()
            .enumerate()
            .map(|(i, v)| item_key(i, v))
            .collect();
        Ok((items, keys))
    }

    /// The map phase, to the merge; an interrupt or the error policy ends the run with
    /// its error.
    fn map(&mut self) -> Result<(), RunError> {
        let (items, keys) = self.load_items()?;
        self.adopt_finished_agents(&keys)?;
        let pending: VecDeque<usize> = (0..items.len())
            .filter(|i| !self.state.results.contains_key(&keys[*i]))
            .collect();
        self.state.checkpoint.running.clear();
        self.remove_leftover_worktrees(&keys);
        if !pending.is_empty() {
            self.note(&format!(
                "map: {} items to run, {} agents",
                pending.len(),
                self.max_parallel.min(pending.len())
            ));
        }
        let ctx = self.agent_ctx(items, keys, self.plan.retry.max_attempts);
        let stop_reason = self.run_agents(&ctx, pending, |job, key, result, failure| {
            job.finish_item(&ctx, key, result, failure)
        })?;
        if self.exec.interrupted() {
            return Err(self.interrupted());
        }
        if let Some(reason) = stop_reason {
            return Err(self.stop(reason));
        }
        self.state.checkpoint.phase = Phase::Merge;
        self.save("phase merge")
    }

    /// Agents that finished their steps but whose results no checkpoint recorded (the
    /// runner died in between) left a done marker: their results are recorded now
    /// instead of running them again.
    fn adopt_finished_agents(&mut self, keys: &[String]) -> Result<(), RunError> {
        let spec = self.state.spec.clone();
        let map_base = self
            .state
            .checkpoint
            .map_base
            .clone()
            .unwrap_or_else(|| spec.base_commit.clone());
        let mut adopted = 0;
        for (index, key) in keys.iter().enumerate() {
            if self.state.results.contains_key(key) {
                continue;
            }
            let marker = agent::marker_path(&spec, index);
            let Ok(bytes) = std::fs::read(&marker) else {
                continue;
            };
            let Ok(done) = serde_json::from_slice::<agent::DoneMarker>(&bytes) else {
                continue;
            };
            let range = format!("{map_base}..{}", done.head);
            let Ok(list) = git::git(&spec.repo_root, &["rev-list", "--reverse", &range]) else {
                continue;
            };
            let commits: Vec<String> = list.lines().map(str::to_owned).collect();
            if let Some(last) = commits.last() {
                self.worktrees()
                    .set_branch(&agent_branch(&spec, index), last)?;
            }
            self.state.record(
                key,
                ItemResult {
                    index,
                    status: ItemStatus::Done,
                    agent_id: format!("agent-{index}"),
                    attempts: done.attempt,
                    duration_ms: done.duration_ms,
                    commits,
                    merged: false,
                    output: done.output,
                    error: None,
                },
            );
            adopted += 1;
        }
        if adopted > 0 {
            self.note(&format!(
                "{adopted} agents had finished before the interruption"
            ));
            self.save(&format!("adopted {adopted} finished agents"))?;
        }
        Ok(())
    }

    /// Worktrees of agents that finished but were not cleaned up (the runner died first).
    fn remove_leftover_worktrees(&self, keys: &[String]) {
        let spec = &self.state.spec;
        let worktrees = self.worktrees();
        let Ok(entries) = std::fs::read_dir(&spec.agents_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(index) = name
                .strip_prefix("agent-")
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            let done = keys
                .get(index)
                .and_then(|k| self.state.results.get(k))
                .is_some_and(|r| r.status == ItemStatus::Done);
            if done {
                worktrees.remove(&entry.path());
            }
        }
    }

    /// Runs agents over `pending` with the job's parallelism; `finished` is called in this
    /// thread for each result and may ask to stop (returning a reason).
    fn run_agents(
        &mut self,
        ctx: &AgentCtx,
        pending: VecDeque<usize>,
        mut finished: impl FnMut(
            &mut Job,
            &str,
            ItemResult,
            Option<Failure>,
        ) -> Result<Option<String>, RunError>,
    ) -> Result<Option<String>, RunError> {
        let workers = self.max_parallel.min(pending.len());
        let queue = Mutex::new(pending);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Msg>();
        let mut stop_reason = None;
        let mut outcome = Ok(());
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let queue = &queue;
                let stop = &stop;
                s.spawn(move || {
                    loop {
                        if stop.load(Ordering::SeqCst) || ctx.exec.interrupted() {
                            return;
                        }
                        let Some(index) =
                            queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                        else {
                            return;
                        };
                        let msg = run_agent(ctx, index, &tx);
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let mut killed = false;
            loop {
                let first = match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                if self.exec.interrupted() && !killed {
                    killed = true;
                    stop.store(true, Ordering::SeqCst);
                    self.exec.kill_all();
                }
                let mut changed = false;
                let mut next = first;
                while let Some(msg) = next {
                    match msg {
                        Msg::Started(key, agent) => {
                            self.state.checkpoint.running.insert(key, agent);
                        }
                        Msg::Interrupted(key) => {
                            self.state.checkpoint.running.remove(&key);
                        }
                        Msg::Cleaned => {}
                        Msg::Finished(key, result, failure) => {
                            self.state.checkpoint.running.remove(&key);
                            changed = true;
                            if outcome.is_ok() {
                                match finished(self, &key, result, failure) {
                                    Ok(Some(reason)) => {
                                        stop.store(true, Ordering::SeqCst);
                                        stop_reason.get_or_insert(reason);
                                    }
                                    Ok(None) => {}
                                    Err(e) => {
                                        stop.store(true, Ordering::SeqCst);
                                        outcome = Err(e);
                                    }
                                }
                            }
                        }
                    }
                    next = rx.try_recv().ok();
                }
                if changed && outcome.is_ok() {
                    let n =
                        self.state.checkpoint.counters.done + self.state.checkpoint.counters.failed;
                    if let Err(e) = self.save(&format!("{n} items finished")) {
                        stop.store(true, Ordering::SeqCst);
                        outcome = Err(e);
                    }
                }
                self.progress();
            }
        });
        outcome?;
        Ok(stop_reason)
    }

    fn finish_item(
        &mut self,
        ctx: &AgentCtx,
        key: &str,
        result: ItemResult,
        failure: Option<Failure>,
    ) -> Result<Option<String>, RunError> {
        let index = result.index;
        let failed = result.status == ItemStatus::Failed;
        self.state.record(key, result);
        let Some(failure) = failure else {
            return Ok(None);
        };
        if self.plan.on_item_failure == OnItemFailure::Dlq {
            self.dead_letter(key, ctx.items[index].clone(), failure.clone())?;
        }
        let c = self.state.checkpoint.counters;
        if failed && self.plan.on_item_failure == OnItemFailure::Stop {
            return Ok(Some(format!(
                "item {index} ({key}) failed and on_item_failure is stop: {}",
                failure.error_message
            )));
        }
        if let Some(max) = self.plan.max_failures
            && c.failed > max
        {
            return Ok(Some(format!(
                "{} items failed, more than max_failures ({max})",
                c.failed
            )));
        }
        Ok(None)
    }

    fn dead_letter(&self, key: &str, data: Value, failure: Failure) -> Result<(), RunError> {
        let item = self.dlq.add(key, data, failure)?;
        self.log(MapReduceEvent::DlqItemAdded {
            job_id: self.id().to_owned(),
            item_id: key.to_owned(),
            error_signature: item.error_signature,
            failure_count: item.failure_count,
        })
    }

    /// Merges a done agent's commits into the job's worktree. A conflict makes the item
    /// failed (dead-lettered as `merge_conflict`, which needs a person); any other git
    /// failure stops the job at its checkpoint, since it is not the item's fault.
    fn merge_one(
        &mut self,
        key: &str,
        mut result: ItemResult,
        data: Value,
    ) -> Result<ItemResult, RunError> {
        let worktree = self.state.spec.worktree.clone();
        let agent = result.agent_id.clone();
        let Some(last) = result.commits.last().cloned() else {
            result.merged = true;
            return Ok(result);
        };
        if !git::is_merged(&worktree, &last) {
            let message = format!(
                "Merge {agent} (item {key}) of prodigy job {}",
                self.state.spec.id
            );
            let marker = pending_path(&self.state.spec);
            let keep = git::untracked(&worktree)?;
            Pending::Merge(keep.clone()).write(&marker)?;
            let merged = git::merge(&worktree, &last, &message, &self.state.spec.env);
            // Stopped half-way (a full disk): undone now if it can be, else by resume (the
            // marker stays). A conflict was aborted by git itself.
            let whole = match &merged {
                Err(e) if !e.conflict => git::restore(&worktree, &keep).is_ok(),
                _ => true,
            };
            if whole {
                Pending::clear(&marker)?;
            }
            if let Err(e) = merged {
                if !e.conflict {
                    return Err(e.into());
                }
                let error = format!("merge conflict merging {agent}: {}", e.message);
                result.status = ItemStatus::Failed;
                result.error = Some(error.clone());
                let failure = Failure {
                    error_message: error,
                    agent_id: Some(agent),
                    step: Some("merge".into()),
                    ..Failure::default()
                };
                self.dead_letter(key, data, failure)?;
                return Ok(result);
            }
        }
        result.merged = true;
        self.log(MapReduceEvent::WorktreeMerged {
            job_id: self.id().to_owned(),
            agent_id: agent,
            target_branch: self.state.spec.branch.clone(),
        })?;
        self.state.checkpoint.job_head = git::head(&worktree).ok();
        Ok(result)
    }

    /// The job's branch is not in this repository — typically a job resumed on another
    /// host sharing a remote store: the store has its events and checkpoints, but its
    /// commits stayed in the first host's repository. Items whose commits are here are
    /// merged again; the others run again here. Setup's commits are gone with the branch.
    fn reclaim_commits(&mut self) -> Result<(), RunError> {
        let root = self.state.spec.repo_root.clone();
        let mut rerun = Vec::new();
        let mut remerge = Vec::new();
        for (key, r) in &self.state.results {
            if r.status != ItemStatus::Done || r.commits.is_empty() {
                continue;
            }
            if r.commits.iter().all(|c| git::commit_exists(&root, c)) {
                if r.merged {
                    remerge.push(key.clone());
                }
            } else {
                rerun.push(key.clone());
            }
        }
        if rerun.is_empty() && remerge.is_empty() {
            return Ok(());
        }
        for key in &remerge {
            if let Some(mut r) = self.state.results.get(key).cloned() {
                r.merged = false;
                self.state.record(key, r);
            }
        }
        for key in &rerun {
            self.state.forget(key);
        }
        if !rerun.is_empty() && matches!(self.state.checkpoint.phase, Phase::Merge | Phase::Reduce)
        {
            self.state.checkpoint.phase = Phase::Map;
            self.state.checkpoint.reduce_done = 0;
        }
        if matches!(self.state.checkpoint.phase, Phase::Reduce) {
            self.state.checkpoint.phase = Phase::Merge;
            self.state.checkpoint.reduce_done = 0;
        }
        self.note(&format!(
            "branch {} is not in '{}': {} items whose commits are not here run again, {} are merged again (fetch the branch from where the job started to keep its commits instead)",
            self.state.spec.branch,
            root.display(),
            rerun.len(),
            remerge.len()
        ));
        self.save("commits not in this repository")
    }

    fn merge(&mut self) -> Result<(), RunError> {
        let mut todo: Vec<(String, ItemResult)> = self
            .state
            .results
            .iter()
            .filter(|(_, r)| r.status == ItemStatus::Done && !r.merged && !r.commits.is_empty())
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        todo.sort_by_key(|(_, r)| r.index);
        if !todo.is_empty() {
            self.note(&format!("merging {} agents' commits", todo.len()));
        }
        let (items, _) = self.load_items()?;
        for (key, result) in todo {
            if self.exec.interrupted() {
                return Ok(());
            }
            let index = result.index;
            let data = items.get(index).cloned().unwrap_or(Value::Null);
            let result = self.merge_one(&key, result, data)?;
            let merged = result.merged;
            self.state.record(&key, result);
            self.save(&format!("merged agent-{index}"))?;
            if merged {
                self.worktrees()
                    .delete_branch(&agent_branch(&self.state.spec, index));
            }
            self.progress();
        }
        self.state.checkpoint.phase = Phase::Reduce;
        self.save("phase reduce")?;
        Ok(())
    }

    fn results_json(&self) -> String {
        let mut rows: Vec<(&String, &ItemResult)> = self.state.results.iter().collect();
        rows.sort_by_key(|(_, r)| r.index);
        let list: Vec<Value> = rows
            .into_iter()
            .map(|(k, r)| {
                json!({
                    "item_id": k,
                    "index": r.index,
                    "status": r.status,
                    "agent_id": r.agent_id,
                    "output": r.output,
                    "commits": r.commits,
                    "error": r.error,
                })
            })
            .collect();
        Value::Array(list).to_string()
    }

    fn reduce(&mut self) -> Result<(), RunError> {
        self.job_steps(Phase::Reduce)?;
        self.state.checkpoint.phase = Phase::Complete;
        self.state.checkpoint.ended = Some(now_timestamp());
        self.save("complete")?;
        Ok(())
    }

    /// The repository's retention policy, when it says `auto`, applied to the job's log
    /// now that it is complete. A failure is reported, not fatal: the job is done.
    fn apply_retention(&self) {
        let Ok(home) = crate::home::Home::at(self.states.refs().home_dir()) else {
            return;
        };
        let result = crate::config::Config::load(&home)
            .map_err(crate::events::EventError::from)
            .and_then(|config| {
                let policy = config.policy(&self.state.spec.repo);
                if !policy.auto || policy.is_unlimited() {
                    return Ok(None);
                }
                let log = crate::events::EventLog::new(
                    self.states.refs().clone(),
                    &self.state.spec.repo,
                    self.id(),
                )?;
                log.clean(policy, jiff::Timestamp::now(), false).map(Some)
            });
        match result {
            Ok(Some(r)) if r.events_removed > 0 => self.note(&format!(
                "retention: {} {} of {} events",
                if r.archived { "archived" } else { "removed" },
                r.events_removed,
                r.events_before
            )),
            Ok(_) => {}
            Err(e) => self.note(&format!("retention not applied: {}", crate::error_line(&e))),
        }
    }

    fn complete(&mut self) -> Result<Outcome, RunError> {
        // Done markers have served: every result is in the checkpoint.
        if let Ok(entries) = std::fs::read_dir(&self.state.spec.agents_dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".done") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let c = self.state.checkpoint.counters;
        self.log(MapReduceEvent::JobCompleted {
            job_id: self.id().to_owned(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            success_count: c.done,
            failure_count: c.failed,
        })?;
        self.logger.flush()?;
        self.apply_retention();
        Ok(Outcome {
            job_id: self.id().to_owned(),
            repo: self.state.spec.repo.clone(),
            counters: c,
            worktree: self.state.spec.worktree.clone(),
            branch: self.state.spec.branch.clone(),
            already_complete: false,
        })
    }

    fn retry(&mut self, retry: RetryOptions) -> Result<RetryOutcome, RunError> {
        let snapshot = self.dlq.snapshot()?;
        let (items, keys) = self.load_items()?;
        let mut selected = Vec::new();
        let mut stale = Vec::new();
        for (key, summary) in &snapshot.items {
            let keep = match &retry.filter {
                None => true,
                Some(f) if f.needs_item() => {
                    let item = self.dlq.item(summary)?;
                    f.matches_item(&item, summary)
                }
                Some(f) => f.matches_summary(key, summary),
            };
            if !keep {
                continue;
            }
            // An item that succeeded after it was dead-lettered (a crash between the two
            // records, or `resume --from`) leaves the queue instead of running again.
            if self
                .state
                .results
                .get(key)
                .is_some_and(|r| r.status == ItemStatus::Done)
            {
                stale.push(key.clone());
                continue;
            }
            match keys.iter().position(|k| k == key) {
                Some(index) => selected.push(index),
                None => self.note(&format!(
                    "{key} is not an item of this job's work list; skipped"
                )),
            }
        }
        if !stale.is_empty() {
            self.note(&format!(
                "{} items already done; removed from the queue",
                stale.len()
            ));
            self.dlq.remove(&stale)?;
        }
        let mut outcome = RetryOutcome::default();
        if selected.is_empty() {
            return Ok(outcome);
        }
        self.ensure_parent()?;
        self.note(&format!("retrying {} items", selected.len()));
        let attempts = retry.max_retries.max(1);
        let ctx = self.agent_ctx(items, keys, attempts);
        let done = Mutex::new(&mut outcome);
        self.run_agents(&ctx, selected.into(), |job, key, result, failure| {
            let data = ctx.items[result.index].clone();
            match failure {
                Some(f) => {
                    job.dead_letter(key, data, f)?;
                    job.state.record(key, result);
                    done.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .failed
                        .push(key.to_owned());
                }
                None => {
                    // Merged, recorded and saved before it leaves the queue: a crash in
                    // between leaves a queue entry that the next retry drops as done.
                    let index = result.index;
                    let result = job.merge_one(key, result, data)?;
                    let merged = result.merged;
                    job.state.record(key, result);
                    job.save(&format!("retried agent-{index}"))?;
                    let mut outcome = done.lock().unwrap_or_else(|e| e.into_inner());
                    if merged {
                        job.dlq.remove(&[key.to_owned()])?;
                        job.log(MapReduceEvent::DlqItemRemoved {
                            job_id: job.id().to_owned(),
                            item_id: key.to_owned(),
                        })?;
                        job.worktrees()
                            .delete_branch(&agent_branch(&job.state.spec, index));
                        outcome.succeeded.push(key.to_owned());
                    } else {
                        outcome.failed.push(key.to_owned());
                    }
                }
            }
            Ok(None)
        })?;
        let count = outcome.succeeded.len();
        self.log(MapReduceEvent::DlqItemsReprocessed {
            job_id: self.id().to_owned(),
            count,
        })?;
        self.save("dlq retry")?;
        if self.exec.interrupted() {
            return Err(RunError::Interrupted {
                job: self.id().to_owned(),
            });
        }
        Ok(outcome)
    }
}

/// Where the agents' branches live: `prodigy-agent/<job>/<index>`, a namespace no job
/// branch (`prodigy/<job>`) can collide with.
fn agent_refs(spec: &JobSpec) -> String {
    format!("prodigy-agent/{}", spec.id)
}

fn agent_branch(spec: &JobSpec, index: usize) -> String {
    format!("{}/{index}", agent_refs(spec))
}

/// An agent's worktree: `<job>@agent-<index>`, a name (git's too) no other job's can
/// take, since `@` is not allowed in job ids.
fn agent_dir(spec: &JobSpec, index: usize) -> PathBuf {
    spec.agents_dir.join(format!("{}@agent-{index}", spec.id))
}

/// Where a change to the job's worktree under way is recorded (beside the worktree).
fn pending_path(spec: &JobSpec) -> PathBuf {
    spec.agents_dir.join("job-worktree.pending")
}

/// A change to the job's worktree under way, recorded before git starts it and removed
/// once the worktree is whole again. The next runner that finds it repairs what the change
/// left half done: git writes a checkout's or a merge's files before its index, so a kill
/// or a full disk in between leaves files that block every later merge.
#[derive(Debug, PartialEq, Eq)]
enum Pending {
    /// The worktree is being checked out; it is removed and made again.
    Create,
    /// A merge; the worktree is put back to `HEAD`, keeping the files that were untracked
    /// before it (what setup left).
    Merge(std::collections::BTreeSet<PathBuf>),
}

impl Pending {
    /// The marker's bytes: the operation, then each kept name, each ended by NUL (file
    /// names are bytes).
    fn write(&self, path: &Path) -> Result<(), RunError> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = match self {
            Pending::Create => b"create\0".to_vec(),
            Pending::Merge(keep) => keep.iter().fold(b"merge\0".to_vec(), |mut b, name| {
                b.extend_from_slice(name.as_os_str().as_bytes());
                b.push(0);
                b
            }),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        fsutil::write_atomic(path, dir, &bytes, 0o644)?;
        Ok(())
    }

    fn read(path: &Path) -> Result<Option<Pending>, RunError> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FsError::new("read", path, e).into()),
        };
        let mut parts = bytes.split(|b| *b == 0).filter(|p| !p.is_empty());
        Ok(match parts.next() {
            Some(b"create") => Some(Pending::Create),
            Some(b"merge") => Some(Pending::Merge(
                parts
                    .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
                    .collect(),
            )),
            // Not ours (or cut short, which write_atomic rules out): repair the most.
            _ => Some(Pending::Create),
        })
    }

    fn clear(path: &Path) -> Result<(), RunError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::new("remove", path, e).into()),
        }
    }
}

fn open_log(path: &Path) -> Result<Arc<Mutex<File>>, RunError> {
    let file = fsutil::open_append(path).at("open log", path)?;
    Ok(Arc::new(Mutex::new(file)))
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}
