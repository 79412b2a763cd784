//! The dead-letter queue (DESIGN.md §7): one `item` object per dead-lettered item, and a
//! `dlq` snapshot per change mapping item ids to them, under `dlq/<repo>/<job>`.
//!
//! A snapshot is a root `dlq` object naming up to 256 shard `dlq` objects (like a git
//! tree), so a change rewrites one shard and the root whatever the queue's size. Shards
//! also carry each item's summary (type, count, times, signature, flags), so listing,
//! stats and analysis never open the items.

pub mod classify;
pub mod filter;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use classify::{ErrorType, classify, normalize_message, signature};
pub use filter::{FilterError, ItemFilter};

use crate::events::record::now_timestamp;
use crate::lock::LockOptions;
use crate::store::object::{ObjectError, ObjectId, ObjectType};
use crate::store::refs::{RefError, RefKind, RefName, RefStore};

/// Failures after which an item is no longer eligible for automatic reprocessing.
pub const MAX_REPROCESS_FAILURES: u32 = 5;

/// Failures after which an item needs a person, whatever its error type.
pub const MANUAL_REVIEW_FAILURES: u32 = 3;

/// Failures of the dead-letter queue.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// A ref-layer failure.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// An object-layer failure.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The default home could not be chosen.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A snapshot or item object that is not what it should be.
    #[error("{what} {id} of {name} is malformed: {reason}")]
    Malformed {
        /// "snapshot" or "item".
        what: &'static str,
        /// The ref's name.
        name: String,
        /// The object.
        id: ObjectId,
        /// What is wrong.
        reason: String,
    },
    /// An item that is not in the queue.
    #[error("no item {item:?} in the dead-letter queue of job {job}")]
    NoSuchItem {
        /// The job.
        job: String,
        /// The item id.
        item: String,
    },
    /// A bad argument (an empty item id, a timestamp that does not parse).
    #[error("{0}")]
    Invalid(String),
}

impl crate::hint::Hint for DlqError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            DlqError::Ref(e) => e.hint(),
            DlqError::Object(e) => e.hint(),
            DlqError::Storage(e) => e.hint(),
            DlqError::NoSuchItem { .. } => {
                Some("`prodigy dlq list <job>` lists the ids of its dead-lettered items")
            }
            DlqError::Malformed { .. } | DlqError::Invalid(_) => None,
        }
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureDetail {
    /// 1, 2, 3, … per item.
    pub attempt: u32,
    /// When it failed (RFC 3339, UTC, microseconds).
    pub timestamp: String,
    /// Its class.
    pub error_type: ErrorType,
    /// The error as reported.
    pub error_message: String,
    /// The failing command's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The agent that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The step that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// How long the attempt ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Where its logs are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_location: Option<String>,
    /// A stack trace, when the writer recorded one (the original tool did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_trace: Option<String>,
}

/// A dead-lettered item with its whole failure history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetteredItem {
    /// The work item's id.
    pub item_id: String,
    /// The work item as given to the agent.
    pub item_data: Value,
    /// When it first failed.
    pub first_attempt: String,
    /// When it last failed.
    pub last_attempt: String,
    /// How many times it failed (the history's length).
    pub failure_count: u32,
    /// Every failure, oldest first.
    pub failure_history: Vec<FailureDetail>,
    /// The last failure's signature.
    pub error_signature: String,
    /// What the agent's worktree held (path, branch, uncommitted changes, logs).
    #[serde(default)]
    pub worktree_artifacts: Option<Value>,
    /// Whether `dlq retry` may run it again (see [`eligibility`]).
    pub reprocess_eligible: bool,
    /// Whether a person should look at it (see [`eligibility`]).
    pub manual_review_required: bool,
}

