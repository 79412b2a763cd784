//! `EventLogger`: buffers records and appends them to a job's log in durable batches, on a
//! size threshold, a time threshold (a background thread), `flush()`, `shutdown()` and drop.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::log::{Batch, EventError, EventLog};
use super::record::{EventRecord, MapReduceEvent, Metadata, RECORD_VERSION, new_id, now_timestamp};
use crate::home::{Home, HomeError};
use crate::lock::LockOptions;
use crate::refs::RefStore;

/// When buffered records are flushed.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Flush once this many records are buffered.
    pub max_events: usize,
    /// Flush once the buffered JSON reaches this many bytes.
    pub max_bytes: usize,
    /// Flush records that have waited this long.
    pub max_delay: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_events: 1000,
            max_bytes: 1 << 20,
            max_delay: Duration::from_secs(1),
        }
    }
}

struct State {
    batch: Batch,
    oldest: Option<Instant>,
    next_seq: u64,
    correlation_id: Option<String>,
    shutdown: bool,
    /// A background flush that failed; reported by the next call.
    failed: Option<String>,
}

struct Shared {
    log: EventLog,
    writer: String,
    metadata: Metadata,
    thresholds: Thresholds,
    state: Mutex<State>,
    wake: Condvar,
    /// Held across a whole flush, so one logger's batches reach the log in `seq` order.
    flushing: Mutex<()>,
}

/// Appends events of one job to the global store. Many loggers (threads, processes,
/// worktrees) may append to one job at once; each has its own `writer` id and `seq`.
///
/// `log` buffers; `flush` returns once everything logged before it is durable. Buffered
/// records are also flushed by size and time thresholds, `shutdown` and drop (a failure in
/// drop cannot be reported: call `shutdown` to see it).
pub struct EventLogger {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

impl EventLogger {
    /// A logger for `job` of `repo` in the default home (`PRODIGY_HOME` or `~/.prodigy`).
    pub fn new_global(repo: &str, job: &str) -> Result<EventLogger, EventError> {
        let home = Home::from_env().map_err(|e: HomeError| EventError::BadRecord(e.to_string()))?;
        EventLogger::new(&home, repo, job, Thresholds::default())
    }

    /// A logger for `job` of `repo` in `home`.
    pub fn new(
        home: &Home,
        repo: &str,
        job: &str,
        thresholds: Thresholds,
    ) -> Result<EventLogger, EventError> {
        let refs = RefStore::new(home, LockOptions::from_env());
        let log = EventLog::new(refs, repo, job)?;
        let worktree = std::env::current_dir()
            .ok()
            .and_then(|d| crate::repo::worktree_root(&d))
            .map(|p| p.display().to_string());
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let shared = Arc::new(Shared {
            log,
            writer: new_id(),
            metadata: Metadata {
                host: Some(host),
                pid: Some(std::process::id()),
                worktree,
                agent_id: None,
                extra: Map::new(),
            },
            thresholds,
            state: Mutex::new(State {
                batch: Batch::new(),
                oldest: None,
                next_seq: 0,
                correlation_id: None,
                shutdown: false,
                failed: None,
            }),
            wake: Condvar::new(),
            flushing: Mutex::new(()),
        });
        let ticker_shared = Arc::clone(&shared);
        let ticker = std::thread::Builder::new()
            .name("prodigy-event-flush".into())
            .spawn(move || ticker_shared.tick())
            .ok();
        Ok(EventLogger { shared, ticker })
    }

    /// This logger's writer id.
    pub fn writer(&self) -> &str {
        &self.shared.writer
    }

    /// Sets the correlation id of the records logged from now on (`None` clears it).
    pub fn set_correlation_id(&self, id: Option<String>) {
        self.shared.lock_state().correlation_id = id;
    }

    /// Buffers an event.
    pub fn log(&self, event: MapReduceEvent) -> Result<(), EventError> {
        self.log_with_metadata(event, Map::new())
    }

