//! The setup phase: the job's setup steps, then the work items (`map.input`).

use super::*;

impl Job {
    pub(super) fn setup(&mut self) -> Result<(), RunError> {
        self.job_steps(Phase::Setup)?;
        // A session's steps are all there is.
        let Some(map) = self.plan.map_spec().cloned() else {
            return self.end_session();
        };
        // The work items, made in the job's worktree after setup.
        let worktree = self.state.spec.worktree.clone();
        let (bytes, what, from_file) = match input::source(&map, &worktree, &self.state.spec.env) {
            input::Source::File(path) => {
                if !path.is_file() {
                    let input = map.input.value.clone();
                    return Err(self.input_error(format!(
                        "'{input}' is not in the job's worktree '{}' (a checkout of commit {}): commit it, or make it in setup",
                        worktree.display(),
                        &self.state.spec.base_commit[..12.min(self.state.spec.base_commit.len())]
                    )));
                }
                let bytes =
                    crate::fsutil::read_limited(&path, crate::store::object::MAX_OBJECT_SIZE)
                        .at("read map.input", &path)?;
                (bytes, format!("'{}'", path.display()), true)
            }
            input::Source::Command(cmd) => {
                let log = self.open_log("input.log")?;
                let env = self.env_with_secrets();
                let out = self
                    .exec
                    .run(&StepSpec {
                        program: exec::Program::Shell(&cmd),
                        cwd: &worktree,
                        env: &env,
                        timeout: None,
                        // All of it: the items are cut nowhere (at 1 MiB, a step's
                        // capture, lines were lost in silence), up to what one object
                        // holds.
                        capture: Some(crate::store::object::MAX_OBJECT_SIZE as usize),
                        log: &log,
                        lines: None,
                        clear_env: false,
                        keep_stderr: false,
                        mask: Some(Arc::clone(&self.mask)),
                        // The items are data, not progress: not echoed.
                        tee: None,
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
                if out.stdout_bytes > out.stdout.len() as u64 {
                    return Err(self.input_error(format!(
                        "the output of {cmd:?} is larger than {} bytes, the most the work items may hold",
                        crate::store::object::MAX_OBJECT_SIZE
                    )));
                }
                (out.stdout, format!("the output of {cmd:?}"), false)
            }
        };
        let items = input::items(&self.plan, &map, &bytes, &what, from_file)
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
        for own in step::INTERNAL {
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

    /// A session's steps are done: its `merge:` steps next when it has them (they wait for
    /// a yes), else it is complete.
    fn end_session(&mut self) -> Result<(), RunError> {
        if !self.plan.merge.is_empty() {
            self.state.checkpoint.phase = Phase::Reduce;
            return self.save("phase merge");
        }
        // What no step committed is not on the session's branch: said, not lost (a step
        // run again after a resume finds what it had committed staged).
        let worktree = &self.state.spec.worktree;
        if git::tracked_changes(worktree).unwrap_or(false) {
            self.note(&format!(
                "the session's worktree '{}' holds changes no step committed; they are not on \
                 {}: commit them there to keep them",
                worktree.display(),
                self.state.spec.branch
            ));
        }
        self.state.checkpoint.phase = Phase::Complete;
        self.state.checkpoint.ended = Some(now_timestamp());
        self.save("complete")
    }

    pub(super) fn input_error(&mut self, message: String) -> RunError {
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

    pub(super) fn load_items(&self) -> Result<(Vec<Value>, Vec<String>), RunError> {
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
}