/// A new failure of an item, as reported by a runner or `prodigy dlq add`.
#[derive(Debug, Clone, Default)]
pub struct Failure {
    /// The error.
    pub error_message: String,
    /// Its class; classified from the message and exit code when `None`.
    pub error_type: Option<ErrorType>,
    /// The exit code.
    pub exit_code: Option<i32>,
    /// The agent.
    pub agent_id: Option<String>,
    /// The step.
    pub step: Option<String>,
    /// How long the attempt ran.
    pub duration_ms: Option<u64>,
    /// Where its logs are.
    pub log_location: Option<String>,
    /// When it failed (default: now).
    pub timestamp: Option<String>,
    /// What the worktree held; replaces the item's artifacts when given.
    pub worktree_artifacts: Option<Value>,
}

/// The rules: an item needs a person when its last error is a merge conflict or a
/// validation failure, or it has failed [`MANUAL_REVIEW_FAILURES`] times; it is eligible for
/// reprocessing unless its last error needs a person or it has failed
/// [`MAX_REPROCESS_FAILURES`] times.
pub fn eligibility(error_type: &ErrorType, failure_count: u32) -> (bool, bool) {
    let eligible = !error_type.needs_a_person() && failure_count < MAX_REPROCESS_FAILURES;
    let manual = error_type.needs_a_person() || failure_count >= MANUAL_REVIEW_FAILURES;
    (eligible, manual)
}

/// What a snapshot says of one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemSummary {
    /// The item object.
    pub object: ObjectId,
    /// Failures so far.
    pub failure_count: u32,
    /// The last failure's class.
    pub error_type: ErrorType,
    /// First failure.
    pub first_attempt: String,
    /// Last failure.
    pub last_attempt: String,
    /// The last failure's signature.
    pub error_signature: String,
    /// See [`eligibility`].
    pub reprocess_eligible: bool,
    /// See [`eligibility`].
    pub manual_review_required: bool,
    /// The item's readable name ([`readable_name`]); absent in snapshots written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What a person calls an item: its own `id` (or `name`, `title`, `path`, `file`), else
/// its first field's value, else the item itself when it is text or a number; at most 60
/// characters.
pub fn readable_name(data: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let found = match data {
        Value::Object(m) => ["id", "name", "title", "path", "file"]
            .iter()
            .find_map(|k| m.get(*k).and_then(text))
            .or_else(|| m.values().next().and_then(text)),
        other => text(other),
    }?;
    let one_line: String = found.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(match one_line.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    })
}

impl ItemSummary {
    fn of(object: ObjectId, item: &DeadLetteredItem) -> ItemSummary {
        let error_type = item
            .failure_history
            .last()
            .map_or(ErrorType::Unknown, |f| f.error_type);
        ItemSummary {
            object,
            failure_count: item.failure_count,
            error_type,
            first_attempt: item.first_attempt.clone(),
            last_attempt: item.last_attempt.clone(),
            error_signature: item.error_signature.clone(),
            reprocess_eligible: item.reprocess_eligible,
            manual_review_required: item.manual_review_required,
            name: readable_name(&item.item_data),
        }
    }
}

/// A queue's content as read: every item with its summary (assembled from a snapshot's
/// shards).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot before this one.
    pub parent: Option<ObjectId>,
    /// Item id → its object and summary.
    pub items: BTreeMap<String, ItemSummary>,
}

/// The root `dlq` object of a snapshot: its parent, and the shard holding each range of
/// item ids (256 shards keyed by the first byte of blake3(item id), like a git tree), so a
/// change rewrites one shard and the root whatever the queue's size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Root {
    parent: Option<ObjectId>,
    items: u64,
    shards: BTreeMap<String, ObjectId>,
}

/// A shard `dlq` object: the summaries of the items whose key falls in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Shard {
    shard: String,
    items: BTreeMap<String, ItemSummary>,
}

