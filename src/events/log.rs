//! A job's event log on the store: `batch` objects (JSON Lines) chained by `log` nodes under
//! the `events/<repo>/<job>` ref (DESIGN.md §6).
//!
//! Each node summarises its batch (count, time range, per-type and per-agent counts,
//! durations) and carries the running totals of the whole chain, so listing jobs reads one
//! node per job and stats never open a batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{EventRecord, RecordInfo};
use crate::object::{ObjectError, ObjectId, ObjectStore, ObjectType};
use crate::refs::{RefError, RefKind, RefName, RefStore};

/// Failures of the event log.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A ref-layer failure (lock, CAS, name).
    #[error(transparent)]
    Ref(#[from] RefError),
    /// An object-layer failure (missing or corrupt object, I/O).
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The home's `config.json` (retention policies).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The default home could not be chosen.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A `log` node that is not valid JSON of the node shape.
    #[error("log node {id} of {name} is malformed: {reason}")]
    BadNode {
        /// The ref.
        name: RefName,
        /// The node.
        id: ObjectId,
        /// What is wrong.
        reason: String,
    },
    /// A chain link that cannot be read.
    #[error("the event log {name} is broken at {what} {id}")]
    Broken {
        /// The ref.
        name: RefName,
        /// "log node" or "batch".
        what: &'static str,
        /// The object that cannot be read.
        id: ObjectId,
        /// Why.
        #[source]
        source: Box<EventError>,
    },
    /// A record that cannot be stored.
    #[error("{0}")]
    BadRecord(String),
    /// Writing what was read failed (a closed pipe, a full disk).
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    /// A job with no event log.
    #[error("no events for job {job} in repo {repo}")]
    NoSuchJob {
        /// The repo name.
        repo: String,
        /// The job id.
        job: String,
    },
}

/// Count and spread of the durations one event type reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationStats {
    /// How many events had a `duration_ms`.
    pub count: u64,
    /// Their sum.
    pub total_ms: u64,
    /// The shortest.
    pub min_ms: u64,
    /// The longest.
    pub max_ms: u64,
}

impl DurationStats {
    fn add(&mut self, ms: u64) {
        self.min_ms = if self.count == 0 {
            ms
        } else {
            self.min_ms.min(ms)
        };
        self.max_ms = self.max_ms.max(ms);
        self.count += 1;
        self.total_ms += ms;
    }

    fn merge(&mut self, other: &DurationStats) {
        if other.count == 0 {
            return;
        }
        self.min_ms = if self.count == 0 {
            other.min_ms
        } else {
            self.min_ms.min(other.min_ms)
        };
        self.max_ms = self.max_ms.max(other.max_ms);
        self.count += other.count;
        self.total_ms += other.total_ms;
    }
}

/// Adds `n` to a counter, allocating the key only the first time.
fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(count) => *count += n,
        None => {
            map.insert(key.to_owned(), n);
        }
    }
}

/// What a set of events holds, without the events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of events.
    pub count: u64,
    /// Earliest timestamp.
    pub first_ts: Option<String>,
    /// Latest timestamp.
    pub last_ts: Option<String>,
    /// Bytes of JSON Lines (uncompressed).
    pub bytes: u64,
    /// Events per type.
    pub types: BTreeMap<String, u64>,
    /// Durations per type, for types whose events carry `duration_ms`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub durations: BTreeMap<String, DurationStats>,
}

impl Summary {
    fn add(&mut self, r: &RecordInfo<'_>, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
        if self.first_ts.as_deref().is_none_or(|f| r.timestamp < f) {
            self.first_ts = Some(r.timestamp.to_owned());
        }
        if self.last_ts.as_deref().is_none_or(|l| r.timestamp > l) {
            self.last_ts = Some(r.timestamp.to_owned());
        }
        bump(&mut self.types, r.event_type, 1);
        if let Some(ms) = r.duration_ms {
            match self.durations.get_mut(r.event_type) {
                Some(d) => d.add(ms),
                None => self
                    .durations
                    .entry(r.event_type.to_owned())
                    .or_default()
                    .add(ms),
            }
        }
    }

