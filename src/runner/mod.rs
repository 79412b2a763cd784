//! The MapReduce runner (DESIGN.md §9): `run`, `resume` and `dlq retry`.
//!
//! A job runs in its own git worktree (`worktrees/<repo>/<job>/<job>@job`, branch
//! `prodigy/<job>` made from the recorded base commit): setup there, then one agent per
//! work item in a fresh worktree (its worker's, `…/<job>@slot-<n>`, reset between agents;
//! detached; its commits, if any, on `prodigy-agent/<job>/<index>`), then the agents' commits merged into the job's
//! worktree, then reduce there. Every change of state is a checkpoint ([`crate::state`])
//! written after the events that explain it are durable; `resume` starts from the
//! checkpoint alone, recreating whatever worktree is missing.
//!
//! One file per part of a job's life: `job` (its state, lock, checkpoints, the loop
//! through the phases, the steps of setup and reduce), `setup`, `map` (with `agent`, what
//! one agent does), `merge`, `reduce` (and completion), `retry` (`dlq retry`); `exec` runs
//! one step, `git` the git commands.

mod agent;
pub mod claude;
pub mod cleanup;
pub mod exec;
pub mod git;
mod job;
mod map;
mod merge;
mod reduce;
mod retry;
mod setup;
mod site;
mod step;

use merge::{Pending, pending_path};
pub use retry::{RetryOptions, RetryOutcome, retry_dlq};

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
use crate::repo::{self, RepoError};
use crate::state::{
    AgentState, Counters, ItemResult, ItemStatus, JobSpec, JobState, JobStateManager, Phase,
    StateError, item_key,
};
use crate::store::object::ObjectId;
use crate::store::refs::RefStore;
use crate::workflow::env::Masker;
use crate::workflow::template::Vars;
use crate::workflow::{Collection, OnItemFailure, Plan, WorkflowError, input};
use agent::{Site, run_agent, run_step};
use exec::{Executor, StepSpec};
use git::GitError;