/// The objects a stored `dlq` object names, read from its payload for the reachability
/// walk: a root's parent and shards, a shard's items' objects (a test checks that both
/// declare every id they hold).
pub fn links(payload: &[u8]) -> Vec<ObjectId> {
    #[derive(Deserialize)]
    struct ItemLinks {
        object: ObjectId,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Links {
        // A shard first: a root has no `shard`, a shard no `shards`.
        Shard {
            #[allow(dead_code)]
            shard: String,
            items: BTreeMap<String, ItemLinks>,
        },
        Root {
            parent: Option<ObjectId>,
            shards: BTreeMap<String, ObjectId>,
        },
    }
    match serde_json::from_slice::<Links>(payload) {
        Ok(Links::Shard { items, .. }) => items.into_values().map(|i| i.object).collect(),
        Ok(Links::Root { parent, shards }) => {
            parent.into_iter().chain(shards.into_values()).collect()
        }
        Err(_) => Vec::new(),
    }
}

/// The shard an item id falls in.
fn shard_key(item_id: &str) -> String {
    blake3::hash(item_id.as_bytes()).to_hex()[..2].to_owned()
}

/// A snapshot being changed: shards are read when first touched and written if changed.
struct Working<'q> {
    queue: &'q DeadLetterQueue,
    root: Root,
    shards: BTreeMap<String, (Shard, bool)>,
}

impl Working<'_> {
    fn shard(&mut self, key: &str) -> Result<&mut (Shard, bool), DlqError> {
        if !self.shards.contains_key(key) {
            let shard = match self.root.shards.get(key) {
                Some(id) => self.queue.read_shard(id)?,
                None => Shard {
                    shard: key.to_owned(),
                    items: BTreeMap::new(),
                },
            };
            self.shards.insert(key.to_owned(), (shard, false));
        }
        self.shards
            .get_mut(key)
            .ok_or_else(|| DlqError::Invalid(format!("shard {key} vanished")))
    }

    fn get(&mut self, item_id: &str) -> Result<Option<ItemSummary>, DlqError> {
        Ok(self
            .shard(&shard_key(item_id))?
            .0
            .items
            .get(item_id)
            .cloned())
    }

    fn insert(&mut self, item_id: String, summary: ItemSummary) -> Result<(), DlqError> {
        let (shard, dirty) = self.shard(&shard_key(&item_id))?;
        let new = shard.items.insert(item_id, summary).is_none();
        *dirty = true;
        if new {
            self.root.items += 1;
        }
        Ok(())
    }

    fn remove(&mut self, item_id: &str) -> Result<bool, DlqError> {
        let (shard, dirty) = self.shard(&shard_key(item_id))?;
        let removed = shard.items.remove(item_id).is_some();
        *dirty |= removed;
        if removed {
            self.root.items -= 1;
        }
        Ok(removed)
    }

    /// Writes the changed shards and the new root; `None` when nothing changed.
    fn write(mut self, parent: Option<ObjectId>) -> Result<Option<ObjectId>, DlqError> {
        if !self.shards.values().any(|(_, dirty)| *dirty) {
            return Ok(None);
        }
        let objects = self.queue.refs.objects();
        for (key, (shard, dirty)) in &self.shards {
            if !dirty {
                continue;
            }
            if shard.items.is_empty() {
                self.root.shards.remove(key);
                continue;
            }
            let json = serde_json::to_vec(shard).map_err(|e| DlqError::Invalid(e.to_string()))?;
            self.root
                .shards
                .insert(key.clone(), objects.write(ObjectType::Dlq, &json)?);
        }
        self.root.parent = parent;
        let json = serde_json::to_vec(&self.root).map_err(|e| DlqError::Invalid(e.to_string()))?;
        Ok(Some(objects.write(ObjectType::Dlq, &json)?))
    }
}

/// Counts over a queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DlqStats {
    /// Items in the queue.
    pub items: u64,
    /// Failures recorded over all items.
    pub failures: u64,
    /// Items eligible for reprocessing.
    pub eligible: u64,
    /// Items needing a person.
    pub manual_review: u64,
    /// Items per last error type name.
    pub by_error_type: BTreeMap<String, u64>,
    /// The oldest first failure.
    pub oldest: Option<String>,
    /// The newest last failure.
    pub newest: Option<String>,
}

