//! One chain of a job's event log on the store: `batch` objects (JSON Lines) chained by
//! `log` nodes under one ref — a writer's `events/<repo>/<job>/<writer>`, the job's own
//! `events/<repo>/<job>` (written before writers had refs of their own) or its archive
//! (DESIGN.md §6). [`super::job::EventLog`] reads a job's chains as one log.
//!
//! Each node summarises its batch (count, time range, per-type and per-agent counts,
//! durations) and carries the running totals of the whole chain, so listing jobs reads one
//! node per job and stats never open a batch.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{EventRecord, RecordInfo};
use crate::store::object::{ObjectBatch, ObjectError, ObjectId, ObjectStore, ObjectType};
use crate::store::refs::{RefError, RefName, RefStore};

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
    /// A record whose writer and seq the log already holds with other content.
    #[error(transparent)]
    Conflict(Box<RecordConflict>),
    /// A job with no event log.
    #[error("no events for job {job} in repo {repo}")]
    NoSuchJob {
        /// The repo name.
        repo: String,
        /// The job id.
        job: String,
    },
    /// A repository with no event log at all.
    #[error("no events in repo {repo}")]
    NoSuchRepo {
        /// The repo name.
        repo: String,
    },
}

impl crate::hint::Hint for EventError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            EventError::Ref(e) => e.hint(),
            EventError::Object(e) => e.hint(),
            EventError::Config(e) => e.hint(),
            EventError::Storage(e) => e.hint(),
            EventError::Broken { .. } => Some(crate::hint::DAMAGED),
            EventError::NoSuchJob { .. } | EventError::NoSuchRepo { .. } => Some(
                "`prodigy events ls` lists the jobs with events (`--all-repos` every repository's)",
            ),
            EventError::BadNode { .. }
            | EventError::BadRecord(_)
            | EventError::Output(_)
            | EventError::Conflict(_) => None,
        }
    }
}