    /// Adds another summary into this one.
    pub fn merge(&mut self, other: &Summary) {
        self.count += other.count;
        self.bytes += other.bytes;
        if let Some(f) = &other.first_ts
            && self.first_ts.as_ref().is_none_or(|s| f < s)
        {
            self.first_ts = Some(f.clone());
        }
        if let Some(l) = &other.last_ts
            && self.last_ts.as_ref().is_none_or(|s| l > s)
        {
            self.last_ts = Some(l.clone());
        }
        for (t, n) in &other.types {
            *self.types.entry(t.clone()).or_default() += n;
        }
        for (t, d) in &other.durations {
            self.durations.entry(t.clone()).or_default().merge(d);
        }
    }
}

/// A `log` object: one batch and the chain's totals up to and including it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogNode {
    /// The previous node (`None` for the first).
    pub parent: Option<ObjectId>,
    /// The batch object (JSON Lines).
    pub batch: ObjectId,
    /// The batch's writer; every record of a batch has it.
    pub writer: String,
    /// The first record's `seq`.
    pub seq_first: u64,
    /// The last record's `seq`.
    pub seq_last: u64,
    /// What the batch holds.
    #[serde(flatten)]
    pub summary: Summary,
    /// Events per agent in the batch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, u64>,
    /// The whole chain up to here.
    pub total: Summary,
    /// Number of batches in the chain up to here.
    pub depth: u64,
}

/// A batch being built: serialized records and their summary. All records of one batch
/// come from one writer, in `seq` order.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    payload: Vec<u8>,
    summary: Summary,
    agents: BTreeMap<String, u64>,
    writer: Option<String>,
    seq_first: u64,
    seq_last: u64,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a record (serialized as one line). Refuses a record from another writer than
    /// the batch's first, or out of `seq` order.
    pub fn push(&mut self, record: &EventRecord) -> Result<(), EventError> {
        let mut line = Vec::with_capacity(256);
        serde_json::to_writer(&mut line, record)
            .map_err(|e| EventError::BadRecord(format!("record {}: {e}", record.id)))?;
        self.push_encoded(&line, &record.info())
    }

    /// Adds a record already serialized as JSON (without a newline), described by `info`.
    pub fn push_encoded(&mut self, json: &[u8], info: &RecordInfo<'_>) -> Result<(), EventError> {
        match &self.writer {
            None => {
                self.writer = Some(info.writer.to_owned());
                self.seq_first = info.seq;
            }
            Some(w) if w != info.writer => {
                return Err(EventError::BadRecord(format!(
                    "record seq {} is from writer {}, the batch from {w}",
                    info.seq, info.writer
                )));
            }
            Some(_) if info.seq <= self.seq_last => {
                return Err(EventError::BadRecord(format!(
                    "writer {} has seq {} after seq {}",
                    info.writer, info.seq, self.seq_last
                )));
            }
            Some(_) => {}
        }
        self.seq_last = info.seq;
        self.payload.extend_from_slice(json);
        self.payload.push(b'\n');
        self.summary.add(info, json.len() as u64 + 1);
        if let Some(agent) = info.agent_id {
            bump(&mut self.agents, agent, 1);
        }
        Ok(())
    }

    /// Appends a batch of later records from the same writer.
    pub fn extend(&mut self, newer: Batch) {
        if newer.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = newer;
            return;
        }
        self.payload.extend_from_slice(&newer.payload);
        self.summary.merge(&newer.summary);
        for (agent, n) in &newer.agents {
            bump(&mut self.agents, agent, *n);
        }
        self.seq_last = newer.seq_last;
    }

    /// What the batch holds.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.summary.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.summary.count == 0
    }

    /// Bytes of JSON Lines so far.
    pub fn bytes(&self) -> usize {
        self.payload.len()
    }

    /// The last record's seq.
    pub fn seq_last(&self) -> u64 {
        self.seq_last
    }

    /// The writer of the batch's records.
    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }
}

/// Nodes read from a chain, oldest first, and the error that ended the walk early (only
/// with `best_effort`).
pub type PartialChain = (Vec<(ObjectId, LogNode)>, Option<EventError>);

/// One job's event log.
#[derive(Debug, Clone)]
pub struct EventLog {
    refs: RefStore,
    name: RefName,
}

impl EventLog {
    /// The log of `job` in `repo` (names validated).
    pub fn new(refs: RefStore, repo: &str, job: &str) -> Result<EventLog, EventError> {
        let name = RefName::new(RefKind::Events, repo, job)?;
        Ok(EventLog { refs, name })
    }

