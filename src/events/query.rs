//! Filters over a job's log, and the one streaming reader every command uses: nodes whose
//! summaries cannot match are skipped without opening their batch.

use super::log::{EventError, EventLog, LogNode};
use super::record::{EventRecord, format_timestamp};
use crate::store::object::ObjectId;

/// Which records to keep. An empty filter keeps everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Keep these event types (any of them).
    pub types: Vec<String>,
    /// Keep this agent's records.
    pub agent: Option<String>,
    /// Keep records at or after this timestamp (stored form).
    pub since: Option<String>,
    /// Keep records at or before this timestamp (stored form).
    pub until: Option<String>,
    /// Keep records with this correlation id.
    pub correlation: Option<String>,
    /// Keep records about this work item.
    pub item: Option<String>,
}

impl Filter {
    /// True when nothing is filtered (records need not even be parsed).
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
            && self.agent.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.correlation.is_none()
            && self.item.is_none()
    }

    /// False when the node's summary proves none of its records can match.
    pub fn node_may_match(&self, node: &LogNode) -> bool {
        let s = &node.summary;
        if !self.types.is_empty() && !self.types.iter().any(|t| s.types.contains_key(t)) {
            return false;
        }
        if let (Some(since), Some(last)) = (&self.since, &s.last_ts)
            && last < since
        {
            return false;
        }
        if let (Some(until), Some(first)) = (&self.until, &s.first_ts)
            && first > until
        {
            return false;
        }
        true
    }

    /// True when the record passes every condition.
    pub fn matches(&self, r: &EventRecord) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == r.event_type()))
            && self
                .agent
                .as_deref()
                .is_none_or(|a| r.agent_id() == Some(a))
            && self.since.as_ref().is_none_or(|s| &r.timestamp >= s)
            && self.until.as_ref().is_none_or(|u| &r.timestamp <= u)
            && self
                .correlation
                .as_deref()
                .is_none_or(|c| r.correlation_id.as_deref() == Some(c))
            && self.item.as_deref().is_none_or(|i| r.item_id() == Some(i))
    }
}

/// Parses a time bound: RFC 3339, or a duration before now (`10m`, `2h`, `3d`).
pub fn parse_time_bound(text: &str) -> Result<String, String> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(format_timestamp(ts));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor a duration such as 10m, 2h, 3d")
    })?;
    // Further back than time goes is the start of time (as `events clean --older-than`
    // takes any age), never a library's range error.
    let ts = jiff::SignedDuration::try_from(ago)
        .ok()
        .and_then(|span| jiff::Timestamp::now().checked_sub(span).ok())
        .unwrap_or(jiff::Timestamp::MIN);
    Ok(format_timestamp(ts))
}

/// One line of a batch, parsed only when a filter needs it.
pub struct Line<'a> {
    /// The record's JSON, without its newline.
    pub json: &'a [u8],
    /// The parsed record (present whenever the filter is not empty or parsing was asked).
    pub record: Option<EventRecord>,
}

/// Batches fetched ahead at once from a remote store.
const PREFETCH: usize = 64;

/// Streams the records of `log` oldest first through `each`, one batch in memory at a
/// time. With `best_effort`, unreadable nodes or batches are skipped and returned as
/// errors; without it the first one is the error. `parse` forces records to be parsed.
pub fn stream(
    log: &EventLog,
    filter: &Filter,
    best_effort: bool,
    parse: bool,
    mut each: impl FnMut(Line<'_>) -> Result<bool, EventError>,
) -> Result<Vec<EventError>, EventError> {
    let head = log.refs().read(log.name())?;
    // Only the ids are kept on the way back, so memory does not grow with the log's
    // length (32 bytes per batch); each node is read again on the way forward.
    let (ids, broken) = log.node_ids_between(head, None, best_effort)?;
    let mut skipped: Vec<EventError> = broken.into_iter().collect();
    let ahead = log.refs().objects().wants_prefetch();
    for (n, id) in ids.iter().enumerate() {
        if ahead && n % PREFETCH == 0 {
            // From a remote store, the next batches are fetched many at once.
            let next: Vec<ObjectId> = ids[n..ids.len().min(n + PREFETCH)]
                .iter()
                .filter_map(|id| log.node(id).ok().map(|node| node.batch))
                .collect();
            log.refs().objects().prefetch(&next);
        }
        let node = log.node(id)?;
        if !filter.node_may_match(&node) {
            continue;
        }
        let lines = match log.batch_lines(&node) {
            Ok(lines) => lines,
            Err(e) if best_effort => {
                skipped.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        for json in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record = if parse || !filter.is_empty() {
                let record: EventRecord = serde_json::from_slice(json).map_err(|e| {
                    EventError::BadRecord(format!(
                        "batch {} holds an unreadable record: {e}",
                        node.batch
                    ))
                })?;
                if !filter.matches(&record) {
                    continue;
                }
                Some(record)
            } else {
                None
            };
            if !each(Line { json, record })? {
                return Ok(skipped);
            }
        }
    }
    Ok(skipped)
}
