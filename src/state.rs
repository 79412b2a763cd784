//! Job state and checkpoints (DESIGN.md §8): `JobStateManager`, the `checkpoint` chain
//! under `state/<repo>/<job>`, the job's `items` object and the per-job run lock.
//!
//! A checkpoint is small and grows by O(1) per finished item: it names the job's spec (a
//! `blob` written once), its work-item list (an `items` object written once) and its
//! parent, and holds only the item results that changed since its parent (`delta`). Every
//! so often a checkpoint is *full* (its `delta` holds every result) and later ones name it
//! as their `base`, so loading walks at most [`MAX_HOPS`] checkpoints. A full checkpoint
//! is written when the results since the last one outnumber those in it (a geometric
//! rule, so its cost is amortised O(1) per item, like a growing vector) or after
//! [`MAX_HOPS`] checkpoints (or a quarter of the full checkpoint's results, if more).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::record::now_timestamp;
use crate::fsutil::FsError;
use crate::lock::{LockError, LockOptions};
use crate::names::{self, NameError};
use crate::store::object::{ObjectError, ObjectId, ObjectType};
use crate::store::refs::{Expect, Holder, RefError, RefKind, RefName, RefStore, Taken};

/// Checkpoints walked at most to load a job (then a full checkpoint is written), or a
/// quarter of the results in the last full checkpoint when that is more (so a full
/// checkpoint's cost stays amortised O(1) per item).
pub const MAX_HOPS: u32 = 1024;

/// How long taking a job's run lock waits before saying another process runs the job.
const RUN_LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Results below which a full checkpoint is not worth writing.
const MIN_FULL: usize = 64;

/// Failures of job state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A bad repo name or job id.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The ref layer failed.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// The object layer failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The run lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The default home could not be chosen.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// No state ref for the job.
    #[error("no job '{job}' in repository '{repo}' (no ref state/{repo}/{job})")]
    NoJob {
        /// The repo name.
        repo: String,
        /// The job id.
        job: String,
    },
    /// The job already exists (`run --job-id` with a used id).
    #[error("job '{job}' already exists in repository '{repo}' (use `prodigy resume {job}`)")]
    Exists {
        /// The repo name.
        repo: String,
        /// The job id.
        job: String,
    },
    /// Another process runs the job.
    #[error("job '{job}' is running in another process (lock '{}' is held)", .path.display())]
    Busy {
        /// The job id.
        job: String,
        /// The run lock.
        path: PathBuf,
    },
    /// Another host (or process) holds the job's lease on a remote store.
    #[error(
        "job '{job}' is running on host '{host}' (pid {pid}): its lease '{url}' expires in {remaining_secs} s unless renewed"
    )]
    Leased {
        /// The job id.
        job: String,
        /// The lease's key.
        url: String,
        /// The holder's host.
        host: String,
        /// The holder's process.
        pid: u32,
        /// Seconds until it expires.
        remaining_secs: u64,
    },
    /// The job was imported from the original tool and records no workflow to run.
    #[error(
        "job '{job}' was imported from the original tool ({from}); it records no workflow steps, so it cannot be resumed or retried (start it again with `prodigy run`)"
    )]
    Imported {
        /// The job id.
        job: String,
        /// Where it was imported from.
        from: String,
    },
    /// Someone moved the state ref while we held the run lock.
    #[error("state/{repo}/{job} moved under the runner: expected {expected}, found {found}")]
    Moved {
        /// The repo name.
        repo: String,
        /// The job id.
        job: String,
        /// What we last wrote.
        expected: String,
        /// What is there.
        found: String,
    },
    /// A stored object does not have the shape it should.
    #[error("{what} {id} is malformed: {message}")]
    Malformed {
        /// Which kind of object.
        what: &'static str,
        /// The object.
        id: ObjectId,
        /// What is wrong.
        message: String,
    },
}