/// A record under a writer and seq the log already holds with other content.
#[derive(Debug, thiserror::Error)]
#[error(
    "record {id} (writer {writer}, seq {seq}) differs from the record {stored} the log {name} already holds under that writer and seq; nothing was appended"
)]
pub struct RecordConflict {
    /// The ref.
    pub name: RefName,
    /// The writer.
    pub writer: String,
    /// The seq.
    pub seq: u64,
    /// The new record's id.
    pub id: String,
    /// The stored record's id.
    pub stored: String,
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

/// Sets `slot` to `text`, reusing the string already there.
fn set(slot: &mut Option<String>, text: &str) {
    match slot {
        Some(s) => {
            s.clear();
            s.push_str(text);
        }
        None => *slot = Some(text.to_owned()),
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
            set(&mut self.first_ts, r.timestamp);
        }
        if self.last_ts.as_deref().is_none_or(|l| r.timestamp > l) {
            // Most records move it: the string is rewritten in place.
            set(&mut self.last_ts, r.timestamp);
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
    /// Every writer of the chain up to here, as a Bloom filter: absent from a chain begun
    /// before it (until an idempotent append walks that chain whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writers: Option<WriterSet>,
    /// The highest seq of this node's writer in the chain up to here, when the append knew
    /// it (idempotent appends do; a chain rewrite may keep it too high, never too low).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_seq_max: Option<u64>,
    /// The objects the batch's records attach (Claude transcripts), in record order: named
    /// here so that whatever reaches the node reaches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attached: Vec<ObjectId>,
}

impl LogNode {
    /// The objects a stored node names — its parent, its batch and what its records
    /// attach — read from its payload
    /// (the reachability walk of gc, fsck and sync asks here; a test checks that every id
    /// a node holds is one of these).
    pub fn links(payload: &[u8]) -> Vec<ObjectId> {
        #[derive(Deserialize)]
        struct Links {
            parent: Option<ObjectId>,
            batch: ObjectId,
            #[serde(default)]
            attached: Vec<ObjectId>,
        }
        match serde_json::from_slice::<Links>(payload) {
            Ok(l) => l
                .parent
                .into_iter()
                .chain([l.batch])
                .chain(l.attached)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Which writers a chain holds: a Bloom filter of 1,024 bits with 3 probes per writer id,
/// stored in every node (256 hex digits). "No" is certain, so an idempotent append of a
/// new writer's records reads no other node; "maybe" (1.6% of the time for a new writer
/// among 50) means a walk of the chain's node headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSet([u8; WriterSet::BYTES]);

impl WriterSet {
    const BYTES: usize = 128;

    /// The empty set.
    pub fn new() -> WriterSet {
        WriterSet([0; Self::BYTES])
    }

    fn probes(writer: &str) -> [usize; 3] {
        let h = blake3::hash(writer.as_bytes());
        let b = h.as_bytes();
        let bits = Self::BYTES * 8;
        [0, 2, 4].map(|i| usize::from(u16::from_le_bytes([b[i], b[i + 1]])) % bits)
    }

    /// Adds a writer.
    pub fn insert(&mut self, writer: &str) {
        for bit in Self::probes(writer) {
            self.0[bit / 8] |= 1 << (bit % 8);
        }
    }

    /// False when the chain certainly holds no record of `writer`.
    pub fn may_hold(&self, writer: &str) -> bool {
        Self::probes(writer)
            .iter()
            .all(|bit| self.0[bit / 8] & (1 << (bit % 8)) != 0)
    }
}

impl Default for WriterSet {
    fn default() -> WriterSet {
        WriterSet::new()
    }
}

impl Serialize for WriterSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::fmt::Write;
        let mut hex = String::with_capacity(Self::BYTES * 2);
        for b in self.0 {
            let _ = write!(hex, "{b:02x}");
        }
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for WriterSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WriterSet, D::Error> {
        let hex = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("writers: not 256 hex digits");
        if hex.len() != Self::BYTES * 2 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut set = WriterSet::new();
        for (i, byte) in set.0.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(set)
    }
}

/// The line that starts at byte `start` of a batch's `payload` (without its newline).
pub fn line_in(payload: &[u8], start: usize) -> &[u8] {
    let rest = payload.get(start..).unwrap_or_default();
    let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
    &rest[..end]
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
    attached: Vec<ObjectId>,
    /// The id of the batch object, once asked for (cleared by every change).
    id: std::sync::OnceLock<ObjectId>,
    /// Its lines were dropped once its object was stored ([`Batch::release_lines`]).
    released: bool,
    /// The batch object's frame, when the storing side kept it
    /// ([`Batch::store_in_keeping_frame`]): a released batch's lines are read back from
    /// it before its group has committed.
    frame: std::sync::OnceLock<Vec<u8>>,
    /// Set once [`Batch::store_in`] (or `store_in_keeping_frame`) has added its object
    /// to a group: only then may it release its lines.
    stored: std::sync::OnceLock<()>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// An empty batch to fill after this one, with room for as much as this one holds and
    /// an eighth more: grown a doubling at a time, a batch was copied about once more.
    pub fn successor(&self) -> Batch {
        Batch {
            payload: Vec::with_capacity(self.bytes() + self.bytes() / 8),
            ..Batch::default()
        }
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
        self.push_written(info, |payload| {
            payload.extend_from_slice(json);
            Ok(())
        })
    }

    /// Adds the record described by `info`, which `write` serializes (as JSON, without a
    /// newline) at the end of the batch's lines: no copy of it is made. Refuses a record
    /// from another writer than the batch's first, or out of `seq` order; a failed write
    /// leaves the batch as it was.
    pub fn push_written(
        &mut self,
        info: &RecordInfo<'_>,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
    ) -> Result<(), EventError> {
        if self.released {
            return Err(EventError::BadRecord(format!(
                "record seq {} cannot join batch {}, whose lines were released",
                info.seq,
                self.id()
            )));
        }
        match &self.writer {
            None => {}
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
        // Whatever the write leaves when it fails, or panics, is cut off.
        struct Cut<'p> {
            payload: &'p mut Vec<u8>,
            start: usize,
            keep: bool,
        }
        impl Drop for Cut<'_> {
            fn drop(&mut self) {
                if !self.keep {
                    self.payload.truncate(self.start);
                }
            }
        }
        let start = self.payload.len();
        let mut cut = Cut {
            start,
            payload: &mut self.payload,
            keep: false,
        };
        write(cut.payload).map_err(|e| EventError::BadRecord(e.to_string()))?;
        if let Some(depth) = super::record::too_deep(&cut.payload[start..]) {
            return Err(EventError::BadRecord(format!(
                "record seq {} nests {depth} levels deep, and reads stop at {} (serde_json's limit)",
                info.seq,
                super::record::MAX_RECORD_DEPTH
            )));
        }
        cut.keep = true;
        drop(cut);
        self.payload.push(b'\n');
        if self.writer.is_none() {
            self.writer = Some(info.writer.to_owned());
            self.seq_first = info.seq;
        }
        self.seq_last = info.seq;
        self.forget_object();
        self.summary.add(info, (self.payload.len() - start) as u64);
        if let Some(agent) = info.agent_id {
            bump(&mut self.agents, agent, 1);
        }
        self.attached.extend(info.attachment);
        Ok(())
    }

    /// The line that starts at byte `start` of the batch (without its newline). Not for
    /// a batch whose lines were released.
    pub fn line_at(&self, start: usize) -> &[u8] {
        debug_assert!(!self.released, "a line of a released batch");
        line_in(&self.payload, start)
    }

    /// Appends a batch of later records from the same writer. Neither may have released
    /// its lines.
    pub fn extend(&mut self, newer: Batch) {
        assert!(
            !self.released && !newer.released,
            "a batch that released its lines was extended"
        );
        if newer.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = newer;
            return;
        }
        self.forget_object();
        self.payload.extend_from_slice(&newer.payload);
        self.summary.merge(&newer.summary);
        for (agent, n) in &newer.agents {
            bump(&mut self.agents, agent, *n);
        }
        self.attached.extend(newer.attached);
        self.seq_last = newer.seq_last;
    }

    /// The id of the batch object (hashed once, then remembered).
    pub fn id(&self) -> ObjectId {
        *self
            .id
            .get_or_init(|| ObjectId::hash(ObjectType::Batch, &self.payload))
    }

    /// Adds the batch object to `group` (see [`ObjectBatch::add_hashed`]); a batch whose
    /// lines were released, by its id ([`ObjectBatch::add_stored`]).
    pub fn store_in(&self, group: &mut ObjectBatch<'_>) -> Result<ObjectId, ObjectError> {
        self.store(group, false)
    }

    /// [`Self::store_in`], keeping a copy of the frame it compresses (see
    /// [`Self::lines`]).
    pub fn store_in_keeping_frame(
        &self,
        group: &mut ObjectBatch<'_>,
    ) -> Result<ObjectId, ObjectError> {
        self.store(group, true)
    }

    fn store(
        &self,
        group: &mut ObjectBatch<'_>,
        keep_frame: bool,
    ) -> Result<ObjectId, ObjectError> {
        if self.released {
            return group.add_stored(self.id());
        }
        let id = if keep_frame {
            let (id, frame) =
                group.add_hashed_keeping_frame(self.id(), ObjectType::Batch, &self.payload)?;
            if let Some(frame) = frame {
                let _ = self.frame.set(frame);
            }
            id
        } else {
            group.add_hashed(self.id(), ObjectType::Batch, &self.payload)?
        };
        let _ = self.stored.set(());
        Ok(id)
    }

    /// Forgets what was known of the batch object (its id, its kept frame, that a group
    /// took it): the lines changed.
    fn forget_object(&mut self) {
        self.id.take();
        self.frame.take();
        self.stored.take();
    }

    /// The batch's lines: its own, or once released, decoded (and verified) from the
    /// frame it kept, or read from its object in `objects`.
    pub fn lines(&self, objects: &ObjectStore) -> Result<Cow<'_, [u8]>, ObjectError> {
        if !self.released {
            return Ok(Cow::Borrowed(&self.payload));
        }
        let id = self.id();
        let object = match self.frame.get() {
            Some(frame) => {
                crate::store::object::decode(&id, std::path::Path::new("a batch frame"), frame)?
            }
            None => objects.read(&id)?,
        };
        Ok(Cow::Owned(object.payload))
    }

    /// Drops the batch's lines, keeping its id and everything its log node says (and its
    /// frame, if it kept one). For a batch whose object a group already holds: once
    /// that group has committed, [`Self::store_in`] only checks that the object is
    /// there; before, [`Self::lines`] decodes the kept frame. `events append` releases
    /// each batch its storing thread has compressed, so that an append of many batches
    /// holds their frames, not their lines.
    ///
    /// Returns false, and keeps the lines, for a batch no group has taken
    /// ([`Self::store_in`]): a storing side that failed before it.
    pub fn release_lines(&mut self) -> bool {
        if self.stored.get().is_none() {
            return false;
        }
        self.id();
        self.payload = Vec::new();
        self.released = true;
        true
    }

    /// True once [`Self::release_lines`] has dropped the lines.
    pub fn is_released(&self) -> bool {
        self.released
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

/// What [`Chain::append_idempotent`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Records added to the log.
    pub added: u64,
    /// Records skipped: the log already holds the same record (writer, seq, content).
    pub skipped: u64,
}

/// What an idempotent append learnt from the chain's headers.
#[derive(Debug, Default)]
struct Known {
    /// The stored seq ranges that may hold an incoming record, per writer.
    ranges: BTreeMap<String, Vec<Stored>>,
    /// The highest stored seq of each checked writer (0 when none), for the new nodes.
    maxima: BTreeMap<String, u64>,
    /// The chain's writers, when a chain without a [`WriterSet`] was walked whole.
    writers: Option<WriterSet>,
}

/// True when `first..=last` (empty when `last < first`) lies within the union of `ranges`.
fn covered(ranges: &[Stored], first: u64, last: u64) -> bool {
    let mut sorted: Vec<(u64, u64)> = ranges.iter().map(|r| (r.first, r.last)).collect();
    sorted.sort_unstable();
    let mut from = first;
    for (a, b) in sorted {
        if from > last {
            break;
        }
        if a <= from && from <= b {
            from = b.saturating_add(1);
            if b == u64::MAX {
                return true;
            }
        }
    }
    from > last
}

/// A seq range of one writer stored in the chain, and its batch.
#[derive(Debug, Clone, Copy)]
struct Stored {
    first: u64,
    last: u64,
    batch: ObjectId,
}

/// Nodes read from a chain, oldest first, and the error that ended the walk early (only
/// with `best_effort`).
pub type PartialChain = (Vec<(ObjectId, LogNode)>, Option<EventError>);

/// One chain of log nodes under one ref.
#[derive(Debug, Clone)]
pub struct Chain {
    refs: RefStore,
    name: RefName,
}

impl Chain {
    /// The chain under `name`.
    pub fn new(refs: RefStore, name: RefName) -> Chain {
        Chain { refs, name }
    }

    /// The chain's ref name.
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
    pub fn append<B: Borrow<Batch>>(&self, batches: &[B]) -> Result<Option<ObjectId>, EventError> {
        let _gc = self.refs.write_guard()?;
        let batches = non_empty(batches);
        let mut staged = Vec::with_capacity(batches.len());
        if batches.len() == 1 {
            staged.push((batches[0], self.write_batch(batches[0])?));
        } else {
            // Many batch objects share one durability barrier (or one pack), with their
            // nodes.
            let mut group = self.objects().batch().packed();
            for batch in batches {
                staged.push((batch, batch.store_in(&mut group)?));
            }
            return self.commit_group(&staged, group);
        }
        self.commit(&staged)
    }

    /// Appends records whose identity the caller was given (full records from outside):
    /// idempotent by identity. A record's identity is its `writer` and `seq` (each writer
    /// counts its records up; its `id` names the pair). Under the lock, the chain's node
    /// headers say which seqs of each writer are already stored; only a batch overlapping
    /// them is opened, record by record. A stored copy equal to the new one is skipped and
    /// counted; a different one is refused and nothing is appended. Batches whose writer is
    /// `fresh` (an id made for this call) are not checked.
    pub fn append_idempotent<B: Borrow<Batch>>(
        &self,
        batches: &[B],
        fresh: &str,
    ) -> Result<Appended, EventError> {
        let _gc = self.refs.write_guard()?;
        let batches = non_empty(batches);
        let mut group = self.objects().batch().packed();
        let mut staged = Vec::with_capacity(batches.len());
        for batch in &batches {
            staged.push(batch.store_in(&mut group)?);
        }
        group.commit()?;
        let checked: Vec<&str> = batches
            .iter()
            .filter_map(|b| b.writer())
            .filter(|w| *w != fresh)
            .collect();
        let count: u64 = batches.iter().map(|b| b.len()).sum();
        let message = format!("append {count} events");
        let (_, appended) =
            self.refs
                .transact_with::<_, EventError, _>(&self.name, &message, |old| {
                    let mut known = self.known_seqs(old, &batches, &checked)?;
                    let mut kept: Vec<Cow<'_, Batch>> = Vec::new();
                    let mut kept_ids = Vec::new();
                    let mut appended = Appended::default();
                    let mut opened = BTreeMap::new();
                    for (batch, id) in batches.iter().zip(&staged) {
                        let writer = batch.writer().unwrap_or_default();
                        let ranges = known.ranges.get(writer).map(Vec::as_slice).unwrap_or(&[]);
                        if !ranges
                            .iter()
                            .any(|r| r.first <= batch.seq_last && batch.seq_first <= r.last)
                        {
                            appended.added += batch.len();
                            kept.push(Cow::Borrowed(*batch));
                            kept_ids.push(*id);
                            continue;
                        }
                        let rest =
                            self.without_stored(batch, ranges, &mut opened, &mut appended)?;
                        if !rest.is_empty() {
                            kept_ids.push(self.write_batch(&rest)?);
                            kept.push(Cow::Owned(rest));
                        }
                    }
                    if kept.is_empty() {
                        return Ok((old, appended));
                    }
                    let kept: Vec<&Batch> = kept.iter().map(|b| b.as_ref()).collect();
                    let head = self.chain_known(old, &kept, &kept_ids, &mut known, None)?;
                    Ok((Some(head), appended))
                })?;
        Ok(appended)
    }

    /// `batches` without the records this chain (from `head`) already stores, and how
    /// many were skipped; a stored record with other content is refused. Reads only.
    pub(crate) fn unstored<'b>(
        &self,
        head: ObjectId,
        batches: &[&'b Batch],
        fresh: &str,
    ) -> Result<(Vec<Cow<'b, Batch>>, u64), EventError> {
        let batches: Vec<&'b Batch> = batches.iter().copied().filter(|b| !b.is_empty()).collect();
        let checked: Vec<&str> = batches
            .iter()
            .filter_map(|b| b.writer())
            .filter(|w| *w != fresh)
            .collect();
        let known = self.known_seqs(Some(head), &batches, &checked)?;
        let mut out = Vec::new();
        let mut appended = Appended::default();
        let mut opened = BTreeMap::new();
        for batch in batches {
            let writer = batch.writer().unwrap_or_default();
            let ranges = known.ranges.get(writer).map(Vec::as_slice).unwrap_or(&[]);
            if !ranges
                .iter()
                .any(|r| r.first <= batch.seq_last && batch.seq_first <= r.last)
            {
                out.push(Cow::Borrowed(batch));
                continue;
            }
            let rest = self.without_stored(batch, ranges, &mut opened, &mut appended)?;
            if !rest.is_empty() {
                out.push(Cow::Owned(rest));
            }
        }
        Ok((out, appended.skipped))
    }

    /// What the chain from `head` stores of the writers of `batches` named in `checked`,
    /// from node headers alone, reading as few as it can: none for a writer the head's
    /// [`WriterSet`] has never seen; back to the writer's latest node when every record
    /// is newer than its `writer_seq_max`; back to the nodes holding the records' seqs
    /// otherwise (a retry); the whole chain only when the headers cannot tell.
    fn known_seqs(
        &self,
        head: Option<ObjectId>,
        batches: &[&Batch],
        checked: &[&str],
    ) -> Result<Known, EventError> {
        let mut known = Known::default();
        let Some(head_id) = head else {
            for w in checked {
                known.maxima.insert((*w).to_owned(), 0);
            }
            return Ok(known);
        };
        let head_node = self
            .node(&head_id)
            .map_err(|e| self.broken("log node", head_id, e))?;
        // Each writer still to be placed, with the seq ranges of its incoming batches.
        let mut pending: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        for b in batches {
            let Some(w) = b.writer().filter(|w| checked.contains(w)) else {
                continue;
            };
            if head_node
                .writers
                .as_ref()
                .is_some_and(|set| !set.may_hold(w))
            {
                known.maxima.insert(w.to_owned(), 0);
                continue;
            }
            pending
                .entry(w)
                .or_default()
                .push((b.seq_first, b.seq_last));
        }
        let mut all = WriterSet::new();
        let mut bounds: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        let mut next = Some((head_id, head_node));
        while let Some((_, node)) = next.take() {
            all.insert(&node.writer);
            if let Some((w, incoming)) = pending.get_key_value(node.writer.as_str()) {
                let w = *w;
                let ranges = known.ranges.entry(w.to_owned()).or_default();
                ranges.push(Stored {
                    first: node.seq_first,
                    last: node.seq_last,
                    batch: node.batch,
                });
                // The latest node of the writer bounds its seqs, if it says so.
                let bound = *bounds.entry(w).or_insert(node.writer_seq_max);
                if let Some(max) = bound
                    && incoming
                        .iter()
                        .all(|&(first, last)| first > max || covered(ranges, first, last.min(max)))
                {
                    known.maxima.insert(w.to_owned(), max);
                    pending.remove(w);
                }
            }
            if pending.is_empty() {
                break;
            }
            next = match node.parent {
                Some(p) => Some((p, self.node(&p).map_err(|e| self.broken("log node", p, e))?)),
                None => {
                    // The whole chain was walked: every writer is known.
                    known.writers = Some(std::mem::take(&mut all));
                    None
                }
            };
        }
        for (w, _) in pending {
            let max = known
                .ranges
                .get(w)
                .into_iter()
                .flatten()
                .map(|r| r.last)
                .max();
            known.maxima.insert(w.to_owned(), max.unwrap_or(0));
        }
        Ok(known)
    }

    /// The records of a stored batch, by seq.
    fn records_by_seq(&self, batch: &ObjectId) -> Result<BTreeMap<u64, EventRecord>, EventError> {
        let object = self
            .objects()
            .read(batch)
            .map_err(|e| self.broken("batch", *batch, e.into()))?;
        let mut records = BTreeMap::new();
        for line in object
            .payload
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            if let Ok(r) = serde_json::from_slice::<EventRecord>(line) {
                records.insert(r.seq, r);
            }
        }
        Ok(records)
    }

    /// `batch` without the records the log already stores (`ranges`, batches read once
    /// into `opened`); refuses a record whose stored copy differs.
    fn without_stored(
        &self,
        batch: &Batch,
        ranges: &[Stored],
        opened: &mut BTreeMap<ObjectId, BTreeMap<u64, EventRecord>>,
        appended: &mut Appended,
    ) -> Result<Batch, EventError> {
        let mut rest = Batch::new();
        let payload = batch
            .lines(self.objects())
            .map_err(|e| self.broken("batch", batch.id(), e.into()))?;
        for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record: EventRecord = serde_json::from_slice(line)
                .map_err(|e| EventError::BadRecord(format!("a record of this append: {e}")))?;
            let in_range: Vec<&Stored> = ranges
                .iter()
                .filter(|r| r.first <= record.seq && record.seq <= r.last)
                .collect();
            for range in &in_range {
                if let std::collections::btree_map::Entry::Vacant(v) = opened.entry(range.batch) {
                    v.insert(self.records_by_seq(&range.batch)?);
                }
            }
            let stored = in_range
                .iter()
                .find_map(|r| opened.get(&r.batch).and_then(|rs| rs.get(&record.seq)));
            match stored {
                Some(stored) if *stored == record => appended.skipped += 1,
                Some(stored) => {
                    return Err(EventError::Conflict(Box::new(RecordConflict {
                        name: self.name.clone(),
                        writer: record.writer,
                        seq: record.seq,
                        id: record.id,
                        stored: stored.id.clone(),
                    })));
                }
                // Not stored (no node's range holds it, or the batches in range skip its
                // seq: a gap the writer left, which the record fills).
                None => {
                    rest.push_encoded(line, &record.info())?;
                    appended.added += 1;
                }
            }
        }
        Ok(rest)
    }

