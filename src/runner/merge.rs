//! Merging agents' commits into the job's branch, repairing a merge a kill cut short
//! (`job-worktree.pending`), and the merge phase.

use super::*;

/// The variable that turns the Claude merge of a conflict off (`false`).
pub const MERGE_ENV: &str = "PRODIGY_CLAUDE_MERGE";

/// What the Claude merge of a conflict did.
enum ClaudeMerge {
    /// Not tried: the workflow has no Claude steps, or it is turned off.
    Off,
    /// The agent's commits are merged.
    Merged,
    /// It failed, for this reason.
    Failed(String),
}

impl Job {
    /// Merges a done agent's commits into the job's worktree. A conflict makes the item
    /// failed (dead-lettered as `merge_conflict`, which needs a person); any other git
    /// failure stops the job at its checkpoint, since it is not the item's fault.
    pub(super) fn merge_one(
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
        let squash = self.plan.squash;
        let done = match squash {
            true => git::is_squashed(&worktree, &last),
            false => git::is_merged(&worktree, &last),
        };
        if !done {
            let message = match squash {
                true => format!(
                    "{agent} (item {key}) of prodigy job {}: {} commits squashed",
                    self.state.spec.id,
                    result.commits.len()
                ),
                false => format!(
                    "Merge {agent} (item {key}) of prodigy job {}",
                    self.state.spec.id
                ),
            };
            let marker = pending_path(&self.state.spec);
            let keep = git::untracked(&worktree)?;
            Pending::Merge(keep.clone()).write(&marker)?;
            let merged = match squash {
                true => git::squash(&worktree, &last, &message, &self.state.spec.env),
                false => git::merge(&worktree, &last, &message, &self.state.spec.env),
            };
            // A squash's conflict is not aborted by git: put the worktree back.
            if squash
                && let Err(e) = &merged
                && e.conflict
            {
                git::restore(&worktree, &keep)?;
            }
            // Stopped half-way (a full disk): undone now if it can be, else by resume (the
            // marker stays). A conflict was aborted by git itself.
            let whole = match &merged {
                Err(e) if !e.conflict => git::restore(&worktree, &keep).is_ok(),
                _ => true,
            };
            if whole {
                Pending::clear(&marker)?;
            }
            let merged = match merged {
                Err(e) if e.conflict => match self.claude_merge(key, &result, &last, &keep)? {
                    ClaudeMerge::Off => Err(e),
                    ClaudeMerge::Merged => Ok(()),
                    ClaudeMerge::Failed(why) => Err(git::GitError {
                        message: format!("{}; {why}", e.message),
                        ..e
                    }),
                },
                other => other,
            };
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

    /// A conflicting merge handed to `claude /prodigy-merge-worktree <branch>` in the job's
    /// worktree, as the original does when the workflow has Claude steps (unless
    /// `PRODIGY_CLAUDE_MERGE=false`). A failed one leaves the worktree as it was.
    fn claude_merge(
        &mut self,
        key: &str,
        result: &ItemResult,
        last: &str,
        keep: &std::collections::BTreeSet<PathBuf>,
    ) -> Result<ClaudeMerge, RunError> {
        let off = self
            .state
            .spec
            .env
            .get(MERGE_ENV)
            .cloned()
            .or_else(|| std::env::var(MERGE_ENV).ok());
        if !self.plan.has_claude() || off.as_deref() == Some("false") {
            return Ok(ClaudeMerge::Off);
        }
        let worktree = self.state.spec.worktree.clone();
        let branch = agent_branch(&self.state.spec, result.index);
        let log = self.open_log("merge.log")?;
        let env = self.env_with_secrets();
        let marker = pending_path(&self.state.spec);
        Pending::Merge(keep.clone()).write(&marker)?;
        let mut metadata = serde_json::Map::new();
        metadata.insert("agent_id".into(), result.agent_id.clone().into());
        metadata.insert("worktree".into(), worktree.display().to_string().into());
        let site = Site {
            logger: &self.logger,
            refs: self.states.refs(),
            job_id: &self.state.spec.id,
            agent_id: &result.agent_id,
            item_id: Some(key),
            phase: "merge",
            metadata,
            attempt: 1,
            cwd: &worktree,
            env: &env,
            log: &log,
            log_path: None,
            deadline: None,
            mask: &self.mask,
            paste: &self.state.spec.env,
            base: None,
            track_git: false,
            tee: self.tee("merge"),
        };
        let command = format!("/prodigy-merge-worktree {branch}");
        agent::write_log(&log, &format!("$ claude: {command}\n"));
        let called = claude::call(&self.exec, &site, "merge", &command, None);
        if self.exec.interrupted() {
            return Err(self.interrupted());
        }
        let why = match called {
            Err(e) => Some(format!("the Claude merge could not start: {e}")),
            Ok(c) if c.outcome.interrupted => return Err(self.interrupted()),
            Ok(c) => match c.failure {
                Some(why) => Some(format!("the Claude merge failed: {why}")),
                None if !c.outcome.success() => Some(format!(
                    "the Claude merge failed: exit code {}",
                    c.outcome.exit_code
                )),
                None if !git::is_merged(&worktree, last) => {
                    Some("the Claude merge ended without merging the agent's commits".into())
                }
                None if git::in_merge(&worktree) => {
                    Some("the Claude merge left the merge unfinished".into())
                }
                None => None,
            },
        };
        if why.is_some() {
            // Whatever it left half-done goes: the item is dead-lettered as a conflict.
            let _ = git::git(&worktree, &["merge", "--abort"]);
            git::restore(&worktree, keep)?;
        }
        Pending::clear(&marker)?;
        Ok(match why {
            None => ClaudeMerge::Merged,
            Some(why) => ClaudeMerge::Failed(why),
        })
    }

    /// The job's branch is not in this repository — typically a job resumed on another
    /// host sharing a remote store: the store has its events and checkpoints, but its
    /// commits stayed in the first host's repository. Items whose commits are here are
    /// merged again; the others run again here. Setup's commits are gone with the branch.
    pub(super) fn reclaim_commits(&mut self) -> Result<(), RunError> {
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
        // Reduce's commits were on the lost branch too: its steps run again.
        let reduce_lost = matches!(self.state.checkpoint.phase, Phase::Reduce)
            && self.state.checkpoint.reduce_done > 0;
        if rerun.is_empty() && remerge.is_empty() && !reduce_lost {
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
            "branch {} is not in '{}': {} items whose commits are not here run again, {} are merged again{} (fetch the branch from where the job started to keep its commits instead)",
            self.state.spec.branch,
            root.display(),
            rerun.len(),
            remerge.len(),
            if reduce_lost { ", reduce runs again" } else { "" }
        ));
        self.save("commits not in this repository")
    }

    pub(super) fn merge(&mut self) -> Result<(), RunError> {
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
}

/// Where a change to the job's worktree under way is recorded (beside the worktree).
pub(super) fn pending_path(spec: &JobSpec) -> PathBuf {
    spec.agents_dir.join("job-worktree.pending")
}

/// A change to the job's worktree under way, recorded before git starts it and removed
/// once the worktree is whole again. The next runner that finds it repairs what the change
/// left half done: git writes a checkout's or a merge's files before its index, so a kill
/// or a full disk in between leaves files that block every later merge.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pending {
    /// The worktree is being checked out; it is removed and made again.
    Create,
    /// A merge; the worktree is put back to `HEAD`, keeping the files that were untracked
    /// before it (what setup left).
    Merge(std::collections::BTreeSet<PathBuf>),
}

impl Pending {
    /// The marker's bytes: the operation, then each kept name, each ended by NUL (file
    /// names are bytes).
    pub(super) fn write(&self, path: &Path) -> Result<(), RunError> {
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

    pub(super) fn read(path: &Path) -> Result<Option<Pending>, RunError> {
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

    pub(super) fn clear(path: &Path) -> Result<(), RunError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::new("remove", path, e).into()),
        }
    }
}