impl crate::hint::Hint for StateError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            StateError::Ref(e) => e.hint(),
            StateError::Object(e) => e.hint(),
            StateError::Fs(e) => e.hint(),
            StateError::Lock(e) => e.hint(),
            StateError::Storage(e) => e.hint(),
            StateError::NoJob { .. } => Some(
                "`prodigy jobs` lists this repository's jobs (`--all-repos` every repository's)",
            ),
            StateError::Busy { .. } => Some(
                "wait for it to finish (`prodigy jobs` shows how far it is); a killed runner's lock is released at once",
            ),
            StateError::Leased { .. } => Some(
                "a host that died frees the job once its lease expires; then run `prodigy resume` again",
            ),
            StateError::Moved { .. } => Some(crate::hint::LEASE),
            StateError::Name(_)
            | StateError::Exists { .. }
            | StateError::Imported { .. }
            | StateError::Malformed { .. } => None,
        }
    }
}

/// The phase a job is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Running the setup steps.
    Setup,
    /// Running agents over the work items.
    Map,
    /// Merging the agents' commits into the job's worktree.
    Merge,
    /// Running the reduce steps.
    Reduce,
    /// Finished.
    Complete,
}

impl Phase {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Map => "map",
            Phase::Merge => "merge",
            Phase::Reduce => "reduce",
            Phase::Complete => "complete",
        }
    }
}

/// What the job is: fixed when it starts, stored once as a `blob`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job id.
    pub id: String,
    /// The repo name.
    pub repo: String,
    /// The repository's root (its main worktree).
    pub repo_root: PathBuf,
    /// Where the workflow file was.
    pub workflow_path: PathBuf,
    /// The workflow, resolved (as JSON).
    pub workflow: Value,
    /// The commit the job started from.
    pub base_commit: String,
    /// The branch the job's own worktree works on.
    pub branch: String,
    /// The job's own worktree (setup, merge and reduce run there).
    pub worktree: PathBuf,
    /// The directory holding the agents' worktrees and logs.
    pub agents_dir: PathBuf,
    /// The environment the steps get (the workflow's `env`, resolved).
    pub env: BTreeMap<String, String>,
    /// When the job started.
    pub started: String,
    /// The workflow file's text, parsed again by `resume`.
    pub workflow_source: String,
    /// For a job imported from the original tool's repo-local checkpoints
    /// (`prodigy migrate-events`): where they were. Such a job records no workflow steps,
    /// so it cannot be resumed; the fields the original did not record are empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
    /// The branch the repository was on when the job started (a session's
    /// `${merge.target_branch}`); none when it was detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_branch: Option<String>,
}

/// The outcome of one finished item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The item's position in the work list.
    pub index: usize,
    /// done, failed or skipped.
    pub status: ItemStatus,
    /// The agent that ran it last (empty when not recorded: imported results).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// How long the last attempt took.
    pub duration_ms: u64,
    /// The commits the agent made (oldest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commits: Vec<String>,
    /// True once its commits are merged into the job's worktree.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merged: bool,
    /// The captured output of its last step with `capture_output`, whole (a capture is at
    /// most 1 MiB; a step printing more fails saying so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The error, for a failed item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How an item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Its agent succeeded.
    Done,
    /// Its agent failed after every retry (in the DLQ when the policy says so).
    Failed,
}

/// An agent at work when the checkpoint was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// The agent id.
    pub agent_id: String,
    /// The item's position.
    pub index: usize,
    /// Its worktree.
    pub worktree: PathBuf,
    /// Its branch.
    pub branch: String,
    /// The attempt (1-based).
    pub attempt: u32,
    /// When it started.
    pub started: String,
}

/// Counts of a job's items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Items in the work list.
    pub total: usize,
    /// Items done.
    pub done: usize,
    /// Items failed.
    pub failed: usize,
}

impl Counters {
    /// Items neither done nor failed.
    pub fn pending(&self) -> usize {
        self.total.saturating_sub(self.done + self.failed)
    }
}