    /// The log under another ref (an archive).
    pub fn with_name(refs: RefStore, name: RefName) -> Result<EventLog, EventError> {
        Ok(EventLog { refs, name })
    }

    /// The log's ref name.
    pub fn name(&self) -> &RefName {
        &self.name
    }

    /// The ref store underneath.
    pub fn refs(&self) -> &RefStore {
        &self.refs
    }

    fn objects(&self) -> &ObjectStore {
        self.refs.objects()
    }

    /// Appends batches, all or nothing: every batch object is written durably first
    /// (outside the lock); then, under the ref's lock, one node per batch is chained onto
    /// whatever the head is and the ref moves once. Returns the new head, or `None` if
    /// there was nothing to append. When this returns, every record is durable.
    pub fn append(&self, batches: &[Batch]) -> Result<Option<ObjectId>, EventError> {
        let _gc = self.refs.write_guard()?;
        let batches: Vec<&Batch> = batches.iter().filter(|b| !b.is_empty()).collect();
        let mut staged = Vec::with_capacity(batches.len());
        if batches.len() == 1 {
            staged.push((batches[0], self.write_batch(batches[0])?));
        } else {
            // Many batch objects share one durability barrier.
            let mut group = self.objects().batch();
            for batch in batches {
                staged.push((batch, group.add(ObjectType::Batch, &batch.payload)?));
            }
            group.commit()?;
        }
        self.commit(&staged)
    }

    /// The first half of an append: stores a batch object durably (no lock taken).
    pub fn write_batch(&self, batch: &Batch) -> Result<ObjectId, EventError> {
        Ok(self.objects().write(ObjectType::Batch, &batch.payload)?)
    }

    /// The second half of an append: under the ref's lock, chains one node per stored
    /// batch onto the current head and moves the ref once. Returns the new head.
    pub fn commit(&self, staged: &[(&Batch, ObjectId)]) -> Result<Option<ObjectId>, EventError> {
        if staged.is_empty() {
            return Ok(None);
        }
        let batches: Vec<&Batch> = staged.iter().map(|(b, _)| *b).collect();
        let batch_ids: Vec<ObjectId> = staged.iter().map(|(_, id)| *id).collect();
        let count: u64 = batches.iter().map(|b| b.len()).sum();
        let message = format!("append {count} events");
        let (new, ()) =
            self.refs
                .transact_with::<_, EventError, _>(&self.name, &message, |old| {
                    Ok((Some(self.chain_nodes(old, &batches, &batch_ids)?), ()))
                })?;
        Ok(new)
    }

    /// Chains one node per stored batch onto `old` (no ref change); the new head.
    pub(crate) fn chain_after(
        &self,
        old: Option<ObjectId>,
        batches: &[&Batch],
        batch_ids: &[ObjectId],
    ) -> Result<Option<ObjectId>, EventError> {
        if batches.is_empty() {
            return Ok(old);
        }
        self.chain_nodes(old, batches, batch_ids).map(Some)
    }

    fn chain_nodes(
        &self,
        old: Option<ObjectId>,
        batches: &[&Batch],
        batch_ids: &[ObjectId],
    ) -> Result<ObjectId, EventError> {
        let (mut total, mut depth) = match old {
            Some(id) => {
                let node = self.node(&id)?;
                (node.total, node.depth)
            }
            None => (Summary::default(), 0),
        };
        let mut parent = old;
        for (batch, batch_id) in batches.iter().zip(batch_ids) {
            total.merge(&batch.summary);
            depth += 1;
            let node = LogNode {
                parent,
                batch: *batch_id,
                writer: batch.writer.clone().unwrap_or_default(),
                seq_first: batch.seq_first,
                seq_last: batch.seq_last,
                summary: batch.summary.clone(),
                agents: batch.agents.clone(),
                total: total.clone(),
                depth,
            };
            let json =
                serde_json::to_vec(&node).map_err(|e| EventError::BadRecord(e.to_string()))?;
            parent = Some(self.objects().write(ObjectType::Log, &json)?);
        }
        parent.ok_or_else(|| EventError::BadRecord("no batch to append".into()))
    }

    /// Reads one node.
    pub fn node(&self, id: &ObjectId) -> Result<LogNode, EventError> {
        let object = self.objects().read(id)?;
        if object.kind != ObjectType::Log {
            return Err(self.bad_node(id, format!("it is a {} object", object.kind)));
        }
        serde_json::from_slice(&object.payload).map_err(|e| self.bad_node(id, e.to_string()))
    }