/// The variable holding a session's `run -n` count (recorded in the job's env).
pub const ITERATIONS_ENV: &str = "PRODIGY_MAX_ITERATIONS";

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
    /// `worktree merge` of a job that is not complete.
    #[error("job '{job}' is not complete (phase {phase}): its branch holds what is done so far")]
    NotComplete {
        /// The job.
        job: String,
        /// Its phase.
        phase: String,
    },
    /// The job's branch is not in this repository.
    #[error("branch {branch} is not in '{}'", .repo.display())]
    BranchMissing {
        /// The branch.
        branch: String,
        /// The repository.
        repo: PathBuf,
    },
    /// A job whose branch is gone, in its setup (or a session), where the commits of its
    /// finished steps are on no agent branch either: running on would drop them.
    #[error(
        "job '{job}': branch {branch} is gone and its last recorded commit {commit} is not in '{}', so the commits of its finished steps are not here; fetch the branch from where the job ran, or run the workflow again as a new job",
        .repo.display()
    )]
    StepsLost {
        /// The job.
        job: String,
        /// Its branch.
        branch: String,
        /// The commit the checkpoint recorded.
        commit: String,
        /// The repository.
        repo: PathBuf,
    },
    /// The job's worktree is on another branch than the job's, and cannot be put back.
    #[error("job '{job}': its worktree '{}' is not on {branch}: {reason}; check {branch} out there, then resume", .worktree.display())]
    OffBranch {
        /// The job.
        job: String,
        /// Its branch.
        branch: String,
        /// Its worktree.
        worktree: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The workflow's environment could not be made (a secret not set, an env command
    /// that failed).
    #[error("{}: {message}", .workflow.display())]
    Env {
        /// The workflow file.
        workflow: PathBuf,
        /// What went wrong.
        message: String,
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
            RunError::NotComplete { .. } => {
                Some("`prodigy resume <job>` finishes it; `--force` merges what is there")
            }
            RunError::BranchMissing { .. } => {
                Some("the job ran in another clone: fetch its branch from there first")
            }
            RunError::Env { .. } => Some(
                "secrets are read from the environment of `run` and `resume` (never stored): set them, then run again",
            ),
            RunError::Step { .. } => Some(
                "the step's log is in the job's logs/ (`prodigy jobs show <job>`); `prodigy resume <job>` runs it again",
            ),
            RunError::Stopped { .. } => Some(
                "the agents' logs are in the job's logs/ (`prodigy jobs show <job>`); `prodigy resume <job>` runs the items left",
            ),
            RunError::Name(_)
            | RunError::Interrupted { .. }
            | RunError::BranchExists { .. }
            | RunError::StepsLost { .. }
            | RunError::OffBranch { .. } => None,
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
    /// A line a step printed (secrets masked): `source` is the phase of a job-level step
    /// (`setup`, `reduce`, `session`, `merge`, `input`) or the agent (`agent-3`).
    fn output(&self, _source: &str, _line: &[u8]) {}
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
    /// Yes to every question (`run -y`): a session's `merge:` steps run unasked.
    pub yes: bool,
    /// Variables added to the workflow's environment (`--args` gives `ARG`, `--param` its
    /// names), recorded with the job so `resume` sees them.
    pub env: BTreeMap<String, String>,
    /// The workflow profile whose values go over its env (`run --profile`).
    pub profile: Option<String>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("job_id", &self.job_id)
            .field("max_parallel", &self.max_parallel)
            .field("supervisor", &self.supervisor)
            .field("env", &self.env)
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
    /// For a session (a sequential workflow): how many steps it ran through.
    pub steps: Option<usize>,
    /// A session whose `merge:` steps wait for a yes (`resume -y` runs them).
    pub merge_pending: bool,
    /// The workflow has `merge:` steps: they, not prodigy, bring the result back.
    pub merges_itself: bool,
}

/// Starts a job for the workflow at `workflow`, in the repository holding `dir`.
pub fn run(home: &Home, workflow: &Path, dir: &Path, opts: Options) -> Result<Outcome, RunError> {
    let inputs = crate::workflow::Inputs {
        env: opts.env.clone(),
    };
    let plan = Plan::load_with(workflow, &inputs)?;
    plan.check_env()?;
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
        None => generate_job_id(if plan.is_sequential() {
            "prodigy-session"
        } else {
            "mr"
        }),
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
    // The environment the job records: files, profile and computed values resolved now
    // (secrets are read at every start instead, never recorded).
    let env = plan
        .environment
        .values(&plan.env, opts.profile.as_deref(), &location.root)
        .map_err(|message| RunError::Env {
            workflow: workflow.to_owned(),
            message,
        })?;
    let missing_files = plan.environment.missing_files(&location.root);
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
        env,
        started: now_timestamp(),
        workflow_source: plan.source.clone(),
        imported_from: None,
        target_branch: git::git(dir, &["symbolic-ref", "--short", "-q", "HEAD"])
            .ok()
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty()),
    };
    let state = states.create(spec)?;
    let mut job = Job::new(home, refs, states, plan, state, opts)?;
    job.note(&format!(
        "{} {job_id} of repo {repo_name}: workflow {}, worktree '{}'",
        if job.plan.is_sequential() {
            "session"
        } else {
            "job"
        },
        job.plan.name(),
        job.state.spec.worktree.display()
    ));
    for warning in &job.plan.warnings {
        job.note(&format!("warning: {warning}"));
    }
    for file in missing_files {
        job.note(&format!(
            "env_files: '{file}' is not in the repository; skipped, as the original skips it"
        ));
    }
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
    let plan = plan_of(&state.spec)?;
    if state.checkpoint.phase == Phase::Complete {
        // Nothing to do, like `git merge` of a merged branch: a script may resume blindly.
        return Ok(Outcome {
            job_id: job_id.to_owned(),
            repo: repo_name.to_owned(),
            counters: state.checkpoint.counters,
            worktree: state.spec.worktree.clone(),
            branch: state.spec.branch.clone(),
            already_complete: true,
            steps: plan.is_sequential().then_some(state.checkpoint.setup_done),
            merge_pending: false,
            merges_itself: !plan.merge.is_empty(),
        });
    }
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
    if job.rewind {
        job.state.checkpoint.rewound = Some(crate::events::record::now_timestamp());
    }
    job.run_lock = Some(lock);
    job.drive()
}