/// A `checkpoint` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version.
    pub v: u32,
    /// The previous checkpoint.
    pub parent: Option<ObjectId>,
    /// 1, 2, 3, … along the chain.
    pub version: u32,
    /// When it was written.
    pub created: String,
    /// Why it was written (`item finished`, `phase map`, `interrupted`, …).
    pub reason: String,
    /// The job's spec (a `blob`).
    pub spec: ObjectId,
    /// The work-item list, once known.
    pub items: Option<ObjectId>,
    /// The phase.
    pub phase: Phase,
    /// Setup steps finished.
    pub setup_done: usize,
    /// Reduce steps finished.
    pub reduce_done: usize,
    /// What the finished setup or reduce steps captured (`capture_output`), for the steps
    /// after them, across a resume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub captured: BTreeMap<String, String>,
    /// What the setup steps captured, which agents and reduce see too.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub setup_captured: BTreeMap<String, String>,
    /// The commit agents branch from (the job's worktree after setup).
    pub map_base: Option<String>,
    /// The job's branch when this checkpoint was written (moved by setup, the merges and
    /// reduce); `resume --from` puts the branch back here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_head: Option<String>,
    /// Counters.
    pub counters: Counters,
    /// Agents at work.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub running: BTreeMap<String, AgentState>,
    /// The nearest full checkpoint before this one (none when this one is full).
    pub base: Option<ObjectId>,
    /// Checkpoints since `base`.
    pub hops: u32,
    /// True when `delta` holds every result.
    pub full: bool,
    /// Results that changed since the parent (all results when `full`).
    pub delta: BTreeMap<String, ItemResult>,
    /// When the job ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Why the job stopped before completing (its error policy, a failed setup or reduce
    /// step); `resume` clears it and goes on from `phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For an imported checkpoint: the original file's bytes (a `blob`), kept as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<ObjectId>,
    /// Set by `resume --from`: completions the event log holds from before this time were
    /// undone by the rewind, so a later resume does not adopt them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewound: Option<String>,
    /// Set by `resume --from` in the checkpoint it saves before it moves the job's branch
    /// back to `job_head`, cleared once it has: a start that finds it set (the rewind was
    /// killed between the two) moves the branch back first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rewind_pending: bool,
}

