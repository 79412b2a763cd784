//! `EventLogger`: buffers records and appends them to a job's log in durable batches.
//!
//! The caller's thread only serializes records into the current batch. A full batch (size
//! threshold), an old one (time threshold), `flush()`, `shutdown()` and drop seal it and
//! hand it to a two-stage pipeline: the store thread compresses and stores batch objects
//! (outside the job's lock), the commit thread chains their log nodes and moves the ref
//! under the lock, all waiting batches at once. Serialization, storing and committing
//! overlap; at most [`MAX_SEALED`] sealed batches wait, after which `log` blocks
//! (back-pressure), and at most [`MAX_STAGED`] stored ones, after which the store stage
//! waits.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use super::job::EventLog;
use super::log::{Batch, Chain, EventError};
use super::record::{
    MapReduceEvent, Metadata, RecordInfo, new_id, new_id_and_timestamp, write_record_line,
};
use crate::home::Home;
use crate::lock::LockOptions;
use crate::lock::WriteGuard;
use crate::store::object::{ObjectBatch, ObjectId};
use crate::store::refs::RefStore;

/// How many sealed batches may wait for the store stage before `log` blocks.
pub const MAX_SEALED: usize = 4;

/// How many stored batches may wait for the commit stage before the store stage waits.
/// A commit takes every batch waiting, and costs about the same for 1 as for 30 (its
/// fsyncs wait for the disk), so this bounds how many commits a steady stream of events
/// pays: with 4, a stream of 300,000 events paid 80 to 110 commits and `log` spent a third
/// of its time blocked behind them; with 32, 15 to 40 commits (BENCHMARKS.md). Memory:
/// at most this many batches of `max_bytes` each.
pub const MAX_STAGED: usize = 32;

/// When buffered records are flushed.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Seal the batch once it holds this many records.
    pub max_events: usize,
    /// Seal the batch once its JSON reaches this many bytes.
    pub max_bytes: usize,
    /// Seal records that have waited this long.
    pub max_delay: Duration,
    /// Group commit: at most this many sealed batches that piled up while the job's lock
    /// was busy are appended as one batch (1 appends every sealed batch on its own).
    pub max_merge: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_events: 1000,
            max_bytes: 1 << 20,
            max_delay: Duration::from_secs(1),
            max_merge: MAX_SEALED,
        }
    }
}

/// What the summary needs from an event, before the envelope exists.
struct Info<'a> {
    event_type: &'a str,
    agent_id: Option<&'a str>,
    duration_ms: Option<u64>,
    attachment: Option<crate::store::id::ObjectId>,
}

/// A batch whose object waits, not yet durable, in a group of its own; the guard keeps
/// gc away until the ref names it.
struct Staged {
    batch: Batch,
    id: ObjectId,
    group: ObjectBatch<'static>,
    _gc: WriteGuard,
}

struct State {
    current: Batch,
    oldest: Option<Instant>,
    sealed: VecDeque<Batch>,
    /// Batches compressed into temp files of their groups, waiting for the commit stage:
    /// their nodes, one durability barrier for objects and nodes, the ref move.
    staged: VecDeque<Staged>,
    /// Every record with a lower seq is durable.
    durable_next: u64,
    /// Guards against gc held until the record of their seq is durable (see
    /// [`EventLogger::hold_until_durable`]).
    held: Vec<(u64, WriteGuard)>,
    next_seq: u64,
    correlation_id: Option<String>,
    /// The flusher's last failure, reported by the next call.
    failed: Option<String>,
    /// After a failure the flusher waits to be asked again (by `flush`, `log`).
    paused: bool,
    shutdown: bool,
}

struct Shared {
    /// This logger's own chain (its writer's ref): no other writer appends to it.
    log: Chain,
    writer: String,
    metadata: Metadata,
    /// `metadata` serialized once: most records carry exactly it.
    metadata_json: Vec<u8>,
    thresholds: Thresholds,
    state: Mutex<State>,
    changed: Condvar,
}

