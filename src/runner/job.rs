//! The job itself: its state and lock, checkpoints, events and notes, the loop that
//! drives it through its phases, and the setup and reduce steps' shared runner.

use super::*;

impl Job {
    pub(super) fn new(
        _home: &Home,
        refs: RefStore,
        states: JobStateManager,
        mut plan: Plan,
        state: JobState,
        opts: Options,
    ) -> Result<Job, RunError> {
        // `run -n N`: a session's steps N times over, as one list (recorded in the spec's
        // env, so resume counts the same steps).
        if plan.is_sequential()
            && let Some(n) = state
                .spec
                .env
                .get(ITERATIONS_ENV)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 1)
        {
            let once = std::mem::take(&mut plan.setup);
            plan.setup = (0..n).flat_map(|_| once.iter().cloned()).collect();
        }
        // Secrets are read at every start, from the environment of this process (or their
        // files), and never stored.
        let secrets = plan
            .environment
            .secrets(&state.spec.repo_root)
            .map_err(|message| RunError::Env {
                workflow: state.spec.workflow_path.clone(),
                message,
            })?;
        let mask = Arc::new(crate::workflow::env::Masker::new(secrets.values()));
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
            yes: opts.yes,
            started: Instant::now(),
            rewind: false,
            run_lock: None,
            secrets,
            mask,
            failures: Vec::new(),
        })
    }

    pub(super) fn id(&self) -> &str {
        &self.state.spec.id
    }

    pub(super) fn log(&self, event: MapReduceEvent) -> Result<(), RunError> {
        Ok(self.logger.log(event)?)
    }

    pub(super) fn note(&self, text: &str) {
        if let Some(o) = &self.observer {
            o.note(text);
        }
    }

    pub(super) fn progress(&self) {
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
    pub(super) fn save(&mut self, reason: &str) -> Result<(), RunError> {
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
    pub(super) fn interrupted(&mut self) -> RunError {
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
    pub(super) fn stop(&mut self, reason: String) -> RunError {
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
    pub(super) fn env(&self) -> BTreeMap<String, String> {
        let mut env = self.state.spec.env.clone();
        env.insert("PRODIGY_JOB_ID".into(), self.state.spec.id.clone());
        env.insert("PRODIGY_AUTOMATION".into(), "true".into());
        env.insert(
            "PRODIGY_WORKTREE".into(),
            self.state.spec.worktree.display().to_string(),
        );
        env
    }

    /// The terminal's copy of what `source`'s steps print, when a front end listens.
    pub(super) fn tee(&self, source: &str) -> Option<exec::LineHook> {
        let observer = self.observer.clone()?;
        let source = source.to_owned();
        Some(Arc::new(move |line: &[u8]| observer.output(&source, line)))
    }

    /// [`Self::env`] with the secrets: what the job's steps run with.
    pub(super) fn env_with_secrets(&self) -> BTreeMap<String, String> {
        let mut env = self.env();
        env.extend(self.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// The job's recorded env with the secrets: what `${env.X}` reads.
    pub(super) fn env_all(&self) -> BTreeMap<String, String> {
        let mut env = self.state.spec.env.clone();
        env.extend(self.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Makes sure the job's worktree exists: recreated on its branch (which keeps setup's
    /// and the merges' commits) or, when the branch is gone too, from the base commit.
    pub(super) fn worktrees(&self) -> git::Worktrees {
        let spec = &self.state.spec;
        let lock = spec
            .agents_dir
            .parent()
            .unwrap_or(&spec.agents_dir)
            .join("worktrees.lock");
        git::Worktrees::new(&spec.repo_root, &lock)
    }

    /// Returns true when the job's branch was missing (made again from the base commit).
    pub(super) fn ensure_parent(&self) -> Result<bool, RunError> {
        let spec = &self.state.spec;
        fsutil::ensure_dir(self.states.refs().home_dir(), &spec.agents_dir)?;
        // Only a directory is the job's worktree: a symbolic link in its place (to the
        // user's checkout, say) or a file is taken away, the link and never what it
        // names, before any git command runs there, and the worktree is made again (a
        // resume ran the job in the checkout a link named, and reset it).
        if std::fs::symlink_metadata(&spec.worktree).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&spec.worktree)
                .at("remove what stands in the job's worktree", &spec.worktree)?;
            self.note(&format!(
                "'{}' was not a directory: removed, the worktree is made again",
                spec.worktree.display()
            ));
        }
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
        let mut branch_lost = !git::branch_exists(&spec.repo_root, &spec.branch);
        // A lost branch is made again at the commit the checkpoint recorded when it is
        // still in the repository (a deleted branch's commits stay until git prunes
        // them): nothing is lost then. Otherwise from the base commit: the map's items
        // come back from their agent branches (`reclaim_commits`); the commits of setup's
        // or a session's finished steps would not, so that is refused.
        let mut start = spec.base_commit.clone();
        let c = &self.state.checkpoint;
        if branch_lost && let Some(head) = c.job_head.as_ref().filter(|h| **h != start) {
            if git::commit_exists(&spec.repo_root, head) {
                self.note(&format!(
                    "branch {} was gone: made again at its last recorded commit {}",
                    spec.branch,
                    short(head)
                ));
                start = head.clone();
                branch_lost = false;
            } else {
                // What no agent branch brings back: a session's or setup's steps (a
                // session waiting for its merge steps is past setup), or setup's commits
                // under the map (every agent branch holds `map_base`, so it is here when
                // any of them is).
                let lost = if self.plan.is_sequential() || c.phase == Phase::Setup {
                    Some(head)
                } else {
                    c.map_base.as_ref().filter(|b| {
                        **b != spec.base_commit && !git::commit_exists(&spec.repo_root, b)
                    })
                };
                if let Some(commit) = lost {
                    return Err(RunError::StepsLost {
                        job: spec.id.clone(),
                        branch: spec.branch.clone(),
                        commit: commit.clone(),
                        repo: spec.repo_root.clone(),
                    });
                }
                // Setup's commits are here: the branch starts from them, and the items
                // merge again on top (every agent started there), so reduce sees them
                // even when no merged item holds them.
                if let Some(map_base) = c.map_base.as_ref().filter(|b| **b != start) {
                    self.note(&format!(
                        "branch {} was gone: made again at setup's last commit {}",
                        spec.branch,
                        short(map_base)
                    ));
                    start = map_base.clone();
                }
            }
        }
        Pending::Create.write(&marker)?;
        self.worktrees()
            .add_on_branch(&spec.worktree, &spec.branch, &start)?;
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
    pub(super) fn rewind_branch(&mut self) -> Result<(), RunError> {
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
                short(&target)
            ));
            git::git(&worktree, &["reset", "-q", "--hard", &target])?;
        }
        Ok(())
    }

    /// A setup, reduce or session step killed after it committed but before its
    /// checkpoint runs again from the start: its commits are taken back off the branch
    /// (`reset --soft` to the checkpoint's commit), their changes kept staged, so the step
    /// does not find its own work already committed. A branch that moved elsewhere is left
    /// alone.
    fn undo_unfinished_commits(&mut self) -> Result<(), RunError> {
        let c = &self.state.checkpoint;
        if !matches!(c.phase, Phase::Setup | Phase::Reduce) {
            return Ok(());
        }
        let target = match (&c.job_head, c.setup_done) {
            (Some(head), _) => head.clone(),
            (None, 0) => self.state.spec.base_commit.clone(),
            (None, _) => return Ok(()),
        };
        let worktree = self.state.spec.worktree.clone();
        let head = git::head(&worktree)?;
        if head != target && git::is_ancestor(&worktree, &target, &head) {
            self.note(&format!(
                "taking the unfinished step's commits off {} (back to {})",
                self.state.spec.branch,
                short(&target)
            ));
            git::git(&worktree, &["reset", "-q", "--soft", &target])?;
        }
        Ok(())
    }

    /// After a job step: the job's worktree must still be on the job's branch, where its
    /// result is. A step that switched to another branch (or detached `HEAD`) from a commit
    /// holding the branch's brings the branch along (`checkout -B`: the branch moves up to
    /// `HEAD`, which is checked out on it again; the other branch stays); one whose `HEAD`
    /// does not hold the branch's commits fails, since following it would drop them.
    fn follow_branch(&mut self, worktree: &Path) -> Result<(), String> {
        let branch = self.state.spec.branch.clone();
        let Some(left) = off_branch(worktree, &branch) else {
            return Ok(());
        };
        let head = git::head(worktree).map_err(|e| format!("{left}: {e}"))?;
        let tip = git::git(
            worktree,
            &[
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
        )
        .map_err(|_| format!("{left}, and branch {branch} is gone"))?;
        if !git::is_ancestor(worktree, &tip, &head) {
            // Back on the job's branch, so a resume works there (it resets the branch it
            // finds checked out); the step's branch keeps what it made.
            let back = git::git(worktree, &["checkout", "-q", &branch]).is_ok();
            return Err(format!(
                "{left} at {}, which does not hold {branch}'s commits; the job's result is \
                 on {branch}{}",
                short(&head),
                if back { ", checked out again" } else { "" }
            ));
        }
        git::git(worktree, &["checkout", "-q", "-B", &branch, "HEAD"])
            .map_err(|e| format!("{left}; moving {branch} there failed: {e}"))?;
        self.note(&format!(
            "the step {left}: {branch} moved up to it ({}) and checked out again",
            short(&head)
        ));
        Ok(())
    }

    /// Moves the branch back to the rewound checkpoint's `job_head` and clears the mark
    /// (`rewind_pending`) that says it is due. The items finished after the checkpoint
    /// run again: their done markers go (after the save that made the rewound checkpoint
    /// the head, so a failed save leaves them for a plain resume).
    pub(super) fn finish_rewind(&mut self) -> Result<(), RunError> {
        self.forget_done_markers();
        self.rewind_branch()?;
        self.state.checkpoint.rewind_pending = false;
        self.save("branch rewound")
    }

    /// Removes the agents' done markers (`<job>@agent-<i>.done`): after a rewind, an
    /// agent that finished after the checkpoint runs again instead of being adopted.
    fn forget_done_markers(&self) {
        let spec = &self.state.spec;
        let prefix = format!("{}@agent-", spec.id);
        for entry in std::fs::read_dir(&spec.agents_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".done") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Before a start moves the branch (`rewind_branch`, `undo_unfinished_commits`), the
    /// job's worktree must be on it: a step that left another branch checked out (and
    /// failed) would have that branch reset instead. It is checked out again; when git
    /// cannot (changes in the way), the start is refused.
    pub(super) fn on_branch(&self) -> Result<(), RunError> {
        let spec = &self.state.spec;
        let Some(left) = off_branch(&spec.worktree, &spec.branch) else {
            return Ok(());
        };
        // A start from an earlier checkpoint resets the worktree right after: whatever
        // the step left there may go.
        let force: &[&str] = if self.rewind || self.state.checkpoint.rewind_pending {
            &["-f"]
        } else {
            &[]
        };
        let mut args = vec!["checkout", "-q"];
        args.extend_from_slice(force);
        args.push(&spec.branch);
        match git::git(&spec.worktree, &args) {
            Ok(_) => {
                self.note(&format!(
                    "a step had {left}: {} checked out again",
                    spec.branch
                ));
                Ok(())
            }
            Err(e) => Err(RunError::OffBranch {
                job: spec.id.clone(),
                branch: spec.branch.clone(),
                worktree: spec.worktree.clone(),
                reason: format!(
                    "a step {left}, and checking {} out failed: {e}",
                    spec.branch
                ),
            }),
        }
    }

    pub(super) fn drive(&mut self) -> Result<Outcome, RunError> {
        if self.ensure_parent()? && self.state.checkpoint.phase != Phase::Setup {
            self.reclaim_commits()?;
        }
        self.on_branch()?;
        if self.rewind {
            // The rewound checkpoint becomes the head before the branch moves back: a kill
            // in between left the branch rewound under a head that still said complete
            // (the result gone from the branch, and no resume to bring it back).
            self.state.checkpoint.rewind_pending = true;
            self.save("rewound")?;
            crash_point("rewound");
        }
        if self.state.checkpoint.rewind_pending {
            self.finish_rewind()?;
        } else {
            self.undo_unfinished_commits()?;
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
                // The workflow's merge: steps wait for a yes.
                Phase::Reduce
                    if !self.plan.merge.is_empty()
                        && !self.yes
                        && self.state.checkpoint.reduce_done == self.plan.reduce.len() =>
                {
                    return self.merge_pending();
                }
                Phase::Reduce => self.reduce()?,
                Phase::Complete => return self.complete(),
            }
        }
    }

    /// A job or session stopped before its `merge:` steps, for want of a yes: its steps
    /// are done and checkpointed; `resume -y` runs the merge.
    fn merge_pending(&mut self) -> Result<Outcome, RunError> {
        self.logger.flush()?;
        Ok(Outcome {
            job_id: self.id().to_owned(),
            repo: self.state.spec.repo.clone(),
            counters: self.state.checkpoint.counters,
            worktree: self.state.spec.worktree.clone(),
            branch: self.state.spec.branch.clone(),
            already_complete: false,
            steps: self
                .plan
                .is_sequential()
                .then_some(self.state.checkpoint.setup_done),
            merge_pending: true,
            merges_itself: true,
        })
    }

    pub(super) fn open_log(&self, name: &str) -> Result<Arc<Mutex<File>>, RunError> {
        let dir = self.state.spec.agents_dir.join("logs");
        fsutil::ensure_dir(self.states.refs().home_dir(), &dir)?;
        open_log(&dir.join(name))
    }

    /// Runs job-level steps from the checkpoint's count, checkpointing after each: setup
    /// (a session's steps), or reduce followed by `merge:` (one count for both).
    pub(super) fn job_steps(&mut self, phase: Phase) -> Result<(), RunError> {
        let sequential = self.plan.is_sequential();
        let (steps, name) = match phase {
            Phase::Setup if sequential => (self.plan.setup.clone(), "session"),
            Phase::Setup => (self.plan.setup.clone(), "setup"),
            _ => {
                let mut all = self.plan.reduce.clone();
                all.extend(self.plan.merge.iter().cloned());
                (all, "reduce")
            }
        };
        let reduce_len = self.plan.reduce.len();
        let mut env = self.env_with_secrets();
        let results_json = if phase == Phase::Reduce && !sequential {
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
        let env_all = self.env_all();
        let track_git = self.plan.all_steps().iter().any(|s| s.reads_git());
        let phase_limit = match phase {
            Phase::Setup => self.plan.setup_timeout,
            _ => None,
        };
        let phase_started = Instant::now();
        loop {
            let done = match phase {
                Phase::Setup => self.state.checkpoint.setup_done,
                _ => self.state.checkpoint.reduce_done,
            };
            let Some(step) = steps.get(done) else {
                return Ok(());
            };
            let merging = phase != Phase::Setup && done >= reduce_len;
            // The merge waits for a yes (the phase loop says so).
            if merging && done == reduce_len && !self.yes {
                return Ok(());
            }
            let name = if merging { "merge" } else { name };
            if merging && !captured.contains_key(crate::workflow::MERGE_VARS[0]) {
                let spec = &self.state.spec;
                let values = [
                    spec.worktree.display().to_string(),
                    spec.branch.clone(),
                    spec.target_branch.clone().unwrap_or_default(),
                    spec.id.clone(),
                ];
                for (var, value) in crate::workflow::MERGE_VARS.iter().zip(values) {
                    captured.insert((*var).to_owned(), value);
                }
            }
            let deadline = match merging {
                true => self.plan.merge_timeout.map(|t| Instant::now() + t),
                false => phase_limit.map(|t| phase_started + t),
            };
            let log = self.open_log(&format!("{name}.log"))?;
            let log_path = self
                .state
                .spec
                .agents_dir
                .join("logs")
                .join(format!("{name}.log"));
            let per_iteration = steps.iter().map(|s| s.number).max().unwrap_or(1).max(1);
            let (shown, of) = match merging {
                true => (done - reduce_len + 1, steps.len() - reduce_len),
                false if phase == Phase::Setup => (done + 1, steps.len()),
                false => (done + 1, reduce_len),
            };
            self.note(&format!("{name} step {shown}/{of}"));
            let c = self.state.checkpoint.counters;
            let vars = Vars {
                total: c.total,
                successful: c.done,
                failed: c.failed,
                results_json: &results_json,
                env: Some(&env_all),
                workflow_name: self.plan.name(),
                job_id: &self.state.spec.id,
                captured: Some(&captured),
                ..Vars::default()
            };
            let worktree = self.state.spec.worktree.clone();
            let mut metadata = serde_json::Map::new();
            metadata.insert("agent_id".into(), name.into());
            metadata.insert("worktree".into(), worktree.display().to_string().into());
            let site = Site {
                logger: &self.logger,
                refs: self.states.refs(),
                job_id: &self.state.spec.id,
                agent_id: name,
                item_id: None,
                phase: name,
                metadata,
                // A session's iteration (`run -n`), which tells its steps' calls apart.
                attempt: u32::try_from(done / per_iteration + 1).unwrap_or(u32::MAX),
                cwd: &worktree,
                env: &env,
                log: &log,
                log_path: Some(&log_path),
                deadline,
                mask: &self.mask,
                paste: &self.state.spec.env,
                base: Some(&self.state.spec.base_commit),
                track_git,
                tee: self.tee(name),
            };
            let result = match run_step(&self.exec, &site, step, &vars) {
                Ok(ok) => {
                    ok.record(step, &mut captured);
                    // The workflow's merge steps may check out the branch they merge into.
                    match merging {
                        true => Ok(()),
                        false => self
                            .follow_branch(&worktree)
                            .map_err(|message| (step.line, message)),
                    }
                }
                Err(f) if f.interrupted => return Err(self.interrupted()),
                Err(f) => Err((f.line, f.message)),
            };
            if let Err((line, message)) = result {
                let reason = format!("{name} step at line {line} failed: {message}");
                // The job records the failure; a failure to record it says so instead.
                match self.stop(reason) {
                    RunError::Stopped { .. } => {}
                    failed => return Err(failed),
                }
                return Err(RunError::Step {
                    job: self.id().to_owned(),
                    phase: name,
                    line,
                    message,
                });
            }
            match phase {
                Phase::Setup => self.state.checkpoint.setup_done += 1,
                _ => self.state.checkpoint.reduce_done += 1,
            }
            let head = git::head(&worktree).ok();
            // `run -n N` counts the commits of `commit_required` steps, as the original.
            if sequential && step.commit_required {
                let before = self.state.checkpoint.job_head.as_deref();
                if head.as_deref() != Some(before.unwrap_or(&self.state.spec.base_commit)) {
                    captured.insert(SESSION_COMMITTED.into(), "true".into());
                }
            }
            self.state.checkpoint.captured = captured.clone();
            self.state.checkpoint.job_head = head;
            // `run -n N`: a pass after which no `commit_required` step of the session has
            // made a commit is the last, as the original stops ("No changes were made").
            let passed = done + 1;
            if phase == Phase::Setup
                && sequential
                && passed < steps.len()
                && passed % per_iteration == 0
                && !captured.contains_key(SESSION_COMMITTED)
            {
                self.note(&format!(
                    "stopping after pass {} of {}: no commit_required step has made a commit",
                    passed / per_iteration,
                    steps.len() / per_iteration
                ));
                self.state.checkpoint.setup_done = steps.len();
                self.save(&format!(
                    "{name} step {passed} done; no commit, no more passes"
                ))?;
                return Ok(());
            }
            self.save(&format!("{name} step {passed} done"))?;
        }
    }
}

/// A session's capture, under a name no workflow can write or read, saying that one of
/// its `commit_required` steps made a commit (`run -n` goes on to the next pass only then).
const SESSION_COMMITTED: &str = "@session.committed";

/// How `worktree` is off `branch` ("switched the worktree to branch X", "detached the
/// worktree's HEAD"), or `None` when it is on it. By the full ref name: a tag of the same
/// name makes `--short` say `heads/<branch>`.
fn off_branch(worktree: &Path, branch: &str) -> Option<String> {
    let on = git::git(worktree, &["symbolic-ref", "-q", "HEAD"]).ok();
    match on
        .as_deref()
        .map(|r| r.strip_prefix("refs/heads/").unwrap_or(r))
    {
        Some(b) if b == branch => None,
        Some(other) => Some(format!("switched the worktree to branch {other}")),
        None => Some("detached the worktree's HEAD".to_owned()),
    }
}

/// The first 12 digits of a commit, as notes show it.
fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

/// The variable naming a point where the runner kills itself (SIGKILL), for tests of what
/// a kill exactly there leaves: `rewound` (after a rewound checkpoint is saved, before the
/// branch moves back). Unset, nothing happens.
pub const CRASH_AT_ENV: &str = "PRODIGY_CRASH_AT";

/// Kills this process with SIGKILL when [`CRASH_AT_ENV`] names `point`.
fn crash_point(point: &str) {
    if std::env::var(CRASH_AT_ENV).is_ok_and(|v| v == point) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