impl Checkpoint {
    /// The objects a stored checkpoint names — its parent, its nearest full checkpoint,
    /// the job's spec, its work-item list and (imported ones) the original file — read
    /// from its payload for the reachability walk (a test checks it declares every id).
    pub fn links(payload: &[u8]) -> Vec<ObjectId> {
        #[derive(Deserialize)]
        struct Links {
            parent: Option<ObjectId>,
            base: Option<ObjectId>,
            spec: Option<ObjectId>,
            items: Option<ObjectId>,
            original: Option<ObjectId>,
        }
        match serde_json::from_slice::<Links>(payload) {
            Ok(l) => [l.parent, l.base, l.spec, l.items, l.original]
                .into_iter()
                .flatten()
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A job's state in memory: the newest checkpoint's header plus every result.
#[derive(Debug, Clone)]
pub struct JobState {
    /// The checkpoint this state was loaded from or last saved as.
    pub head: Option<ObjectId>,
    /// Its header (its `delta` is the pending one, see [`JobState::record`]).
    pub checkpoint: Checkpoint,
    /// The job's spec.
    pub spec: JobSpec,
    /// Every finished item's result, by item key.
    pub results: BTreeMap<String, ItemResult>,
    since_base: usize,
    base_len: usize,
    // Loaded from an older checkpoint: the next one cannot build on its parent's chain.
    force_full: bool,
}

impl JobState {
    /// Records an item's result; the next [`JobStateManager::save`] writes it.
    pub fn record(&mut self, key: &str, result: ItemResult) {
        let before = self.results.insert(key.to_owned(), result.clone());
        let c = &mut self.checkpoint.counters;
        if let Some(old) = before {
            match old.status {
                ItemStatus::Done => c.done -= 1,
                ItemStatus::Failed => c.failed -= 1,
            }
        }
        match result.status {
            ItemStatus::Done => c.done += 1,
            ItemStatus::Failed => c.failed += 1,
        }
        self.checkpoint.delta.insert(key.to_owned(), result);
    }

    /// Forgets an item's result (it is pending again); the next save writes a full
    /// checkpoint, since a delta cannot say that a result is gone.
    pub fn forget(&mut self, key: &str) {
        if let Some(old) = self.results.remove(key) {
            let c = &mut self.checkpoint.counters;
            match old.status {
                ItemStatus::Done => c.done -= 1,
                ItemStatus::Failed => c.failed -= 1,
            }
        }
        self.checkpoint.delta.remove(key);
        self.force_full = true;
    }

    /// True when something changed since the last save.
    pub fn has_changes(&self) -> bool {
        !self.checkpoint.delta.is_empty()
    }
}

/// A checkpoint of the original tool, converted, for [`JobStateManager::import`]: its
/// `parent`, `spec`, `items` and `original` are filled in there.
#[derive(Debug, Clone)]
pub struct ImportedCheckpoint {
    /// The checkpoint (a full one: `delta` holds every result).
    pub checkpoint: Checkpoint,
    /// Its work-item list.
    pub items: Vec<Value>,
    /// The original file's bytes.
    pub original: Vec<u8>,
}

/// A held run lock: one process runs (or resumes, or retries) a job at a time (see
/// [`RefStore::job_lock`]).
pub type RunLock = crate::store::refs::JobLock;

/// Reads and writes the checkpoints of one repository's jobs.
#[derive(Debug, Clone)]
pub struct JobStateManager {
    refs: RefStore,
    repo: String,
}

impl JobStateManager {
    /// The jobs of `repo` in the default home.
    pub fn new_global(repo: &str) -> Result<JobStateManager, StateError> {
        let home = crate::storage::default_home()?;
        JobStateManager::new(RefStore::new(&home, LockOptions::from_env()), repo)
    }

    /// The jobs of `repo` on `refs`.
    pub fn new(refs: RefStore, repo: &str) -> Result<JobStateManager, StateError> {
        names::validate("repo name", repo)?;
        Ok(JobStateManager {
            refs,
            repo: repo.to_owned(),
        })
    }

    /// The repo name.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The ref store.
    pub fn refs(&self) -> &RefStore {
        &self.refs
    }

    /// The job's state ref.
    pub fn ref_name(&self, job: &str) -> Result<RefName, StateError> {
        Ok(RefName::new(RefKind::State, &self.repo, job)?)
    }

    /// Takes the job's run lock without waiting; [`StateError::Busy`] when another process
    /// holds it.
    pub fn lock_job(&self, job: &str) -> Result<RunLock, StateError> {
        // A runner killed while it was starting a process leaves, for a few milliseconds,
        // a forked child holding the lock's descriptor until it execs (which closes it):
        // a short wait covers that; a runner at work holds the lock far longer.
        self.lock_job_within(job, RUN_LOCK_GRACE)
    }

    /// [`Self::lock_job`], waiting up to `grace` for another holder to let go.
    pub fn lock_job_within(
        &self,
        job: &str,
        grace: std::time::Duration,
    ) -> Result<RunLock, StateError> {
        let name = self.ref_name(job)?;
        match self.refs.job_lock(&name, grace)? {
            Taken::Held(lock) => Ok(lock),
            Taken::Busy(Holder::Process { path, .. }) => Err(StateError::Busy {
                job: job.to_owned(),
                path,
            }),
            Taken::Busy(Holder::Host {
                url,
                host,
                pid,
                remaining_secs,
            }) => Err(StateError::Leased {
                job: job.to_owned(),
                url,
                host,
                pid,
                remaining_secs,
            }),
        }
    }

    /// Stores the work-item list (once per job; identical lists share one object).
    pub fn store_items(&self, items: &[Value]) -> Result<ObjectId, StateError> {
        let json = serde_json::to_vec(items).map_err(|e| StateError::Malformed {
            what: "items",
            id: ObjectId::ZERO,
            message: e.to_string(),
        })?;
        Ok(self.refs.objects().write(ObjectType::Items, &json)?)
    }

    /// Reads a work-item list.
    pub fn load_items(&self, id: &ObjectId) -> Result<Vec<Value>, StateError> {
        let object = self.refs.objects().read(id)?;
        if object.kind != ObjectType::Items {
            return Err(malformed("items", *id, format!("is a {}", object.kind)));
        }
        serde_json::from_slice(&object.payload).map_err(|e| malformed("items", *id, e))
    }

    /// Starts a job: stores its spec and its first checkpoint (phase setup). Refuses a job
    /// id that exists.
    pub fn create(&self, spec: JobSpec) -> Result<JobState, StateError> {
        let name = self.ref_name(&spec.id)?;
        let _gc = self.refs.write_guard()?;
        let json = serde_json::to_vec(&spec).map_err(|e| malformed("spec", ObjectId::ZERO, e))?;
        let spec_id = self.refs.objects().write(ObjectType::Blob, &json)?;
        let checkpoint = Checkpoint {
            v: 1,
            parent: None,
            version: 0,
            created: now_timestamp(),
            reason: String::new(),
            spec: spec_id,
            items: None,
            phase: Phase::Setup,
            setup_done: 0,
            reduce_done: 0,
            captured: BTreeMap::new(),
            setup_captured: BTreeMap::new(),
            map_base: None,
            job_head: None,
            counters: Counters::default(),
            running: BTreeMap::new(),
            base: None,
            hops: 0,
            full: true,
            delta: BTreeMap::new(),
            ended: None,
            error: None,
            original: None,
            rewound: None,
            rewind_pending: false,
        };
        let mut state = JobState {
            head: None,
            checkpoint,
            spec,
            results: BTreeMap::new(),
            since_base: 0,
            base_len: 0,
            force_full: false,
        };
        match self.write(&name, &mut state, "job created", Expect::Absent) {
            Err(StateError::Moved { .. }) => Err(StateError::Exists {
                repo: self.repo.clone(),
                job: state.spec.id.clone(),
            }),
            other => other.map(|_| state),
        }
    }

    /// Writes a checkpoint of `state` (its pending results, phase, counters, agents) and
    /// moves the job's ref to it, checking that nobody else moved it.
    pub fn save(&self, state: &mut JobState, reason: &str) -> Result<ObjectId, StateError> {
        let name = self.ref_name(&state.spec.id)?;
        let expect = match state.head {
            Some(id) => Expect::Value(id),
            None => Expect::Absent,
        };
        self.write(&name, state, reason, expect)
    }

    fn write(
        &self,
        name: &RefName,
        state: &mut JobState,
        reason: &str,
        expect: Expect,
    ) -> Result<ObjectId, StateError> {
        let _gc = self.refs.write_guard()?;
        let mut c = state.checkpoint.clone();
        c.parent = state.head;
        c.version += 1;
        c.created = now_timestamp();
        c.reason = reason.to_owned();
        let changed = c.delta.len();
        let full = state.head.is_none()
            || state.force_full
            || c.hops + 1 >= MAX_HOPS.max((state.base_len / 4) as u32)
            || state.since_base + changed >= state.base_len.max(MIN_FULL);
        if full {
            c.full = true;
            c.delta = state.results.clone();
            c.hops = 0;
            c.base = None;
        } else {
            c.full = false;
            c.hops += 1;
        }
        let json =
            serde_json::to_vec(&c).map_err(|e| malformed("checkpoint", ObjectId::ZERO, e))?;
        let id = self.refs.objects().write(ObjectType::Checkpoint, &json)?;
        if let Err(e) = self
            .refs
            .update(name, id, expect, &format!("checkpoint: {reason}"))
        {
            // The state is unchanged, so a retry writes the same results again.
            return Err(match e {
                RefError::Conflict { found, .. } => StateError::Moved {
                    repo: self.repo.clone(),
                    job: state.spec.id.clone(),
                    expected: state.head.map_or("nothing".into(), |h| h.to_string()),
                    found,
                },
                e => e.into(),
            });
        }
        c.delta = BTreeMap::new();
        if full {
            c.base = Some(id);
            state.force_full = false;
            state.base_len = state.results.len();
            state.since_base = 0;
        } else {
            state.since_base += changed;
        }
        state.checkpoint = c;
        state.head = Some(id);
        Ok(id)
    }

    /// Reads one checkpoint object.
    pub fn read_checkpoint(&self, id: &ObjectId) -> Result<Checkpoint, StateError> {
        let object = self.refs.objects().read(id)?;
        if object.kind != ObjectType::Checkpoint {
            return Err(malformed(
                "checkpoint",
                *id,
                format!("is a {}", object.kind),
            ));
        }
        serde_json::from_slice(&object.payload).map_err(|e| malformed("checkpoint", *id, e))
    }

    /// Reads a job's spec.
    pub fn read_spec(&self, id: &ObjectId) -> Result<JobSpec, StateError> {
        let object = self.refs.objects().read(id)?;
        serde_json::from_slice(&object.payload).map_err(|e| malformed("job spec", *id, e))
    }

    /// The newest checkpoint of `job` with its id.
    pub fn head(&self, job: &str) -> Result<(ObjectId, Checkpoint), StateError> {
        let name = self.ref_name(job)?;
        let id = self.refs.read(&name)?.ok_or_else(|| StateError::NoJob {
            repo: self.repo.clone(),
            job: job.to_owned(),
        })?;
        Ok((id, self.read_checkpoint(&id)?))
    }

    /// Loads `job` from its newest checkpoint.
    pub fn load(&self, job: &str) -> Result<JobState, StateError> {
        let (id, _) = self.head(job)?;
        self.load_at(job, id)
    }

    /// Loads `job` as of checkpoint `at` (which must belong to it); the next save still
    /// moves the ref from its current value.
    pub fn load_at(&self, job: &str, at: ObjectId) -> Result<JobState, StateError> {
        let (current, newest) = self.head(job)?;
        let top = self.read_checkpoint(&at)?;
        // Results: walk from `at` to its full checkpoint; newer deltas win.
        let mut results = BTreeMap::new();
        let mut since_base = 0;
        let mut cursor = top.clone();
        let mut cursor_id = at;
        loop {
            if cursor.full {
                let base_len = cursor.delta.len();
                for (k, v) in cursor.delta {
                    results.entry(k).or_insert(v);
                }
                let spec = self.read_spec(&top.spec)?;
                if let Some(from) = spec.imported_from {
                    return Err(StateError::Imported {
                        job: job.to_owned(),
                        from,
                    });
                }
                if spec.id != job {
                    return Err(malformed(
                        "checkpoint",
                        at,
                        format!("belongs to job '{}', not '{job}'", spec.id),
                    ));
                }
                let mut checkpoint = top;
                checkpoint.delta = BTreeMap::new();
                checkpoint.base = Some(cursor_id);
                // Versions keep counting from the newest, also after `resume --from`.
                checkpoint.version = newest.version;
                return Ok(JobState {
                    head: Some(current),
                    checkpoint,
                    spec,
                    results,
                    since_base,
                    base_len,
                    force_full: at != current,
                });
            }
            since_base += cursor.delta.len();
            for (k, v) in cursor.delta {
                results.entry(k).or_insert(v);
            }
            let parent = cursor
                .parent
                .ok_or_else(|| malformed("checkpoint", cursor_id, "no parent and not full"))?;
            cursor = self.read_checkpoint(&parent)?;
            cursor_id = parent;
        }
    }

    /// Chains checkpoints imported from the original tool (oldest first) onto `job`'s ref,
    /// which must hold `head` (`None`: the job is new). Each names `spec` (written once), its
    /// own work-item list and the original file's bytes; the ref moves once. Returns the
    /// new head.
    pub fn import(
        &self,
        job: &str,
        head: Option<ObjectId>,
        spec: &JobSpec,
        checkpoints: Vec<ImportedCheckpoint>,
    ) -> Result<ObjectId, StateError> {
        let name = self.ref_name(job)?;
        let _gc = self.refs.write_guard()?;
        let objects = self.refs.objects();
        let spec_json =
            serde_json::to_vec(spec).map_err(|e| malformed("spec", ObjectId::ZERO, e))?;
        let spec_id = objects.write(ObjectType::Blob, &spec_json)?;
        let mut parent = head;
        for ImportedCheckpoint {
            mut checkpoint,
            items,
            original,
        } in checkpoints
        {
            checkpoint.parent = parent;
            checkpoint.spec = spec_id;
            checkpoint.items = Some(self.store_items(&items)?);
            checkpoint.original = Some(objects.write(ObjectType::Blob, &original)?);
            let json = serde_json::to_vec(&checkpoint)
                .map_err(|e| malformed("checkpoint", ObjectId::ZERO, e))?;
            parent = Some(objects.write(ObjectType::Checkpoint, &json)?);
        }
        let new =
            parent.ok_or_else(|| malformed("checkpoint", ObjectId::ZERO, "nothing to import"))?;
        let expect = match head {
            Some(id) => Expect::Value(id),
            None => Expect::Absent,
        };
        let message = format!("import of the original tool's checkpoints of {job}");
        self.refs.update(&name, new, expect, &message)?;
        Ok(new)
    }

    /// The checkpoints of `job`, newest first (the parent chain from its ref).
    pub fn history(&self, job: &str) -> Result<Vec<(ObjectId, Checkpoint)>, StateError> {
        let (mut id, mut c) = self.head(job)?;
        let mut out = Vec::new();
        loop {
            let parent = c.parent;
            c.delta = BTreeMap::new();
            out.push((id, c));
            match parent {
                Some(p) => {
                    c = self.read_checkpoint(&p)?;
                    id = p;
                }
                None => return Ok(out),
            }
        }
    }

    /// The jobs of this repository, sorted by id, with their newest checkpoint.
    pub fn list(&self) -> Result<Vec<(String, ObjectId, Checkpoint)>, StateError> {
        self.list_each()?
            .into_iter()
            .map(|(job, head)| head.map(|(id, c)| (job, id, c)))
            .collect()
    }

    /// [`Self::list_each`] without the jobs that cannot be read, each handed to
    /// `skipped` with its error: a listing for people names and skips them.
    pub fn list_readable(
        &self,
        mut skipped: impl FnMut(&str, StateError),
    ) -> Result<Vec<(String, ObjectId, Checkpoint)>, StateError> {
        let mut out = Vec::new();
        for (job, head) in self.list_each()? {
            match head {
                Ok((id, c)) => out.push((job, id, c)),
                Err(e) => skipped(&job, e),
            }
        }
        Ok(out)
    }

    /// [`Self::list`] with each job's own outcome: a job whose ref or newest checkpoint
    /// cannot be read is listed with its error (naming the job), the others as usual.
    #[allow(clippy::type_complexity)]
    pub fn list_each(
        &self,
    ) -> Result<Vec<(String, Result<(ObjectId, Checkpoint), StateError>)>, StateError> {
        let prefix = format!("state/{}/", self.repo);
        let mut out = Vec::new();
        for (name, value) in self.refs.list_each(Some(&prefix))? {
            if name.repo() != self.repo {
                continue;
            }
            let head = value.map_err(StateError::from).and_then(|id| {
                let mut c = self.read_checkpoint(&id)?;
                c.delta = BTreeMap::new();
                Ok((id, c))
            });
            out.push((name.job().to_owned(), head));
        }
        Ok(out)
    }
}

fn malformed(what: &'static str, id: ObjectId, e: impl std::fmt::Display) -> StateError {
    StateError::Malformed {
        what,
        id,
        message: e.to_string(),
    }
}

/// The stable key of a work item: the first 16 hex digits of BLAKE3 over its index and its
/// canonical JSON (keys sorted), so items need no `id` field and equal items at different
/// positions stay distinct.
pub fn item_key(index: usize, item: &Value) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(index.to_string().as_bytes());
    hasher.update(b"\0");
    hasher.update(item.to_string().as_bytes());
    hasher.finalize().to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint with every field filled names exactly the ids it holds: a new field
    /// holding an id must be declared in [`Checkpoint::links`], or gc would drop it.
    #[test]
    fn a_checkpoint_declares_every_id_it_holds() {
        let id = |n: u8| ObjectId::from_bytes([n; 32]);
        let result = ItemResult {
            index: 0,
            status: ItemStatus::Done,
            agent_id: "agent-0".into(),
            attempts: 1,
            duration_ms: 5,
            commits: vec!["a".repeat(40)],
            merged: true,
            output: Some("out".into()),
            error: Some("e".into()),
        };
        let agent = AgentState {
            agent_id: "agent-1".into(),
            index: 1,
            worktree: "/w".into(),
            branch: "b".into(),
            attempt: 1,
            started: now_timestamp(),
        };
        let checkpoint = Checkpoint {
            v: 1,
            parent: Some(id(1)),
            version: 3,
            created: now_timestamp(),
            reason: "r".into(),
            spec: id(2),
            items: Some(id(3)),
            phase: Phase::Map,
            setup_done: 1,
            reduce_done: 0,
            captured: BTreeMap::from([("c".to_owned(), "v".to_owned())]),
            setup_captured: BTreeMap::from([("s".to_owned(), "v".to_owned())]),
            map_base: Some("b".repeat(40)),
            job_head: Some("c".repeat(40)),
            counters: Counters::default(),
            running: BTreeMap::from([("k".to_owned(), agent)]),
            base: Some(id(4)),
            hops: 1,
            full: false,
            delta: BTreeMap::from([("k".to_owned(), result)]),
            ended: Some(now_timestamp()),
            error: Some("e".into()),
            original: Some(id(5)),
            rewound: Some(now_timestamp()),
            rewind_pending: false,
        };
        let json = serde_json::to_vec(&checkpoint).unwrap();
        let mut held = Vec::new();
        crate::reach::ids_in(&serde_json::from_slice(&json).unwrap(), &mut held);
        let mut declared = Checkpoint::links(&json);
        held.sort();
        declared.sort();
        assert_eq!(held, declared);
        assert_eq!(declared.len(), 5);
    }
    use crate::home::Home;

    fn spec(job: &str) -> JobSpec {
        JobSpec {
            target_branch: None,
            id: job.into(),
            repo: "r".into(),
            repo_root: "/r".into(),
            workflow_path: "/r/w.yml".into(),
            workflow: Value::Null,
            base_commit: "0".repeat(40),
            branch: "prodigy/j".into(),
            worktree: "/h/worktrees/r/j/job".into(),
            agents_dir: "/h/worktrees/r/j".into(),
            env: BTreeMap::new(),
            started: now_timestamp(),
            workflow_source: String::new(),
            imported_from: None,
        }
    }

    fn result(index: usize) -> ItemResult {
        ItemResult {
            index,
            status: ItemStatus::Done,
            agent_id: format!("agent-{index}"),
            attempts: 1,
            duration_ms: 3,
            commits: vec![],
            merged: false,
            output: None,
            error: None,
        }
    }

    /// The run lock waits out a holder that lets go within the grace (a killed runner's
    /// child about to exec), and refuses one that does not.
    #[test]
    fn the_run_lock_waits_briefly_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        let m = JobStateManager::new(RefStore::new(&home, LockOptions::default()), "r").unwrap();
        let held = m.lock_job("j").unwrap();
        let going = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        let started = std::time::Instant::now();
        let _second = m.lock_job("j").unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
        going.join().unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(m.lock_job("j"), Err(StateError::Busy { .. })));
        assert!(started.elapsed() >= RUN_LOCK_GRACE);
    }

