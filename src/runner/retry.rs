//! `dlq retry`: dead-lettered items run again through the job's agent template.

use super::*;

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
    let plan = super::plan_of(&state.spec)?;
    let mut job = Job::new(home, refs, states, plan, state, opts)?;
    job.run_lock = Some(lock);
    job.retry(retry)
}

impl Job {
    pub(super) fn retry(&mut self, retry: RetryOptions) -> Result<RetryOutcome, RunError> {
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
        // A `resume --from` stopped before it moved the branch back: done first, or the
        // retry would merge onto the branch the rewind undoes.
        self.on_branch()?;
        if self.state.checkpoint.rewind_pending {
            self.finish_rewind()?;
        }
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