impl DlqStats {
    /// Adds one item's summary.
    pub fn add(&mut self, s: &ItemSummary) {
        self.items += 1;
        self.failures += u64::from(s.failure_count);
        self.eligible += u64::from(s.reprocess_eligible);
        self.manual_review += u64::from(s.manual_review_required);
        *self
            .by_error_type
            .entry(s.error_type.name().to_owned())
            .or_default() += 1;
        if self.oldest.as_ref().is_none_or(|o| &s.first_attempt < o) {
            self.oldest = Some(s.first_attempt.clone());
        }
        if self.newest.as_ref().is_none_or(|n| &s.last_attempt > n) {
            self.newest = Some(s.last_attempt.clone());
        }
    }

    /// Adds another queue's counts.
    pub fn merge(&mut self, other: &DlqStats) {
        self.items += other.items;
        self.failures += other.failures;
        self.eligible += other.eligible;
        self.manual_review += other.manual_review;
        for (k, v) in &other.by_error_type {
            *self.by_error_type.entry(k.clone()).or_default() += v;
        }
        if let Some(o) = &other.oldest
            && self.oldest.as_ref().is_none_or(|s| o < s)
        {
            self.oldest = Some(o.clone());
        }
        if let Some(n) = &other.newest
            && self.newest.as_ref().is_none_or(|s| n > s)
        {
            self.newest = Some(n.clone());
        }
    }
}

/// A group of items failing the same way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pattern {
    /// The shared signature.
    pub signature: String,
    /// The error type of the group's latest failure.
    pub error_type: String,
    /// Items in the group.
    pub items: u64,
    /// Failures of those items.
    pub failures: u64,
    /// The group's earliest failure.
    pub first_seen: String,
    /// The group's latest failure.
    pub last_seen: String,
    /// Up to five item ids.
    pub sample_items: Vec<String>,
}

/// Groups items by signature, largest group first.
pub fn analyze(snapshot: &Snapshot) -> Vec<Pattern> {
    let mut groups: BTreeMap<&str, Pattern> = BTreeMap::new();
    for (id, s) in &snapshot.items {
        let p = groups.entry(&s.error_signature).or_insert_with(|| Pattern {
            signature: s.error_signature.clone(),
            error_type: s.error_type.name().to_owned(),
            items: 0,
            failures: 0,
            first_seen: s.first_attempt.clone(),
            last_seen: s.last_attempt.clone(),
            sample_items: Vec::new(),
        });
        p.items += 1;
        p.failures += u64::from(s.failure_count);
        if s.first_attempt < p.first_seen {
            p.first_seen = s.first_attempt.clone();
        }
        if s.last_attempt > p.last_seen {
            p.last_seen = s.last_attempt.clone();
            p.error_type = s.error_type.name().to_owned();
        }
        if p.sample_items.len() < 5 {
            p.sample_items.push(id.clone());
        }
    }
    let mut patterns: Vec<Pattern> = groups.into_values().collect();
    patterns.sort_by(|a, b| {
        b.items
            .cmp(&a.items)
            .then(b.failures.cmp(&a.failures))
            .then(a.signature.cmp(&b.signature))
    });
    patterns
}

/// The dead-letter queue of one job.
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    refs: RefStore,
    name: RefName,
}

/// One failure to record, for [`DeadLetterQueue::add_many`].
pub type NewFailure = (String, Value, Failure);

impl DeadLetterQueue {
    /// The queue of `job` in `repo`, in the default home.
    pub fn new_global(repo: &str, job: &str) -> Result<DeadLetterQueue, DlqError> {
        let home = crate::storage::default_home()?;
        DeadLetterQueue::new(RefStore::new(&home, LockOptions::from_env()), repo, job)
    }