    #[test]
    fn checkpoints_grow_by_deltas_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        let m = JobStateManager::new(RefStore::new(&home, LockOptions::default()), "r").unwrap();
        let mut state = m.create(spec("j")).unwrap();
        let again = m.create(spec("j"));
        assert!(matches!(again, Err(StateError::Exists { .. })), "{again:?}");
        let mut sizes = Vec::new();
        for i in 0..300 {
            state.record(&format!("k{i:04}"), result(i));
            let id = m.save(&mut state, "item finished").unwrap();
            sizes.push(m.refs().objects().read(&id).unwrap().payload.len());
        }
        // Deltas hold one result each; full checkpoints appear geometrically.
        let full: Vec<usize> = sizes
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 2_000)
            .map(|(i, _)| i)
            .collect();
        assert!(full.len() <= 4, "full checkpoints at {full:?}");
        let loaded = m.load("j").unwrap();
        assert_eq!(loaded.results.len(), 300);
        assert_eq!(loaded.checkpoint.counters.done, 300);
        assert_eq!(loaded.results, state.results);
        // Loading an older checkpoint sees only what was done then.
        let history = m.history("j").unwrap();
        assert_eq!(history.len(), 301);
        let old = m.load_at("j", history[200].0).unwrap();
        assert_eq!(old.results.len(), 100);
        // A loaded state saves on top of the current head.
        let mut old = old;
        old.record("k9999", result(9999));
        m.save(&mut old, "resumed").unwrap();
        assert_eq!(m.load("j").unwrap().results.len(), 101);
    }

    #[test]
    fn run_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        let m = JobStateManager::new(RefStore::new(&home, LockOptions::default()), "r").unwrap();
        let held = m.lock_job("j").unwrap();
        assert!(matches!(m.lock_job("j"), Err(StateError::Busy { .. })));
        drop(held);
        m.lock_job("j").unwrap();
        assert!(m.lock_job("../x").is_err());
    }

    #[test]
    fn item_keys_are_stable_and_positional() {
        let v = serde_json::json!({"b": 1, "a": 2});
        assert_eq!(item_key(0, &v), item_key(0, &v.clone()));
        assert_ne!(item_key(0, &v), item_key(1, &v));
        assert_eq!(item_key(0, &v).len(), 16);
    }
}