    /// The first half of an append: stores a batch object durably (no lock taken).
    pub fn write_batch(&self, batch: &Batch) -> Result<ObjectId, EventError> {
        if batch.released {
            let mut group = self.objects().batch();
            return Ok(batch.store_in(&mut group)?);
        }
        Ok(self.objects().write(ObjectType::Batch, &batch.payload)?)
    }

    /// The second half of an append: under the ref's lock, chains one node per stored
    /// batch onto the current head and moves the ref once. Returns the new head.
    pub fn commit(&self, staged: &[(&Batch, ObjectId)]) -> Result<Option<ObjectId>, EventError> {
        self.commit_with(staged, None)
    }

    /// [`Self::commit`] of batches whose objects wait, not yet durable, in `group`: the
    /// nodes join the group under the ref's lock, one barrier makes objects and nodes
    /// durable, and then the ref moves.
    pub fn commit_group(
        &self,
        staged: &[(&Batch, ObjectId)],
        group: ObjectBatch<'_>,
    ) -> Result<Option<ObjectId>, EventError> {
        self.commit_with(staged, Some(group))
    }

    fn commit_with(
        &self,
        staged: &[(&Batch, ObjectId)],
        mut group: Option<ObjectBatch<'_>>,
    ) -> Result<Option<ObjectId>, EventError> {
        if staged.is_empty() {
            return Ok(None);
        }
        let batches: Vec<&Batch> = staged.iter().map(|(b, _)| *b).collect();
        let batch_ids: Vec<ObjectId> = staged.iter().map(|(_, id)| *id).collect();
        let count: u64 = batches.iter().map(|b| b.len()).sum();
        let message = format!("append {count} events");
        // A remote store may decide again (another writer moved the ref first): the
        // group's objects were made durable by the first decision.
        let (new, ()) =
            self.refs
                .transact_with::<_, EventError, _>(&self.name, &message, |old| {
                    let head = self.chain_known(
                        old,
                        &batches,
                        &batch_ids,
                        &mut Known::default(),
                        group.take(),
                    )?;
                    Ok((Some(head), ()))
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
        self.chain_known(old, batches, batch_ids, &mut Known::default(), None)
            .map(Some)
    }

    /// One node per stored batch chained onto `old`, with what an idempotent append
    /// learnt (`known`: the highest seq of each writer it checked, and the chain's
    /// writers when it walked the chain whole); nodes and the objects of `group` made
    /// durable. The new head.
    fn chain_known(
        &self,
        old: Option<ObjectId>,
        batches: &[&Batch],
        batch_ids: &[ObjectId],
        known: &mut Known,
        group: Option<ObjectBatch<'_>>,
    ) -> Result<ObjectId, EventError> {
        let (mut total, mut depth, mut writers) = match old {
            Some(id) => {
                let node = self.node(&id)?;
                (node.total, node.depth, node.writers)
            }
            None => (Summary::default(), 0, Some(WriterSet::new())),
        };
        if writers.is_none() {
            writers = known.writers.take();
        }
        let mut parent = old;
        // Many nodes share one durability barrier (with the objects of `group`, if given),
        // or one pack when there are enough of them; one node alone is written and synced
        // alone.
        let mut group =
            group.or_else(|| (batches.len() > 1).then(|| self.objects().batch().packed()));
        for (batch, batch_id) in batches.iter().zip(batch_ids) {
            // A node never names a missing object: what a record attaches is stored first.
            for id in &batch.attached {
                if !self.objects().contains(id)? {
                    return Err(EventError::BadRecord(format!(
                        "a record's {} names object {id}, which is not stored",
                        super::record::ATTACHMENT_FIELDS.join(" or ")
                    )));
                }
            }
            total.merge(&batch.summary);
            depth += 1;
            let writer = batch.writer.clone().unwrap_or_default();
            if let Some(set) = &mut writers {
                set.insert(&writer);
            }
            let writer_seq_max = known.maxima.get_mut(&writer).map(|max| {
                *max = (*max).max(batch.seq_last);
                *max
            });
            let node = LogNode {
                parent,
                batch: *batch_id,
                writer,
                seq_first: batch.seq_first,
                seq_last: batch.seq_last,
                summary: batch.summary.clone(),
                agents: batch.agents.clone(),
                total: total.clone(),
                depth,
                writers: writers.clone(),
                writer_seq_max,
                attached: batch.attached.clone(),
            };
            let json =
                serde_json::to_vec(&node).map_err(|e| EventError::BadRecord(e.to_string()))?;
            parent = Some(match &mut group {
                Some(group) => group.add(ObjectType::Log, &json)?,
                None => self.objects().write(ObjectType::Log, &json)?,
            });
        }
        if let Some(group) = group {
            group.commit()?;
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

    pub(crate) fn broken(
        &self,
        what: &'static str,
        id: ObjectId,
        source: EventError,
    ) -> EventError {
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

/// The batches that hold records, borrowed.
fn non_empty<B: Borrow<Batch>>(batches: &[B]) -> Vec<&Batch> {
    batches
        .iter()
        .map(Borrow::borrow)
        .filter(|b| !b.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successor_is_empty_with_room_for_its_predecessor() {
        let mut batch = Batch::new();
        let info = RecordInfo {
            timestamp: "2026-12-07T00:00:00.000000Z",
            event_type: "plain",
            agent_id: None,
            duration_ms: None,
            writer: "w",
            seq: 0,
            attachment: None,
        };
        batch.push_encoded(&[b'x'; 10_000], &info).unwrap();
        let next = batch.successor();
        assert!(next.is_empty() && next.bytes() == 0);
        assert!(
            next.payload.capacity() >= batch.bytes(),
            "{}",
            next.payload.capacity()
        );
    }
    use crate::events::record::EventRecord;
    use crate::lock::LockOptions;

    fn record(writer: &str, seq: u64) -> EventRecord {
        EventRecord {
            v: 1,
            id: format!("{writer}-{seq}"),
            timestamp: "2026-01-01T00:00:00.000000Z".into(),
            writer: writer.into(),
            seq,
            correlation_id: None,
            event: serde_json::json!({"event_type": "agent_started"}),
            metadata: Default::default(),
        }
    }

    /// How many records each node of the chain holds, oldest first.
    fn node_counts(log: &Chain) -> Vec<u64> {
        let nodes = log.nodes().unwrap();
        nodes.iter().map(|(_, n)| n.summary.count).collect()
    }

    fn batch(writer: &str, seqs: std::ops::Range<u64>) -> Batch {
        let mut b = Batch::new();
        for seq in seqs {
            b.push(&record(writer, seq)).unwrap();
        }
        b
    }

    #[test]
    fn a_record_written_into_a_batch_leaves_nothing_when_its_write_fails() {
        let mut b = batch("w", 0..2);
        let before = (b.payload.clone(), b.len(), b.id());
        let next = record("w", 2);
        let failed = b.push_written(&next.info(), |line| {
            line.extend_from_slice(b"{\"half\":");
            Err(serde_json::from_str::<u8>("x").unwrap_err())
        });
        assert!(failed.is_err());
        assert_eq!((b.payload.clone(), b.len(), b.id()), before);
        // A write that panics leaves nothing either.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.push_written(&next.info(), |line| {
                line.extend_from_slice(b"{\"half\":");
                panic!("the serializer panicked")
            })
        }));
        assert!(panicked.is_err());
        assert_eq!((b.payload.clone(), b.len(), b.id()), before);
        // Into an empty batch: still empty, and without a writer.
        let mut empty = Batch::new();
        let failed = empty.push_written(&next.info(), |_| {
            Err(serde_json::from_str::<u8>("x").unwrap_err())
        });
        assert!(failed.is_err() && empty.is_empty() && empty.writer().is_none());
        // Another writer's record is refused before anything is written.
        let other = record("v", 3);
        let refused = b.push_written(&other.info(), |_| panic!("written"));
        assert!(refused.is_err());
        b.push_written(&next.info(), |line| serde_json::to_writer(line, &next))
            .unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.seq_last(), 2);
        assert_eq!(b.id(), batch("w", 0..3).id());
    }

    /// A node with every field filled names exactly the ids it holds: a new field holding
    /// an id must be declared in [`LogNode::links`], or gc would drop what it names.
    #[test]
    fn a_node_declares_every_id_it_holds() {
        let id = |n: u8| ObjectId::from_bytes([n; 32]);
        let mut writers = WriterSet::new();
        writers.insert("w");
        let node = LogNode {
            parent: Some(id(1)),
            batch: id(2),
            writer: "w".into(),
            seq_first: 0,
            seq_last: 1,
            summary: Summary::default(),
            agents: BTreeMap::from([("a".to_owned(), 1)]),
            total: Summary::default(),
            depth: 1,
            writers: Some(writers),
            writer_seq_max: Some(1),
            attached: vec![id(3), id(4)],
        };
        let json = serde_json::to_vec(&node).unwrap();
        let mut held = Vec::new();
        crate::reach::ids_in(&serde_json::from_slice(&json).unwrap(), &mut held);
        let mut declared = LogNode::links(&json);
        held.sort();
        declared.sort();
        assert_eq!(held, declared);
        assert_eq!(declared.len(), 4);
    }

    #[test]
    fn a_writer_set_holds_what_was_added_and_little_else() {
        let mut set = WriterSet::new();
        for i in 0..50 {
            set.insert(&format!("writer-{i}"));
        }
        assert!((0..50).all(|i| set.may_hold(&format!("writer-{i}"))));
        let false_hits = (0..10_000)
            .filter(|i| set.may_hold(&format!("other-{i}")))
            .count();
        // 1,024 bits, 3 probes, 50 writers: 1.6% expected.
        assert!(false_hits < 400, "{false_hits} false hits in 10,000");
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json.len(), 256 + 2);
        assert_eq!(serde_json::from_str::<WriterSet>(&json).unwrap(), set);
        assert!(serde_json::from_str::<WriterSet>("\"00\"").is_err());
    }

