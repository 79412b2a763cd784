//! Where a step runs and whom its events name: what the step runner (`agent::run_step`)
//! and a Claude call (`claude::call`) share.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::events::logger::EventLogger;
use crate::events::record::MapReduceEvent;
use crate::store::refs::RefStore;
use crate::workflow::env::Masker;

use super::exec::LineHook;

/// Where a step runs and whom its events name.
#[derive(Clone)]
pub(super) struct Site<'a> {
    /// The job's event logger.
    pub logger: &'a Arc<EventLogger>,
    /// The store (Claude transcripts are kept there).
    pub refs: &'a RefStore,
    /// The job.
    pub job_id: &'a str,
    /// The agent (`agent-<i>`), or the phase for job-level steps (`setup`, `reduce`,
    /// `merge`).
    pub agent_id: &'a str,
    /// The work item, for an agent.
    pub item_id: Option<&'a str>,
    /// The phase (`setup`, `map`, `reduce`, `merge`).
    pub phase: &'a str,
    /// Metadata of its events (agent id, worktree).
    pub metadata: Map<String, Value>,
    /// The agent's attempt (1 for job-level steps).
    pub attempt: u32,
    /// The worktree it runs in.
    pub cwd: &'a Path,
    /// Its environment.
    pub env: &'a BTreeMap<String, String>,
    /// Where its output goes.
    pub log: &'a Arc<Mutex<File>>,
    /// That log's path: each step's part of it is kept in the store (`step_output`).
    pub log_path: Option<&'a Path>,
    /// When the agent's time is up.
    pub deadline: Option<Instant>,
    /// Secrets' values, replaced by `***` in all the step writes.
    pub mask: &'a Arc<Masker>,
    /// The workflow's variables pasted into Claude commands (`$ARG`, `$PROJECT`).
    pub paste: &'a BTreeMap<String, String>,
    /// The commit the workflow started from here (`${workflow.*}`).
    pub base: Option<&'a str>,
    /// Record each step's commits (a step of the plan reads `${step.*}`).
    pub track_git: bool,
    /// Told of each line the step prints: the terminal's copy.
    pub tee: Option<LineHook>,
}

impl Site<'_> {
    /// Logs one of its events (events are observations: a failure to log stops the job
    /// at its next checkpoint, not the step).
    pub fn event(&self, event: MapReduceEvent) {
        let _ = self.logger.log_with_metadata(event, self.metadata.clone());
    }
}
