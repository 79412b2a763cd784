//! A repository's job worktrees seen from outside a run: listed (`prodigy worktree ls`),
//! cleaned once nothing needs them (`worktree clean`), a job's result merged into the
//! current branch (`worktree merge`), and a job removed (`jobs rm`).
//!
//! Nothing here touches a job that runs: each job is handled under its run lock (a lease
//! on a remote store), so a runner and a clean never meet; a job whose lock is held is
//! skipped and said to be.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{RunError, git, job_dir};
use crate::dlq::DeadLetterQueue;
use crate::home::Home;
use crate::state::{Checkpoint, ItemStatus, JobSpec, JobStateManager, Phase, StateError, item_key};
use crate::store::refs::{RefKind, RefName, RefStore};

/// One worktree of a job.
#[derive(Debug, Clone, Serialize)]
pub struct WorktreeInfo {
    /// The job (or session).
    pub job: String,
    /// `job`, `session` or `agent`.
    pub kind: &'static str,
    /// For an agent: its item's key.
    pub item: Option<String>,
    /// For an agent: its index.
    pub index: Option<usize>,
    /// Where it is.
    pub path: PathBuf,
    /// Its branch (`prodigy/<job>`; an agent works detached: its branch once it committed).
    pub branch: Option<String>,
    /// `running`, `complete`, `interrupted`, `failed:<phase>` (the job's, for the job's
    /// worktree); for an agent `running`, `failed` (kept for inspection) or `done` (left
    /// over).
    pub state: String,
    /// Bytes of its files (without git's objects).
    pub bytes: u64,
}

/// What [`clean`] removes.
#[derive(Debug, Clone, Default)]
pub struct CleanOptions {
    /// Only this job's worktrees (all of them, the job not running).
    pub job: Option<String>,
    /// Every worktree of every job not running (interrupted ones too: `resume` makes them
    /// again).
    pub all: bool,
    /// Say what would go; remove nothing.
    pub dry_run: bool,
}

/// What [`clean`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanReport {
    /// The worktrees removed (or, dry, to remove).
    pub removed: Vec<WorktreeInfo>,
    /// Jobs left alone because they run now.
    pub running: Vec<String>,
}

