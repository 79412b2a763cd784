//! The reduce phase, the map results it reads, and the job's completion (retention).

use super::*;

impl Job {
    pub(super) fn results_json(&self) -> String {
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

    pub(super) fn reduce(&mut self) -> Result<(), RunError> {
        self.job_steps(Phase::Reduce)?;
        if self.state.checkpoint.reduce_done < self.plan.reduce.len() + self.plan.merge.len() {
            // The merge waits for a yes.
            return Ok(());
        }
        self.state.checkpoint.phase = Phase::Complete;
        self.state.checkpoint.ended = Some(now_timestamp());
        self.save("complete")?;
        Ok(())
    }

    /// The repository's retention policy, when it says `auto`, applied to the job's log
    /// now that it is complete. A failure is reported, not fatal: the job is done.
    pub(super) fn apply_retention(&self) {
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

    pub(super) fn complete(&mut self) -> Result<Outcome, RunError> {
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
            steps: self
                .plan
                .is_sequential()
                .then_some(self.state.checkpoint.setup_done),
            merge_pending: false,
            merges_itself: !self.plan.merge.is_empty(),
        })
    }
}