    fn bad_node(&self, id: &ObjectId, reason: String) -> EventError {
        EventError::BadNode {
            name: self.name.clone(),
            id: *id,
            reason,
        }
    }

    /// The head and its node, if the log exists.
    pub fn head(&self) -> Result<Option<(ObjectId, LogNode)>, EventError> {
        let Some(id) = self.refs.read(&self.name)? else {
            return Ok(None);
        };
        let node = self.node(&id).map_err(|e| self.broken("log node", id, e))?;
        Ok(Some((id, node)))
    }

    fn broken(&self, what: &'static str, id: ObjectId, source: EventError) -> EventError {
        EventError::Broken {
            name: self.name.clone(),
            what,
            id,
            source: Box::new(source),
        }
    }

    /// The nodes from `head` back to (not including) `stop`, oldest first. A node that
    /// cannot be read ends the walk: with `best_effort` the nodes after it are returned
    /// with the error, else the error alone.
    pub fn nodes_between(
        &self,
        head: Option<ObjectId>,
        stop: Option<ObjectId>,
        best_effort: bool,
    ) -> Result<PartialChain, EventError> {
        self.walk(head, stop, best_effort, |id, node| (id, node))
    }

    /// Like [`Self::nodes_between`], keeping only the node ids.
    pub fn node_ids_between(
        &self,
        head: Option<ObjectId>,
        stop: Option<ObjectId>,
        best_effort: bool,
    ) -> Result<(Vec<ObjectId>, Option<EventError>), EventError> {
        self.walk(head, stop, best_effort, |id, _| id)
    }

    /// Walks the chain back from `head`, keeping `keep(id, node)` of each node, and returns
    /// what it kept oldest first.
    fn walk<T>(
        &self,
        head: Option<ObjectId>,
        stop: Option<ObjectId>,
        best_effort: bool,
        keep: impl Fn(ObjectId, LogNode) -> T,
    ) -> Result<(Vec<T>, Option<EventError>), EventError> {
        let mut kept = Vec::new();
        let mut next = head;
        let mut broken = None;
        while let Some(id) = next {
            if Some(id) == stop {
                break;
            }
            match self.node(&id) {
                Ok(node) => {
                    next = node.parent;
                    kept.push(keep(id, node));
                }
                Err(e) => {
                    let e = self.broken("log node", id, e);
                    if !best_effort {
                        return Err(e);
                    }
                    broken = Some(e);
                    break;
                }
            }
        }
        kept.reverse();
        Ok((kept, broken))
    }

    /// Every node, oldest first (errors on a broken chain).
    pub fn nodes(&self) -> Result<Vec<(ObjectId, LogNode)>, EventError> {
        let head = self.refs.read(&self.name)?;
        Ok(self.nodes_between(head, None, false)?.0)
    }

    /// The JSON Lines of one node's batch, verified.
    pub fn batch_lines(&self, node: &LogNode) -> Result<Vec<u8>, EventError> {
        let object = self
            .objects()
            .read(&node.batch)
            .map_err(|e| self.broken("batch", node.batch, e.into()))?;
        Ok(object.payload)
    }
}

/// One job with events, as listed from its head node only.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvents {
    /// The repo name.
    pub repo: String,
    /// The job id.
    pub job: String,
    /// Totals of the whole log.
    pub total: Summary,
    /// Number of batches.
    pub batches: u64,
}

/// Every job with an event log in `repo` (or in every repo), sorted by repo and job,
/// reading one node per job. A job whose head cannot be read does not hide the others: it
/// is returned among the errors.
pub fn list_jobs(
    refs: &RefStore,
    repo: Option<&str>,
) -> Result<(Vec<JobEvents>, Vec<EventError>), EventError> {
    let prefix = match repo {
        Some(repo) => format!("events/{repo}"),
        None => "events".to_owned(),
    };
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (name, _) in refs.list(Some(&prefix))? {
        let log = EventLog::new(refs.clone(), name.repo(), name.job())?;
        match log.head() {
            Ok(Some((_, node))) => jobs.push(JobEvents {
                repo: name.repo().to_owned(),
                job: name.job().to_owned(),
                total: node.total,
                batches: node.depth,
            }),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    Ok((jobs, errors))
}