    /// Buffers an event with extra metadata (`agent_id` and `worktree` keys fill those
    /// fields; other keys are kept as they are).
    pub fn log_with_metadata(
        &self,
        event: MapReduceEvent,
        metadata: Map<String, Value>,
    ) -> Result<(), EventError> {
        let event =
            serde_json::to_value(event).map_err(|e| EventError::BadRecord(e.to_string()))?;
        self.log_value(event, metadata)
    }

    /// Buffers an event given as JSON (it must have an `event_type`).
    pub fn log_value(&self, event: Value, mut extra: Map<String, Value>) -> Result<(), EventError> {
        if event.get("event_type").and_then(Value::as_str).is_none() {
            return Err(EventError::BadRecord(
                "an event needs a string event_type".into(),
            ));
        }
        let mut metadata = self.shared.metadata.clone();
        if let Some(Value::String(agent)) = extra.remove("agent_id") {
            metadata.agent_id = Some(agent);
        }
        if let Some(Value::String(worktree)) = extra.remove("worktree") {
            metadata.worktree = Some(worktree);
        }
        metadata.extra = extra;
        let full = {
            let mut state = self.shared.lock_state();
            if let Some(reason) = state.failed.take() {
                return Err(EventError::BadRecord(format!(
                    "an earlier background flush failed: {reason}"
                )));
            }
            let record = EventRecord {
                v: RECORD_VERSION,
                id: new_id(),
                timestamp: now_timestamp(),
                writer: self.shared.writer.clone(),
                seq: state.next_seq,
                correlation_id: state.correlation_id.clone(),
                event,
                metadata,
            };
            state.batch.push(&record)?;
            state.next_seq += 1;
            state.oldest.get_or_insert_with(Instant::now);
            state.batch.len() as usize >= self.shared.thresholds.max_events
                || state.batch.bytes() >= self.shared.thresholds.max_bytes
        };
        if full {
            self.shared.flush()?;
        } else {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Appends everything buffered; returns once it is durable.
    pub fn flush(&self) -> Result<(), EventError> {
        if let Some(reason) = self.shared.lock_state().failed.take() {
            return Err(EventError::BadRecord(format!(
                "an earlier background flush failed: {reason}"
            )));
        }
        self.shared.flush()
    }

    /// Flushes and stops the background thread, reporting any failure.
    pub fn shutdown(mut self) -> Result<(), EventError> {
        self.stop();
        let failed = self.shared.lock_state().failed.take();
        self.shared.flush()?;
        match failed {
            Some(reason) => Err(EventError::BadRecord(format!(
                "an earlier background flush failed: {reason}"
            ))),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.shared.lock_state().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

impl Drop for EventLogger {
    fn drop(&mut self) {
        self.stop();
        let _ = self.shared.flush();
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the buffer and appends it. On failure the records go back to the front of the
    /// buffer, so nothing buffered is dropped and `seq` order holds.
    fn flush(&self) -> Result<(), EventError> {
        let _order = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let batch = {
            let mut state = self.lock_state();
            state.oldest = None;
            std::mem::take(&mut state.batch)
        };
        if batch.is_empty() {
            return Ok(());
        }
        match self.log.append(std::slice::from_ref(&batch)) {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut state = self.lock_state();
                let newer = std::mem::replace(&mut state.batch, batch);
                state.batch.extend(newer);
                state.oldest.get_or_insert_with(Instant::now);
                Err(e)
            }
        }
    }

    /// The background thread: flushes records older than `max_delay`.
    fn tick(&self) {
        let mut state = self.lock_state();
        loop {
            if state.shutdown {
                return;
            }
            let wait = match state.oldest {
                Some(oldest) => self.thresholds.max_delay.saturating_sub(oldest.elapsed()),
                None => self.thresholds.max_delay,
            };
            if state.oldest.is_some() && wait.is_zero() {
                drop(state);
                if let Err(e) = self.flush() {
                    let mut s = self.lock_state();
                    s.failed = Some(e.to_string());
                    // Back off before retrying a failing store.
                    let _ = self.wake.wait_timeout(s, self.thresholds.max_delay);
                }
                state = self.lock_state();
                continue;
            }
            state = match self
                .wake
                .wait_timeout(state, wait.max(Duration::from_millis(1)))
            {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }
}