/// Appends events of one job to the global store. Many loggers (threads, processes,
/// worktrees) may append to one job at once; each has its own `writer` id and `seq`.
///
/// `log` buffers; `flush` returns once everything logged before it is durable. Records are
/// also flushed by the size and time thresholds, `shutdown` and drop (a failure in drop
/// cannot be reported: call `shutdown` to see it).
pub struct EventLogger {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn failure(reason: String) -> EventError {
    EventError::BadRecord(format!("appending buffered events failed: {reason}"))
}

impl EventLogger {
    /// A logger for `job` of `repo` in the default home (`PRODIGY_HOME` or `~/.prodigy`).
    pub fn new_global(repo: &str, job: &str) -> Result<EventLogger, EventError> {
        let home = crate::storage::default_home()?;
        EventLogger::new(&home, repo, job, Thresholds::default())
    }

    /// A logger for `job` of `repo` in `home`.
    pub fn new(
        home: &Home,
        repo: &str,
        job: &str,
        thresholds: Thresholds,
    ) -> Result<EventLogger, EventError> {
        EventLogger::with_refs(
            RefStore::new(home, LockOptions::from_env()),
            repo,
            job,
            thresholds,
        )
    }

    /// A logger for `job` of `repo` on `refs` (which carries the lock options).
    pub fn with_refs(
        refs: RefStore,
        repo: &str,
        job: &str,
        thresholds: Thresholds,
    ) -> Result<EventLogger, EventError> {
        let writer = new_id();
        let log = EventLog::new(refs, repo, job)?.lane(&writer)?;
        let worktree = std::env::current_dir()
            .ok()
            .and_then(|d| crate::repo::worktree_root(&d))
            .map(|p| p.display().to_string());
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let metadata = Metadata {
            host: Some(host),
            pid: Some(std::process::id()),
            worktree,
            agent_id: None,
            extra: Map::new(),
        };
        let metadata_json =
            serde_json::to_vec(&metadata).map_err(|e| EventError::BadRecord(e.to_string()))?;
        let shared = Arc::new(Shared {
            log,
            writer,
            metadata,
            metadata_json,
            thresholds,
            state: Mutex::new(State {
                current: Batch::new(),
                oldest: None,
                sealed: VecDeque::new(),
                staged: VecDeque::new(),
                durable_next: 0,
                held: Vec::new(),
                next_seq: 0,
                correlation_id: None,
                failed: None,
                paused: false,
                shutdown: false,
            }),
            changed: Condvar::new(),
        });
        let mut threads = Vec::new();
        for (name, stage) in [
            ("prodigy-event-store", Shared::run_store as fn(&Shared)),
            ("prodigy-event-commit", Shared::run_commit),
        ] {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || stage(&shared))
                .map_err(|e| {
                    EventError::BadRecord(format!("cannot start the {name} thread: {e}"))
                })?;
            threads.push(handle);
        }
        Ok(EventLogger { shared, threads })
    }

    /// This logger's writer id.
    pub fn writer(&self) -> &str {
        &self.shared.writer
    }

    /// Sets the correlation id of the records logged from now on (`None` clears it).
    pub fn set_correlation_id(&self, id: Option<String>) {
        self.shared.lock().correlation_id = id;
    }

    /// Buffers an event.
    pub fn log(&self, event: MapReduceEvent) -> Result<(), EventError> {
        let info = Info {
            event_type: event.event_type(),
            agent_id: event.agent_id(),
            duration_ms: event.duration_ms(),
            attachment: event.attachment(),
        };
        self.shared.record(&event, info, None)
    }

    /// Buffers an event with extra metadata (`agent_id` and `worktree` keys fill those
    /// fields; other keys are kept as they are).
    pub fn log_with_metadata(
        &self,
        event: MapReduceEvent,
        metadata: Map<String, Value>,
    ) -> Result<(), EventError> {
        let metadata = self.shared.metadata_with(metadata);
        let info = Info {
            event_type: event.event_type(),
            agent_id: event.agent_id().or(metadata.agent_id.as_deref()),
            duration_ms: event.duration_ms(),
            attachment: event.attachment(),
        };
        self.shared.record(&event, info, Some(&metadata))
    }

    /// Buffers an event given as JSON (it must be an object with a string `event_type`).
    pub fn log_value(&self, event: Value, metadata: Map<String, Value>) -> Result<(), EventError> {
        let Some(event_type) = event.get("event_type").and_then(Value::as_str) else {
            return Err(EventError::BadRecord(
                "an event needs a string event_type".into(),
            ));
        };
        let metadata = self.shared.metadata_with(metadata);
        let info = Info {
            event_type,
            agent_id: event
                .get("agent_id")
                .and_then(Value::as_str)
                .or(metadata.agent_id.as_deref()),
            duration_ms: event.get("duration_ms").and_then(Value::as_u64),
            attachment: super::record::attachment_of(&event),
        };
        self.shared.record(&event, info, Some(&metadata))
    }