    #[test]
    fn coverage_of_seq_ranges() {
        let s = |first, last| Stored {
            first,
            last,
            batch: ObjectId::from_bytes([0; 32]),
        };
        let ranges = [s(5, 9), s(0, 2), s(3, 4)];
        assert!(covered(&ranges, 0, 9));
        assert!(covered(&ranges, 4, 6));
        assert!(!covered(&ranges, 8, 10));
        assert!(!covered(&[s(0, 2), s(4, 5)], 0, 5));
        // An empty range is covered.
        assert!(covered(&[], 3, 2));
    }

    /// A chain begun before node headers had writer sets is walked whole once; its next
    /// node has the set, so a new writer after it is certain at the head.
    #[test]
    fn an_old_chain_gains_its_writer_set_on_the_first_walk() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::at(dir.path()).unwrap();
        let refs = RefStore::new(&home, LockOptions::default());
        let log = Chain::new(
            refs,
            RefName::new(crate::store::refs::RefKind::Events, "r", "j").unwrap(),
        );
        log.append(&[batch("old", 0..3)]).unwrap();
        // Make the chain look old: rewrite its one node without the new fields.
        let (_, mut node) = log.head().unwrap().unwrap();
        node.writers = None;
        node.writer_seq_max = None;
        let json = serde_json::to_vec(&node).unwrap();
        let id = log.objects().write(ObjectType::Log, &json).unwrap();
        log.refs()
            .transact(log.name(), "old", |_| Ok(Some(id)))
            .unwrap();