    /// The queue of `job` in `repo`, on `refs`.
    pub fn new(refs: RefStore, repo: &str, job: &str) -> Result<DeadLetterQueue, DlqError> {
        let name = RefName::new(RefKind::Dlq, repo, job)?;
        Ok(DeadLetterQueue { refs, name })
    }

    /// The queue's ref name.
    pub fn name(&self) -> &RefName {
        &self.name
    }

    /// The current snapshot (empty when the queue has never held anything).
    pub fn snapshot(&self) -> Result<Snapshot, DlqError> {
        let Some(id) = self.refs.read(&self.name)? else {
            return Ok(Snapshot::default());
        };
        let root = self.read_root(&id)?;
        let mut items = BTreeMap::new();
        for shard_id in root.shards.values() {
            items.extend(self.read_shard(shard_id)?.items);
        }
        Ok(Snapshot {
            parent: root.parent,
            items,
        })
    }

    fn read_dlq_object<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        id: &ObjectId,
    ) -> Result<T, DlqError> {
        let object = self.refs.objects().read(id)?;
        if object.kind != ObjectType::Dlq {
            return Err(self.malformed(what, id, format!("it is a {} object", object.kind)));
        }
        serde_json::from_slice(&object.payload).map_err(|e| self.malformed(what, id, e.to_string()))
    }

    fn read_root(&self, id: &ObjectId) -> Result<Root, DlqError> {
        self.read_dlq_object("snapshot", id)
    }

    fn read_shard(&self, id: &ObjectId) -> Result<Shard, DlqError> {
        self.read_dlq_object("snapshot shard", id)
    }

    fn malformed(&self, what: &'static str, id: &ObjectId, reason: String) -> DlqError {
        DlqError::Malformed {
            what,
            name: self.name.to_string(),
            id: *id,
            reason,
        }
    }

    /// The item a snapshot entry names (one object read, from a snapshot already in hand).
    pub fn item(&self, summary: &ItemSummary) -> Result<DeadLetteredItem, DlqError> {
        self.read_item(&summary.object)
    }

    fn read_item(&self, id: &ObjectId) -> Result<DeadLetteredItem, DlqError> {
        let object = self.refs.objects().read(id)?;
        if object.kind != ObjectType::Item {
            return Err(self.malformed("item", id, format!("it is a {} object", object.kind)));
        }
        serde_json::from_slice(&object.payload)
            .map_err(|e| self.malformed("item", id, e.to_string()))
    }

    /// One item with its whole history (reads the root, one shard and the item).
    pub fn get(&self, item_id: &str) -> Result<Option<DeadLetteredItem>, DlqError> {
        let Some(id) = self.refs.read(&self.name)? else {
            return Ok(None);
        };
        let root = self.read_root(&id)?;
        let Some(shard_id) = root.shards.get(&shard_key(item_id)) else {
            return Ok(None);
        };
        match self.read_shard(shard_id)?.items.get(item_id) {
            Some(s) => Ok(Some(self.read_item(&s.object)?)),
            None => Ok(None),
        }
    }

    /// Records a failure of `item_id` (see [`Self::add_many`]).
    pub fn add(
        &self,
        item_id: &str,
        item_data: Value,
        failure: Failure,
    ) -> Result<DeadLetteredItem, DlqError> {
        let mut items = self.add_many(vec![(item_id.to_owned(), item_data, failure)])?;
        items
            .pop()
            .ok_or_else(|| DlqError::Invalid("nothing was added".into()))
    }

    /// Records failures in one snapshot. A failure of an item already in the queue appends
    /// to its history, bumps `failure_count` and `last_attempt` and keeps `first_attempt`
    /// (and its `item_data` unless the new data is not null). Safe with many processes
    /// adding at once: each change is a compare-and-swap under the queue's lock.
    pub fn add_many(
        &self,
        mut failures: Vec<NewFailure>,
    ) -> Result<Vec<DeadLetteredItem>, DlqError> {
        // Checked and stamped before the lock is taken, so bad input changes nothing and
        // the lock is held for writing only.
        for (item_id, _, failure) in &mut failures {
            if item_id.is_empty() {
                return Err(DlqError::Invalid("an item id must not be empty".into()));
            }
            let timestamp = match &failure.timestamp {
                Some(ts) => {
                    crate::events::record::normalize_timestamp(ts).map_err(DlqError::Invalid)?
                }
                None => now_timestamp(),
            };
            failure.timestamp = Some(timestamp);
        }
        let count = failures.len();
        self.change(&format!("dlq add {count} failures"), |snapshot| {
            let mut added = Vec::with_capacity(failures.len());
            for (item_id, item_data, failure) in failures.iter().cloned() {
                let existing = match snapshot.get(&item_id)? {
                    Some(s) => Some(self.read_item(&s.object)?),
                    None => None,
                };
                let item = record_failure(existing, &item_id, item_data, failure)?;
                let json =
                    serde_json::to_vec(&item).map_err(|e| DlqError::Invalid(e.to_string()))?;
                let id = self.refs.objects().write(ObjectType::Item, &json)?;
                snapshot.insert(item_id, ItemSummary::of(id, &item))?;
                added.push(item);
            }
            Ok(added)
        })
    }

    /// Adds whole items (with their histories, as `prodigy migrate-events` converts them)
    /// that are not in the queue yet, in one snapshot; an item id already there is left as
    /// it is. Returns the ids added; nothing is written when there are none.
    pub fn import(&self, items: Vec<DeadLetteredItem>) -> Result<Vec<String>, DlqError> {
        let count = items.len();
        self.change(&format!("dlq import of {count} items"), |snapshot| {
            let mut added = Vec::new();
            for item in items.iter().cloned() {
                if snapshot.get(&item.item_id)?.is_some() {
                    continue;
                }
                let json =
                    serde_json::to_vec(&item).map_err(|e| DlqError::Invalid(e.to_string()))?;
                let id = self.refs.objects().write(ObjectType::Item, &json)?;
                snapshot.insert(item.item_id.clone(), ItemSummary::of(id, &item))?;
                added.push(item.item_id);
            }
            Ok(added)
        })
    }

    /// Removes items; returns the ids that were there.
    pub fn remove(&self, item_ids: &[String]) -> Result<Vec<String>, DlqError> {
        self.change(
            &format!("dlq remove {} items", item_ids.len()),
            |snapshot| {
                let mut removed = Vec::new();
                for id in item_ids {
                    if snapshot.remove(id)? {
                        removed.push(id.clone());
                    }
                }
                Ok(removed)
            },
        )
    }

    /// Applies `edit` to the current snapshot under the queue's lock and stores the result
    /// as the new snapshot (nothing is written when `edit` changes nothing).
    fn change<T>(
        &self,
        message: &str,
        mut edit: impl FnMut(&mut Working<'_>) -> Result<T, DlqError>,
    ) -> Result<T, DlqError> {
        let _gc = self.refs.write_guard()?;
        let (_, value) = self
            .refs
            .transact_with::<_, DlqError, _>(&self.name, message, |old| {
                let root = match old {
                    Some(id) => self.read_root(&id)?,
                    None => Root::default(),
                };
                let mut working = Working {
                    queue: self,
                    root,
                    shards: BTreeMap::new(),
                };
                let value = edit(&mut working)?;
                let new = working.write(old)?;
                Ok((new.or(old), value))
            })?;
        Ok(value)
    }

    /// The items passing `filter`, sorted by id (from the snapshot only).
    pub fn list(
        &self,
        filter: Option<&ItemFilter>,
    ) -> Result<Vec<(String, ItemSummary)>, DlqError> {
        let snapshot = self.snapshot()?;
        let mut out = Vec::new();
        for (id, s) in snapshot.items {
            if filter.is_none_or(|f| f.matches_summary(&id, &s)) {
                out.push((id, s));
            }
        }
        Ok(out)
    }

    /// Counts over the queue.
    pub fn stats(&self) -> Result<DlqStats, DlqError> {
        let mut stats = DlqStats::default();
        for s in self.snapshot()?.items.values() {
            stats.add(s);
        }
        Ok(stats)
    }

    /// Failure patterns, largest first.
    pub fn analyze(&self) -> Result<Vec<Pattern>, DlqError> {
        Ok(analyze(&self.snapshot()?))
    }
}

