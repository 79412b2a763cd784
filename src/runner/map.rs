//! The map phase: agents run the items (in [`super::agent`]), results come back to the
//! main thread, which checkpoints, dead-letters failures and merges each agent's commits.

use super::*;

impl Job {
    pub(super) fn agent_ctx(
        &self,
        items: Vec<Value>,
        keys: Vec<String>,
        max_attempts: u32,
    ) -> AgentCtx {
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
            refs: self.states.refs().clone(),
            items,
            keys,
            max_attempts,
            secrets: self.secrets.clone(),
            env_all: self.env_all(),
            mask: Arc::clone(&self.mask),
            track_git: self.plan.all_steps().iter().any(|s| s.reads_git()),
            observer: self.observer.clone(),
        }
    }

    /// The map phase, to the merge; an interrupt or the error policy ends the run with
    /// its error.
    pub(super) fn map(&mut self) -> Result<(), RunError> {
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
        self.tell_failures();
        if self.exec.interrupted() {
            return Err(self.interrupted());
        }
        if let Some(reason) = stop_reason {
            return Err(self.stop(reason));
        }
        self.drop_stale_dead_letters()?;
        self.state.checkpoint.phase = Phase::Merge;
        self.save("phase merge")
    }

    /// Items the dead-letter queue holds that are done now (`resume --from` ran them
    /// again, and they succeeded) leave it, as `dlq retry` drops such stale entries: `dlq
    /// list` showed them as failures. A merge that fails puts an item back.
    fn drop_stale_dead_letters(&mut self) -> Result<(), RunError> {
        let snapshot = self.dlq.snapshot()?;
        let stale: Vec<String> = snapshot
            .items
            .keys()
            .filter(|k| {
                self.state
                    .results
                    .get(*k)
                    .is_some_and(|r| r.status == ItemStatus::Done)
            })
            .cloned()
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        for key in self.dlq.remove(&stale)? {
            self.log(MapReduceEvent::DlqItemRemoved {
                job_id: self.id().to_owned(),
                item_id: key,
            })?;
        }
        Ok(())
    }

    /// Agents that finished their steps but whose results no checkpoint recorded (the
    /// runner died in between) are adopted instead of running again. Two records tell:
    /// the job's event log, the durable one (an `agent_completed` event names the item,
    /// its commits — kept on the agent's branch before the event was logged —, attempt
    /// and output), and the done marker beside the agent's worktree, written before the
    /// event is flushed (gone with the worktrees). An item runs again only when neither
    /// survived: its completion never became durable.
    pub(super) fn adopt_finished_agents(&mut self, keys: &[String]) -> Result<(), RunError> {
        let spec = self.state.spec.clone();
        let map_base = self
            .state
            .checkpoint
            .map_base
            .clone()
            .unwrap_or_else(|| spec.base_commit.clone());
        let open: BTreeMap<&str, usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| !self.state.results.contains_key(*k))
            .map(|(i, k)| (k.as_str(), i))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        let mut found = self.logged_completions(&open)?;
        for (&key, &index) in &open {
            if found.contains_key(key) {
                continue;
            }
            let Ok(bytes) = std::fs::read(agent::marker_path(&spec, index)) else {
                continue;
            };
            let Ok(done) = serde_json::from_slice::<agent::DoneMarker>(&bytes) else {
                continue;
            };
            let range = format!("{map_base}..{}", done.head);
            let Ok(list) = git::git(&spec.repo_root, &["rev-list", "--reverse", &range]) else {
                continue;
            };
            found.insert(
                key.to_owned(),
                Finished {
                    attempt: done.attempt,
                    duration_ms: done.duration_ms,
                    commits: list.lines().map(str::to_owned).collect(),
                    output: done.output,
                },
            );
        }
        let adopted = found.len();
        for (key, done) in found {
            let index = open[key.as_str()];
            if let Some(last) = done.commits.last() {
                self.worktrees()
                    .set_branch(&agent_branch(&spec, index), last)?;
            }
            self.state.record(
                &key,
                ItemResult {
                    index,
                    status: ItemStatus::Done,
                    agent_id: format!("agent-{index}"),
                    attempts: done.attempt,
                    duration_ms: done.duration_ms,
                    commits: done.commits,
                    merged: false,
                    output: done.output,
                    error: None,
                },
            );
        }
        if adopted > 0 {
            self.note(&format!(
                "{adopted} agents had finished before the interruption"
            ));
            self.save(&format!("adopted {adopted} finished agents"))?;
        }
        Ok(())
    }

    /// The items of `open` whose `agent_completed` event is in the job's log, with what
    /// the event says — when every commit it names is still in the repository (else the
    /// item runs again).
    fn logged_completions(
        &self,
        open: &BTreeMap<&str, usize>,
    ) -> Result<BTreeMap<String, Finished>, RunError> {
        let spec = &self.state.spec;
        let log = crate::events::EventLog::new(self.states.refs().clone(), &spec.repo, &spec.id)?;
        let rewound = self.state.checkpoint.rewound.clone();
        let mut found = BTreeMap::new();
        // A log that cannot be read whole does not stop the resume: what it has is adopted.
        let types = ["agent_completed"];
        let skipped = crate::events::query::typed_events(&log, &types, true, |at, event| {
            if rewound.as_ref().is_some_and(|rewound| &at < rewound) {
                return;
            }
            if let MapReduceEvent::AgentCompleted {
                item_id,
                duration_ms,
                commits,
                attempt,
                output,
                ..
            } = event
                && open.contains_key(item_id.as_str())
            {
                found.insert(
                    item_id,
                    Finished {
                        attempt: attempt.unwrap_or(1),
                        duration_ms,
                        commits,
                        output,
                    },
                );
            }
        })?;
        for e in skipped {
            self.note(&format!(
                "part of the event log cannot be read ({}); its items run again",
                crate::error_line(&e)
            ));
        }
        found.retain(|_, done: &mut Finished| {
            done.commits.iter().all(|c| {
                git::git(
                    &spec.repo_root,
                    &["cat-file", "-e", &format!("{c}^{{commit}}")],
                )
                .is_ok()
            })
        });
        Ok(found)
    }

    /// Worktrees an earlier run left (it died first): every worker's slot, and a kept
    /// agent's whose item is done since.
    pub(super) fn remove_leftover_worktrees(&self, keys: &[String]) {
        let worktrees = self.worktrees();
        let dirs = agent_dirs(&self.state.spec);
        for (_, slot) in &dirs.slots {
            worktrees.remove(slot);
        }
        for (index, path) in &dirs.agents {
            let done = keys
                .get(*index)
                .and_then(|k| self.state.results.get(k))
                .is_some_and(|r| r.status == ItemStatus::Done);
            if done {
                worktrees.remove(path);
            }
        }
    }

    /// Runs agents over `pending` with the job's parallelism; `finished` is called in this
    /// thread for each result and may ask to stop (returning a reason).
    pub(super) fn run_agents(
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
        let (verdicts, waits): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::channel::<()>()).unzip();
        let mut stop_reason = None;
        let mut outcome = Ok(());
        std::thread::scope(|s| {
            for (n, wait) in waits.into_iter().enumerate() {
                let tx = tx.clone();
                let queue = &queue;
                let stop = &stop;
                s.spawn(move || {
                    let mut slot = agent::Slot::new(slot_dir(&ctx.spec, n));
                    loop {
                        if stop.load(Ordering::SeqCst) || ctx.exec.interrupted() {
                            break;
                        }
                        let Some(index) =
                            queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                        else {
                            break;
                        };
                        let msg = run_agent(ctx, index, &mut slot, &tx);
                        // After a failure, the next item waits for the error policy's
                        // verdict (`max_failures` and the like started one more).
                        let failed = matches!(msg, Msg::Finished(_, _, Some(_)));
                        if tx.send(msg).is_err()
                            || failed && (tx.send(Msg::Verdict(n)).is_err() || wait.recv().is_err())
                        {
                            break;
                        }
                    }
                    // An interrupted agent's worktree stays as it was (the next run
                    // removes it).
                    if !ctx.exec.interrupted() {
                        slot.close(ctx);
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
                        Msg::Verdict(n) => {
                            let _ = verdicts[n].send(());
                        }
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

    pub(super) fn finish_item(
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
        self.tell_failure(format!(
            "item {index} ({key}) failed: {}",
            super::last_line(&failure.error_message)
        ));
        if let Some(max) = self.plan.max_failures
            && c.failed > max
        {
            return Ok(Some(format!(
                "{} items failed, more than max_failures ({max})",
                c.failed
            )));
        }
        if let Some(share) = self.plan.failure_threshold
            && c.total > 0
            && c.failed as f64 / c.total as f64 > share
        {
            return Ok(Some(format!(
                "{} of {} items failed, more than failure_threshold ({share})",
                c.failed, c.total
            )));
        }
        Ok(None)
    }

    /// A failed item, told on the terminal as `error_policy.error_collection` says: at
    /// once, in batches, or all at the end of the map phase ([`Self::tell_failures`]).
    fn tell_failure(&mut self, line: String) {
        self.failures.push(line);
        let due = match self.plan.error_collection {
            Collection::Immediate => 1,
            Collection::Batched(n) => n,
            Collection::Aggregate => return,
        };
        if self.failures.len() >= due {
            self.tell_failures();
        }
    }

    /// Tells the failures not told yet.
    pub(super) fn tell_failures(&mut self) {
        for line in std::mem::take(&mut self.failures) {
            self.note(&line);
        }
    }

    pub(super) fn dead_letter(
        &self,
        key: &str,
        data: Value,
        failure: Failure,
    ) -> Result<(), RunError> {
        let item = self.dlq.add(key, data, failure)?;
        self.log(MapReduceEvent::DlqItemAdded {
            job_id: self.id().to_owned(),
            item_id: key.to_owned(),
            error_signature: item.error_signature,
            failure_count: item.failure_count,
        })
    }
}

/// An agent's finished attempt, as a resume finds it recorded.
struct Finished {
    attempt: u32,
    duration_ms: u64,
    commits: Vec<String>,
    output: Option<String>,
}