        let done = log
            .append_idempotent(&[batch("old", 1..5)], "fresh")
            .unwrap();
        assert_eq!(
            done,
            Appended {
                added: 2,
                skipped: 2
            }
        );
        let (_, head) = log.head().unwrap().unwrap();
        let set = head.writers.expect("the walk made the set");
        assert!(set.may_hold("old"));
        assert_eq!(head.writer_seq_max, Some(4));
        let done = log
            .append_idempotent(&[batch("new", 0..2)], "fresh")
            .unwrap();
        assert_eq!(
            done,
            Appended {
                added: 2,
                skipped: 0
            }
        );
        let (_, head) = log.head().unwrap().unwrap();
        assert!(head.writers.unwrap().may_hold("new"));
        assert_eq!(head.writer_seq_max, Some(1));
        assert_eq!(node_counts(&log), [3, 2, 2]);
    }

    /// A batch that released its lines is appended by its id and node alone; a retry
    /// that overlaps stored records reads its lines back from its object; one whose
    /// object is not stored is refused, and it takes no more records.
    #[test]
    fn a_released_batch_is_appended_from_its_object() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::at(dir.path()).unwrap();
        let log = Chain::new(
            RefStore::new(&home, LockOptions::default()),
            RefName::new(crate::store::refs::RefKind::Events, "r", "j").unwrap(),
        );
        let released = |b: Batch| {
            let mut group = log.objects().batch();
            b.store_in(&mut group).unwrap();
            group.commit().unwrap();
            let (id, count) = (b.id(), b.len());
            let mut b = b;
            assert!(b.release_lines());
            assert!(b.is_released() && b.bytes() == 0);
            assert_eq!((b.id(), b.len()), (id, count));
            b
        };
        let first = released(batch("fresh", 0..3));
        let done = log.append_idempotent(&[&first], "fresh").unwrap();
        assert_eq!(done.added, 3);
        // A retry of writer w's records 1..5 after 0..3 are stored: 1 and 2 skipped,
        // 3 and 4 appended, their lines read from the released batch's object.
        log.append_idempotent(&[batch("w", 0..3)], "fresh").unwrap();
        let retry = released(batch("w", 1..5));
        let done = log.append_idempotent(&[&retry], "fresh").unwrap();
        assert_eq!(
            done,
            Appended {
                added: 2,
                skipped: 2
            }
        );
        assert_eq!(node_counts(&log), [3, 3, 2]);

        // Before its group commits, a released batch's lines come from its kept frame.
        let kept = batch("w", 5..8);
        let want = kept.payload.clone();
        let mut group = log.objects().batch().packed();
        kept.store_in_keeping_frame(&mut group).unwrap();
        let mut kept = kept;
        assert!(kept.release_lines());
        assert_eq!(kept.lines(log.objects()).unwrap().as_ref(), want.as_slice());
        drop(group);

        // A batch no group took keeps its lines; one whose group never committed is
        // refused at the append.
        let mut unstored = batch("fresh", 3..5);
        assert!(!unstored.release_lines() && !unstored.is_released());
        unstored.store_in(&mut log.objects().batch()).unwrap();
        assert!(unstored.release_lines());
        let err = log.append_idempotent(&[&unstored], "fresh").unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        assert!(unstored.push(&record("fresh", 5)).is_err());
    }
}