fn record_failure(
    existing: Option<DeadLetteredItem>,
    item_id: &str,
    item_data: Value,
    failure: Failure,
) -> Result<DeadLetteredItem, DlqError> {
    // `add_many` has stamped every failure in the stored form.
    let timestamp = failure.timestamp.clone().unwrap_or_else(now_timestamp);
    let error_type = failure
        .error_type
        .unwrap_or_else(|| classify(&failure.error_message, failure.exit_code));
    let mut item = existing.unwrap_or_else(|| DeadLetteredItem {
        item_id: item_id.to_owned(),
        item_data: Value::Null,
        first_attempt: timestamp.clone(),
        last_attempt: timestamp.clone(),
        failure_count: 0,
        failure_history: Vec::new(),
        error_signature: String::new(),
        worktree_artifacts: None,
        reprocess_eligible: true,
        manual_review_required: false,
    });
    if !item_data.is_null() {
        item.item_data = item_data;
    }
    item.failure_history.push(FailureDetail {
        attempt: item.failure_count + 1,
        timestamp: timestamp.clone(),
        error_type,
        error_message: failure.error_message.clone(),
        exit_code: failure.exit_code,
        agent_id: failure.agent_id,
        step: failure.step,
        duration_ms: failure.duration_ms,
        log_location: failure.log_location,
        stack_trace: None,
    });
    item.failure_count += 1;
    if timestamp > item.last_attempt {
        item.last_attempt = timestamp.clone();
    }
    if timestamp < item.first_attempt {
        item.first_attempt = timestamp;
    }
    item.error_signature = signature(&error_type, &failure.error_message);
    if failure.worktree_artifacts.is_some() {
        item.worktree_artifacts = failure.worktree_artifacts;
    }
    let (eligible, manual) = eligibility(&error_type, item.failure_count);
    item.reprocess_eligible = eligible;
    item.manual_review_required = manual;
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root and a shard with every field filled name exactly the ids they hold: a new
    /// field holding an id must be declared in [`links`], or gc would drop it.
    #[test]
    fn snapshots_declare_every_id_they_hold() {
        let id = |n: u8| ObjectId::from_bytes([n; 32]);
        let summary = ItemSummary {
            object: id(3),
            failure_count: 2,
            error_type: ErrorType::Timeout,
            first_attempt: "t0".into(),
            last_attempt: "t1".into(),
            error_signature: "s".into(),
            reprocess_eligible: true,
            manual_review_required: false,
            name: Some("n".into()),
        };
        let root = Root {
            parent: Some(id(1)),
            items: 1,
            shards: BTreeMap::from([("3f".to_owned(), id(2))]),
        };
        let shard = Shard {
            shard: "3f".into(),
            items: BTreeMap::from([("i".to_owned(), summary)]),
        };
        for json in [
            serde_json::to_vec(&root).unwrap(),
            serde_json::to_vec(&shard).unwrap(),
        ] {
            let mut held = Vec::new();
            crate::reach::ids_in(&serde_json::from_slice(&json).unwrap(), &mut held);
            let mut declared = links(&json);
            held.sort();
            declared.sort();
            assert_eq!(held, declared);
            assert!(!declared.is_empty());
        }
    }
}