    /// Keeps `guard` (the home's gc guard, taken to write an object the last logged event
    /// names) until that event is durable: gc never sees the object unnamed, and the caller
    /// does not wait for a flush (the batch is sealed at once and committed by the
    /// logger's threads).
    pub fn hold_until_durable(&self, guard: WriteGuard) {
        let mut state = self.shared.lock();
        match state.next_seq.checked_sub(1) {
            Some(seq) if seq >= state.durable_next => {
                state.held.push((seq, guard));
                // Sealed now, so gc waits for one commit, not for the batch to fill.
                self.shared.seal(&mut state);
            }
            _ => drop(guard),
        }
    }

    /// Appends everything buffered; returns once it is durable.
    pub fn flush(&self) -> Result<(), EventError> {
        self.shared.flush()
    }

    /// Flushes and stops the flusher thread, reporting any failure.
    pub fn shutdown(mut self) -> Result<(), EventError> {
        let result = self.shared.flush();
        self.stop();
        result
    }

    fn stop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for EventLogger {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.shared.flush();
            self.stop();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn metadata_with(&self, mut extra: Map<String, Value>) -> Metadata {
        let mut metadata = self.metadata.clone();
        if let Some(Value::String(agent)) = extra.remove("agent_id") {
            metadata.agent_id = Some(agent);
        }
        if let Some(Value::String(worktree)) = extra.remove("worktree") {
            metadata.worktree = Some(worktree);
        }
        metadata.extra = extra;
        metadata
    }

    /// Serializes one record into the current batch (the envelope by hand, in the field
    /// order of `EventRecord`), sealing the batch when it is full.
    fn record<E: Serialize>(
        &self,
        event: &E,
        info: Info<'_>,
        metadata: Option<&Metadata>,
    ) -> Result<(), EventError> {
        let (id, timestamp) = new_id_and_timestamp();
        let mut state = self.lock();
        if let Some(reason) = state.failed.take() {
            state.paused = false;
            self.changed.notify_all();
            return Err(failure(reason));
        }
        while state.sealed.len() >= MAX_SEALED && !state.paused {
            state = self.wait(state);
        }
        let state = &mut *state;
        let seq = state.next_seq;
        let bad = |e: serde_json::Error| EventError::BadRecord(e.to_string());
        let own_metadata;
        let metadata_json = match metadata {
            Some(m) => {
                own_metadata = serde_json::to_vec(m).map_err(bad)?;
                &own_metadata
            }
            None => &self.metadata_json,
        };
        let info = RecordInfo {
            timestamp: &timestamp,
            event_type: info.event_type,
            agent_id: info.agent_id,
            duration_ms: info.duration_ms,
            writer: &self.writer,
            seq,
            attachment: info.attachment,
        };
        let correlation_id = state.correlation_id.as_deref();
        // Serialized straight into the batch.
        state.current.push_written(&info, |line| {
            write_record_line(
                line,
                &id,
                &timestamp,
                &self.writer,
                seq,
                correlation_id,
                |l| serde_json::to_writer(l, event),
                metadata_json,
            )
        })?;
        state.next_seq += 1;
        state.oldest.get_or_insert_with(Instant::now);
        if state.current.len() as usize >= self.thresholds.max_events
            || state.current.bytes() >= self.thresholds.max_bytes
        {
            self.seal(state);
        } else if state.current.len() == 1 {
            // The flusher sleeps without a deadline while nothing is buffered.
            self.changed.notify_all();
        }
        Ok(())
    }

    fn seal(&self, state: &mut State) {
        if state.current.is_empty() {
            return;
        }
        let next = state.current.successor();
        let batch = std::mem::replace(&mut state.current, next);
        state.sealed.push_back(batch);
        state.oldest = None;
        self.changed.notify_all();
    }

    fn flush(&self) -> Result<(), EventError> {
        let mut state = self.lock();
        self.seal(&mut state);
        state.paused = false;
        self.changed.notify_all();
        let target = state.next_seq;
        loop {
            if let Some(reason) = state.failed.take() {
                return Err(failure(reason));
            }
            if state.durable_next >= target {
                return Ok(());
            }
            state = self.wait(state);
        }
    }

    /// Records a stage's failure: the batches go back to the front of their queue, the
    /// pipeline pauses until `log` or `flush` reports the failure and asks again.
    fn fail(&self, state: &mut State, e: &EventError) {
        state.failed = Some(crate::error_line(e));
        state.paused = true;
        self.changed.notify_all();
    }

    /// Stage one: stores sealed batches (merging up to `max_merge` that piled up) as batch
    /// objects, outside the job's lock, and seals batches that waited past `max_delay`.
    fn run_store(&self) {
        let mut state = self.lock();
        loop {
            if !state.paused
                && state.staged.len() < MAX_STAGED
                && let Some(mut batch) = state.sealed.pop_front()
            {
                for _ in 1..self.thresholds.max_merge {
                    match state.sealed.pop_front() {
                        Some(next) => batch.extend(next),
                        None => break,
                    }
                }
                drop(state);
                // Compressed and written to a temp file here; made durable by the commit
                // stage's barrier. The guard is held until the ref has moved over it.
                let result = self
                    .log
                    .refs()
                    .write_guard()
                    .map_err(EventError::from)
                    .and_then(|gc| {
                        let mut group = self.log.refs().objects().batch_owned();
                        let id = batch.store_in(&mut group)?;
                        Ok((id, group, gc))
                    });
                state = self.lock();
                match result {
                    Ok((id, group, gc)) => state.staged.push_back(Staged {
                        batch,
                        id,
                        group,
                        _gc: gc,
                    }),
                    Err(e) => {
                        state.sealed.push_front(batch);
                        self.fail(&mut state, &e);
                    }
                }
                self.changed.notify_all();
                continue;
            }
            if state.shutdown && (state.sealed.is_empty() || state.paused) {
                return;
            }
            match state.oldest {
                Some(oldest) if oldest.elapsed() >= self.thresholds.max_delay => {
                    self.seal(&mut state);
                }
                Some(oldest) => {
                    let left = self.thresholds.max_delay.saturating_sub(oldest.elapsed());
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .map_or_else(|p| p.into_inner().0, |(g, _)| g);
                }
                None => state = self.wait(state),
            }
        }
    }

    /// Stage two: under the job's lock, chains a node for every stored batch waiting (each
    /// batch keeps its own node) and moves the ref once for all of them. Stage one stores
    /// the next batches meanwhile, so their fsyncs overlap.
    fn run_commit(&self) {
        let mut state = self.lock();
        loop {
            if !state.paused && !state.staged.is_empty() {
                let staged: Vec<Staged> = state.staged.drain(..).collect();
                drop(state);
                // One group for every batch waiting; the guards are kept until the end.
                let mut group = self.log.refs().objects().batch_owned();
                let mut batches = Vec::with_capacity(staged.len());
                let mut _guards = Vec::with_capacity(staged.len());
                for entry in staged {
                    group.absorb(entry.group);
                    batches.push((entry.batch, entry.id));
                    _guards.push(entry._gc);
                }
                let refs: Vec<(&Batch, ObjectId)> =
                    batches.iter().map(|(b, id)| (b, *id)).collect();
                let result = self.log.commit_group(&refs, group);
                tracing::debug!(
                    log = %self.log.name(),
                    batches = refs.len(),
                    ok = result.is_ok(),
                    "event logger: committed under the ref's lock"
                );
                state = self.lock();
                match result {
                    Ok(_) => {
                        if let Some((last, _)) = batches.last() {
                            state.durable_next = last.seq_last() + 1;
                        }
                        let durable = state.durable_next;
                        state.held.retain(|(seq, _)| *seq >= durable);
                    }
                    Err(e) => {
                        // Their temp files went with the group: they are stored again,
                        // ahead of the batches sealed since.
                        for (batch, _) in batches.into_iter().rev() {
                            state.sealed.push_front(batch);
                        }
                        self.fail(&mut state, &e);
                    }
                }
                self.changed.notify_all();
                continue;
            }
            if state.shutdown
                && ((state.staged.is_empty() && state.sealed.is_empty()) || state.paused)
            {
                return;
            }
            state = self.wait(state);
        }
    }
}