/// The plan a job runs: its workflow's text as stored with it, read with the
/// environment it recorded (so `ARG` and `--param` names are known, as at `run`).
fn plan_of(spec: &JobSpec) -> Result<Plan, RunError> {
    let inputs = crate::workflow::Inputs {
        env: spec.env.clone(),
    };
    Ok(Plan::parse_with(
        &spec.workflow_path,
        &spec.workflow_source,
        &inputs,
    )?)
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

/// A new id: `mr-<date>-<time>-<random>` for a job, `prodigy-session-<date>-<time>-<random>`
/// for a session (the original's session prefix).
fn generate_job_id(prefix: &str) -> String {
    let now = jiff::Timestamp::now();
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[24..];
    format!("{prefix}-{}-{suffix}", now.strftime("%Y%m%d-%H%M%S"))
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
    refs: RefStore,
    items: Vec<Value>,
    keys: Vec<String>,
    max_attempts: u32,
    /// The secrets, for the agents' environment.
    secrets: BTreeMap<String, String>,
    /// The job's env with the secrets (`${env.X}`).
    env_all: BTreeMap<String, String>,
    mask: Arc<Masker>,
    /// Record each step's commits (a step reads `${step.*}`).
    track_git: bool,
    /// Where the agents' output lines go (the front end decides whether to show them).
    observer: Option<Arc<dyn Observer>>,
}

enum Msg {
    Started(String, AgentState),
    Finished(String, ItemResult, Option<Failure>),
    Interrupted(String),
    Cleaned,
    /// Worker `n` waits for the verdict on the failure it just sent: the error policy may
    /// stop the phase, and no item may start after it has.
    Verdict(usize),
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
    /// `-y`: yes to every question.
    yes: bool,
    max_parallel: usize,
    started: Instant,
    /// `resume --from`: put the job's branch back where the checkpoint saw it.
    rewind: bool,
    /// The run lock (a lease on a remote store), held while the job runs.
    run_lock: Option<crate::state::RunLock>,
    /// The workflow's secrets, read at this start (never stored).
    secrets: BTreeMap<String, String>,
    /// Replaces them in all the job writes.
    mask: Arc<Masker>,
    /// Failed items not told on the terminal yet (`error_collection`).
    failures: Vec<String>,
}

/// Where the agents' branches live: `prodigy-agent/<job>/<index>`, a namespace no job
/// branch (`prodigy/<job>`) can collide with.
fn agent_refs(spec: &JobSpec) -> String {
    format!("prodigy-agent/{}", spec.id)
}

fn agent_branch(spec: &JobSpec, index: usize) -> String {
    format!("{}/{index}", agent_refs(spec))
}

/// A failed agent's worktree, kept for inspection (and the base of its done marker's
/// name): `<job>@agent-<index>`, a name (git's too) no other job's can take, since `@` is
/// not allowed in job ids.
fn agent_dir(spec: &JobSpec, index: usize) -> PathBuf {
    spec.agents_dir.join(format!("{}@agent-{index}", spec.id))
}

/// A worker's worktree, reset from one agent to the next: `<job>@slot-<n>`.
fn slot_dir(spec: &JobSpec, n: usize) -> PathBuf {
    spec.agents_dir.join(format!("{}@slot-{n}", spec.id))
}

/// A job's agent worktrees on disk, each with its number, sorted: kept failed agents'
/// (`<job>@agent-<index>`) and workers' (`<job>@slot-<n>`).
#[derive(Default)]
struct AgentDirs {
    agents: Vec<(usize, PathBuf)>,
    slots: Vec<(usize, PathBuf)>,
}

fn agent_dirs(spec: &JobSpec) -> AgentDirs {
    let agent = format!("{}@agent-", spec.id);
    let slot = format!("{}@slot-", spec.id);
    let mut dirs = AgentDirs::default();
    for entry in std::fs::read_dir(&spec.agents_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let number = |prefix: &str| name.strip_prefix(prefix)?.parse::<usize>().ok();
        if let Some(index) = number(&agent) {
            dirs.agents.push((index, entry.path()));
        } else if let Some(n) = number(&slot) {
            dirs.slots.push((n, entry.path()));
        }
    }
    dirs.agents.sort();
    dirs.slots.sort();
    dirs
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