/// The jobs of `repo` that have a directory of worktrees, with their state.
fn jobs_with_dirs(home: &Home, repo: &str) -> Vec<String> {
    let dir = home.root().join("worktrees").join(repo);
    let mut jobs: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| crate::names::validate("job id", n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    jobs.sort();
    jobs
}

/// A job's status as `jobs` says it: running (its lock held), complete, failed, or
/// interrupted.
fn status(refs: &RefStore, states: &JobStateManager, job: &str, c: &Checkpoint) -> String {
    let running = states
        .ref_name(job)
        .ok()
        .and_then(|n| refs.job_holder(&n).ok().flatten())
        .is_some();
    match (running, &c.error, c.phase) {
        (true, _, _) => "running".into(),
        (_, _, Phase::Complete) => "complete".into(),
        (_, Some(_), phase) => format!("failed:{}", phase.as_str()),
        (_, None, _) => "interrupted".into(),
    }
}

/// Bytes of the files under `dir` (its `.git` file aside; links not followed).
fn size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Every worktree of `repo`'s jobs, job by job.
pub fn list(home: &Home, refs: &RefStore, repo: &str) -> Result<Vec<WorktreeInfo>, RunError> {
    let states = JobStateManager::new(refs.clone(), repo)?;
    let mut out = Vec::new();
    for job in jobs_with_dirs(home, repo) {
        let Ok(state) = states.load(&job) else {
            continue;
        };
        let job_status = status(refs, &states, &job, &state.checkpoint);
        out.extend(worktrees_of(&states, &state.spec, &state, &job_status));
    }
    Ok(out)
}

/// The worktrees a job has on disk now.
fn worktrees_of(
    states: &JobStateManager,
    spec: &JobSpec,
    state: &crate::state::JobState,
    job_status: &str,
) -> Vec<WorktreeInfo> {
    let mut out = Vec::new();
    let session = spec.workflow.get("map").is_none_or(|m| m.is_null());
    if spec.worktree.is_dir() {
        out.push(WorktreeInfo {
            job: spec.id.clone(),
            kind: if session { "session" } else { "job" },
            item: None,
            index: None,
            path: spec.worktree.clone(),
            branch: Some(spec.branch.clone()),
            state: job_status.to_owned(),
            bytes: size(&spec.worktree),
        });
    }
    let items = state
        .checkpoint
        .items
        .and_then(|id| states.load_items(&id).ok())
        .unwrap_or_default();
    let dirs = super::agent_dirs(spec);
    // Workers' worktrees: each with the agent running in it, if any.
    for (_, path) in dirs.slots {
        let agent = state
            .checkpoint
            .running
            .iter()
            .find(|(_, a)| a.worktree == path);
        let slot_state = match (job_status, agent) {
            ("running", _) => "running",
            (_, Some(_)) => "interrupted",
            // Idle, left by a run that ended: nothing of an agent's is in it.
            (_, None) => "done",
        };
        out.push(WorktreeInfo {
            job: spec.id.clone(),
            kind: "agent",
            item: agent.map(|(k, _)| k.clone()),
            index: agent.map(|(_, a)| a.index),
            branch: None,
            bytes: size(&path),
            path,
            state: slot_state.to_owned(),
        });
    }
    for (index, path) in dirs.agents {
        let key = items.get(index).map(|v| item_key(index, v));
        let result = key.as_ref().and_then(|k| state.results.get(k));
        let running = key
            .as_ref()
            .is_some_and(|k| state.checkpoint.running.contains_key(k));
        let agent_state = match (running && job_status == "running", result) {
            (true, _) => "running",
            (_, Some(r)) if r.status == ItemStatus::Failed => "failed",
            (_, Some(_)) => "done",
            (false, None) if job_status == "running" => "running",
            (false, None) => "interrupted",
        };
        out.push(WorktreeInfo {
            job: spec.id.clone(),
            kind: "agent",
            item: key,
            index: Some(index),
            branch: None,
            bytes: size(&path),
            path,
            state: agent_state.to_owned(),
        });
    }
    out
}

/// Removes what no job needs: the worktrees of complete jobs (but a failed agent's while
/// its item is in the dead-letter queue), and of failed agents whose items are resolved
/// (no longer in the queue); with `opts.job` that job's, with
/// `opts.all` every job's. A running job is never touched (its run lock is taken for the
/// removal; a held one skips the job). `git worktree prune` ends it.
pub fn clean(
    home: &Home,
    refs: &RefStore,
    repo: &str,
    opts: &CleanOptions,
) -> Result<CleanReport, RunError> {
    let states = JobStateManager::new(refs.clone(), repo)?;
    let mut report = CleanReport::default();
    let jobs = match &opts.job {
        Some(job) => {
            crate::names::validate("job id", job)?;
            states.head(job)?;
            vec![job.clone()]
        }
        None => jobs_with_dirs(home, repo),
    };
    let mut repo_roots = BTreeMap::new();
    for job in jobs {
        let Ok(state) = states.load(&job) else {
            continue;
        };
        // Its status before its lock is ours (which would read as running).
        let job_status = status(refs, &states, &job, &state.checkpoint);
        let lock = match states.lock_job(&job) {
            Ok(lock) => lock,
            Err(StateError::Busy { .. } | StateError::Leased { .. }) => {
                report.running.push(job);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // A finished job's worktrees go, but a failed agent's stays while its item is in
        // the dead-letter queue: its uncommitted work is what the queue's entry points at
        // (`worktree_artifacts`), and `--all` or `--job` are how to drop it.
        let every = opts.all || opts.job.is_some();
        let finished = state.checkpoint.phase == Phase::Complete;
        let queued = DeadLetterQueue::new(refs.clone(), repo, &job)
            .and_then(|q| q.snapshot())
            .map(|s| s.items)
            .unwrap_or_default();
        let spec = &state.spec;
        let tree = git::Worktrees::new(
            &spec.repo_root,
            &spec
                .agents_dir
                .parent()
                .unwrap_or(&spec.agents_dir)
                .join("worktrees.lock"),
        );
        for w in worktrees_of(&states, spec, &state, &job_status) {
            let queued_failure =
                w.state == "failed" && w.item.as_ref().is_some_and(|k| queued.contains_key(k));
            let resolved =
                w.state == "failed" && w.item.as_ref().is_some_and(|k| !queued.contains_key(k));
            let leftover = w.state == "done";
            if !(every || (finished && !queued_failure) || resolved || leftover) {
                continue;
            }
            if !opts.dry_run {
                tree.remove(&w.path);
                if w.path.exists() {
                    std::fs::remove_dir_all(&w.path)
                        .map_err(|e| crate::fsutil::FsError::new("remove", &w.path, e))?;
                }
                repo_roots
                    .entry(spec.repo_root.clone())
                    .or_insert_with(Vec::new)
                    .push(w.path.clone());
            }
            report.removed.push(w);
        }
        drop(lock);
    }
    if !opts.dry_run {
        for (root, paths) in &repo_roots {
            let _ = git::forget_worktrees(root, paths);
        }
    }
    Ok(report)
}

/// What [`remove_job`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Removed {
    /// The refs deleted (their reflogs keep their history until gc expires it).
    pub refs: Vec<String>,
    /// The worktrees removed.
    pub worktrees: Vec<PathBuf>,
}

/// Deletes a job: its refs (state, events, dead-letter queue, archive) and its worktrees;
/// the branch with its result stays in the repository. Refused while the job runs.
pub fn remove_job(
    home: &Home,
    refs: &RefStore,
    repo: &str,
    job: &str,
) -> Result<Removed, RunError> {
    crate::names::validate("job id", job)?;
    let states = JobStateManager::new(refs.clone(), repo)?;
    let mut removed = Removed::default();
    let names: Vec<RefName> = [
        RefKind::State,
        RefKind::Events,
        RefKind::Dlq,
        RefKind::Archive,
    ]
    .into_iter()
    .map(|kind| RefName::new(kind, repo, job))
    .collect::<Result<_, _>>()
    .map_err(StateError::from)?;
    // The event log's writers' refs.
    let mut names = names;
    // Every name, whatever its value: a broken one goes too.
    names.extend(
        refs.list_each(Some(&format!("events/{repo}/{job}")))
            .map_err(StateError::from)?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.writer().is_some()),
    );
    // A ref that cannot be read exists too (and goes, by `delete_any`): skipping it
    // reported a job deleted whose state ref stayed.
    let names: Vec<RefName> = names
        .into_iter()
        .filter(|n| !matches!(refs.read(n), Ok(None)))
        .collect();
    if names.is_empty() {
        return Err(StateError::NoJob {
            repo: repo.to_owned(),
            job: job.to_owned(),
        }
        .into());
    }
    let lock = states.lock_job(job)?;
    let dir = job_dir(home, repo, job);
    let state = states.load(job);
    if let Ok(state) = &state {
        let spec = &state.spec;
        let tree = git::Worktrees::new(
            &spec.repo_root,
            &spec
                .agents_dir
                .parent()
                .unwrap_or(&spec.agents_dir)
                .join("worktrees.lock"),
        );
        for w in worktrees_of(&states, spec, state, "removed") {
            tree.remove(&w.path);
            removed.worktrees.push(w.path);
        }
        // Those removed, and any deleted by hand (not listed): every one is in the job's
        // directory, unless the job moved homes.
        let mut ours = removed.worktrees.clone();
        ours.extend([dir.clone(), spec.agents_dir.clone()]);
        let _ = git::forget_worktrees(&spec.repo_root, &ours);
    }
    for name in &names {
        if refs
            .delete_any(name, "jobs rm")
            .map_err(StateError::from)?
            .is_some()
        {
            removed.refs.push(name.to_string());
        }
    }
    drop(lock);
    if state.is_err() {
        // Without its checkpoint the job's worktrees are the ones in its directory (every
        // job's are, unless it moved homes); the repository's record says where git keeps
        // their registrations, pruned once the files are gone.
        removed.worktrees.extend(worktrees_in(&dir, job));
    }
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if state.is_err()
        && let Ok(Some(record)) = crate::repo::read_record(home, repo)
    {
        let _ = git::forget_worktrees(&record.root, std::slice::from_ref(&dir));
    }
    Ok(removed)
}

/// The worktrees in a job's directory: `<job>@job`, `<job>@slot-<n>`, `<job>@agent-<i>`.
fn worktrees_in(dir: &Path, job: &str) -> Vec<PathBuf> {
    let prefix = format!("{job}@");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// What [`merge_back`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeBack {
    /// The job's branch is merged into `into`, checked out in `dir`.
    Merged {
        /// The branch merged into.
        into: String,
        /// The worktree that has it checked out.
        dir: PathBuf,
    },
    /// `into` already holds the job's branch: nothing to do.
    AlreadyMerged {
        /// The branch.
        into: String,
    },
    /// Nothing was changed, for this reason (one line).
    Left(String),
}

/// What a worktree may be in the middle of, by the file git keeps for it: a merge back
/// then would end it, or abort it, for the user.
const UNDERWAY: [(&str, &str); 7] = [
    ("MERGE_HEAD", "merge"),
    ("CHERRY_PICK_HEAD", "cherry-pick"),
    ("REVERT_HEAD", "revert"),
    ("rebase-merge", "rebase"),
    ("rebase-apply", "rebase or am"),
    ("sequencer", "cherry-pick or revert"),
    ("BISECT_LOG", "bisect"),
];

/// Brings a complete job's result back, as the original does after a run it is told yes:
/// merges the job's branch into the branch the repository was on when the job started,
/// in the worktree that has it checked out, as `git merge --no-edit` does. Only when
/// nothing there can be lost: that branch checked out, no tracked file changed and no
/// merge, rebase, cherry-pick, revert or bisect underway there, no ignored file
/// overwritten, and the job's own worktree holding nothing uncommitted (which would not
/// come along); a merge that fails is aborted, leaving the repository as it was. Whatever
/// stops it is [`MergeBack::Left`], the repository untouched; an error is only about the
/// job (not complete, not there).
pub fn merge_back(refs: &RefStore, repo: &str, job: &str) -> Result<MergeBack, RunError> {
    let states = JobStateManager::new(refs.clone(), repo)?;
    let (_, c) = states.head(job)?;
    let spec = states.read_spec(&c.spec)?;
    if c.phase != Phase::Complete {
        return Err(RunError::NotComplete {
            job: job.to_owned(),
            phase: c.phase.as_str().to_owned(),
        });
    }
    Ok(try_merge_back(&spec).unwrap_or_else(MergeBack::Left))
}

fn try_merge_back(spec: &JobSpec) -> Result<MergeBack, String> {
    let said = |e: git::GitError| crate::error_line(&e);
    let Some(target) = &spec.target_branch else {
        return Err(
            "the repository was on no branch (a detached HEAD) when the job started".into(),
        );
    };
    let root = &spec.repo_root;
    let branch = &spec.branch;
    // By its full name: a tag of the same name would win over the short one.
    let full = format!("refs/heads/{branch}");
    let Ok(theirs) = git::git(root, &["rev-parse", "--verify", "--quiet", &full]) else {
        return Err(format!("the job's branch {branch} is gone"));
    };
    if spec.worktree.is_dir() && git::tracked_changes(&spec.worktree).map_err(said)? {
        return Err(format!(
            "the job's worktree '{}' has uncommitted changes, which are not on {branch} \
             (a step run again after a resume leaves what it had committed staged): \
             commit them there first",
            spec.worktree.display()
        ));
    }
    let Some(dir) = git::checked_out_at(root, target).map_err(said)? else {
        return Err(format!(
            "{target} is not checked out in any worktree of the repository now"
        ));
    };
    if !dir.is_dir() {
        return Err(format!(
            "{target} is checked out in '{}', which is not there",
            dir.display()
        ));
    }
    let git_path = |name: &str| -> Result<PathBuf, String> {
        let p = PathBuf::from(git::git(&dir, &["rev-parse", "--git-path", name]).map_err(said)?);
        Ok(if p.is_relative() { dir.join(p) } else { p })
    };
    for (name, what) in UNDERWAY {
        if git_path(name)?.exists() {
            return Err(format!(
                "'{}' is in the middle of a {what} ({name})",
                dir.display()
            ));
        }
    }
    if git::tracked_changes(&dir).map_err(said)? {
        return Err(format!(
            "'{}' has uncommitted changes to tracked files",
            dir.display()
        ));
    }
    if git::git(&dir, &["merge-base", "--is-ancestor", &full, "HEAD"]).is_ok() {
        return Ok(MergeBack::AlreadyMerged {
            into: target.clone(),
        });
    }
    // The message names the branch, not the ref.
    let message = format!("Merge branch '{branch}'");
    let merge = [
        "merge",
        "--no-edit",
        "--no-overwrite-ignore",
        "-m",
        &message,
        &full,
    ];
    match git::git(&dir, &merge) {
        Ok(_) => Ok(MergeBack::Merged {
            into: target.clone(),
            dir,
        }),
        Err(e) => {
            // Only a merge of ours is aborted: MERGE_HEAD names the job's branch.
            let merge_head = git_path("MERGE_HEAD")?;
            if std::fs::read_to_string(&merge_head).is_ok_and(|h| h.trim() == theirs) {
                let _ = git::git(&dir, &["merge", "--abort"]);
                return Err(format!("git merge failed, and was aborted: {}", said(e)));
            }
            Err(format!("git merge refused, nothing changed: {}", said(e)))
        }
    }
}

/// Merges job `job`'s result (its branch, `prodigy/<job>`) into the branch checked out in
/// `dir`, as `git merge --no-edit` does; a conflict is left to resolve, as git leaves it.
/// Refused for a job that is not complete unless `force`.
pub fn merge_result(
    refs: &RefStore,
    repo: &str,
    job: &str,
    dir: &Path,
    force: bool,
) -> Result<String, RunError> {
    let states = JobStateManager::new(refs.clone(), repo)?;
    let (_, c) = states.head(job)?;
    let spec = states.read_spec(&c.spec)?;
    if c.phase != Phase::Complete && !force {
        return Err(RunError::NotComplete {
            job: job.to_owned(),
            phase: c.phase.as_str().to_owned(),
        });
    }
    if !git::branch_exists(dir, &spec.branch) {
        return Err(RunError::BranchMissing {
            branch: spec.branch.clone(),
            repo: dir.to_owned(),
        });
    }
    Ok(git::git(dir, &["merge", "--no-edit", &spec.branch])?)
}
