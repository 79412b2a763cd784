//! Filters over a job's log, and the one streaming reader every command uses: nodes whose
//! summaries cannot match are skipped without opening their batch.

use super::job::EventLog;
use super::log::{Chain, EventError, LogNode};
use super::record::{EventRecord, MapReduceEvent, format_timestamp};
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

/// Streams the records of `log` through `each`, one batch per chain in memory at a time:
/// every chain of the job merged in (timestamp, writer, seq) order, each chain's own order
/// kept (a chain is one writer's records in seq order, or the job's own ref in append
/// order). With one chain, records go through in its order without being looked at. With
/// `best_effort`, unreadable nodes or batches are skipped and returned as errors; without
/// it the first one is the error. `parse` forces records to be parsed.
pub fn stream(
    log: &EventLog,
    filter: &Filter,
    best_effort: bool,
    parse: bool,
    each: impl FnMut(Line<'_>) -> Result<bool, EventError>,
) -> Result<Vec<EventError>, EventError> {
    let chains = log
        .chains()?
        .into_iter()
        .map(|(chain, head)| (chain, Some(head), None))
        .collect();
    stream_chains(chains, filter, best_effort, parse, each)
}

/// The events of `types` in `log`, oldest first, each typed and with its record's
/// timestamp, through `each`; a record whose event does not read as a [`MapReduceEvent`]
/// is passed over. Only the batches whose nodes count these types are read. With
/// `best_effort`, what cannot be read is skipped and returned, as [`stream`] does.
pub fn typed_events(
    log: &EventLog,
    types: &[&str],
    best_effort: bool,
    mut each: impl FnMut(String, MapReduceEvent),
) -> Result<Vec<EventError>, EventError> {
    let filter = Filter {
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        ..Filter::default()
    };
    stream(log, &filter, best_effort, true, |line| {
        if let Some(record) = line.record
            && let Ok(event) = serde_json::from_value(record.event)
        {
            each(record.timestamp, event);
        }
        Ok(true)
    })
}

/// [`stream`] over given chains, each from its head back to (not including) a stop.
pub fn stream_chains(
    chains: Vec<(Chain, Option<ObjectId>, Option<ObjectId>)>,
    filter: &Filter,
    best_effort: bool,
    parse: bool,
    mut each: impl FnMut(Line<'_>) -> Result<bool, EventError>,
) -> Result<Vec<EventError>, EventError> {
    let mut skipped = Vec::new();
    let mut walked = Vec::with_capacity(chains.len());
    for (chain, head, stop) in chains {
        // Only the ids are kept on the way back, so memory does not grow with the log's
        // length (32 bytes per batch); each node is read again on the way forward.
        let (ids, broken) = chain.node_ids_between(head, stop, best_effort)?;
        skipped.extend(broken);
        walked.push((chain, ids));
    }
    // A few chains each get a thread that reads (and verifies) their next batches while
    // the caller writes the current one: the two cores share the work.
    let ahead = walked.len() <= READ_AHEAD_CHAINS;
    std::thread::scope(|scope| {
        let mut cursors = Vec::with_capacity(walked.len());
        for (chain, ids) in walked {
            let mut batches = Batches {
                chain: chain.clone(),
                ids,
                next: 0,
                filter: filter.clone(),
                best_effort,
            };
            let source = if ahead {
                let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
                scope.spawn(move || {
                    while let Some(batch) = batches.next() {
                        let last = matches!(batch, Ahead::Failed(_));
                        if tx.send(batch).is_err() || last {
                            return;
                        }
                    }
                });
                Source::Ahead(rx)
            } else {
                Source::Here(Box::new(batches))
            };
            cursors.push(Cursor {
                chain,
                source,
                lines: Vec::new(),
                pos: 0,
                end: 0,
                record: None,
                key: None,
            });
        }
        merge(cursors, filter, parse, skipped, &mut each)
    })
}

/// Chains up to which each gets a read-ahead thread, and the batches it reads ahead.
const READ_AHEAD_CHAINS: usize = 8;
const READ_AHEAD: usize = 2;

/// What a read-ahead thread hands over, in the chain's order.
enum Ahead {
    /// A batch's lines.
    Lines(Vec<u8>),
    /// A batch that could not be read, skipped (best effort).
    Skipped(EventError),
    /// The error that ends the read.
    Failed(EventError),
}

/// The batches of one chain that may match a filter, in the chain's order: read (and
/// verified) by a read-ahead thread, or by the caller.
struct Batches {
    chain: Chain,
    /// The chain's node ids, oldest first.
    ids: Vec<ObjectId>,
    /// The next node to open.
    next: usize,
    filter: Filter,
    best_effort: bool,
}

impl Batches {
    /// The next batch that may match; `None` at the end of the chain. After a
    /// [`Ahead::Failed`], nothing more is to be read.
    fn next(&mut self) -> Option<Ahead> {
        loop {
            let id = *self.ids.get(self.next)?;
            if self.next.is_multiple_of(PREFETCH) && self.chain.refs().objects().wants_prefetch() {
                let end = self.ids.len().min(self.next + PREFETCH);
                prefetch(&self.chain, &self.ids[self.next..end]);
            }
            self.next += 1;
            let node = match self.chain.node(&id) {
                Ok(node) => node,
                Err(e) => return Some(Ahead::Failed(e)),
            };
            if !self.filter.node_may_match(&node) {
                continue;
            }
            return Some(match self.chain.batch_lines(&node) {
                Ok(lines) => Ahead::Lines(lines),
                Err(e) if self.best_effort => Ahead::Skipped(e),
                Err(e) => Ahead::Failed(e),
            });
        }
    }
}

/// Where a cursor's batches come from.
enum Source {
    /// A read-ahead thread.
    Ahead(std::sync::mpsc::Receiver<Ahead>),
    /// The caller's own reads.
    Here(Box<Batches>),
}

/// From a remote store, the batches of these nodes are fetched many at once.
fn prefetch(chain: &Chain, ids: &[ObjectId]) {
    let next: Vec<ObjectId> = ids
        .iter()
        .filter_map(|id| chain.node(id).ok().map(|node| node.batch))
        .collect();
    chain.refs().objects().prefetch(&next);
}

/// Merges the cursors' lines into `each`.
fn merge(
    mut cursors: Vec<Cursor>,
    filter: &Filter,
    parse: bool,
    mut skipped: Vec<EventError>,
    each: &mut impl FnMut(Line<'_>) -> Result<bool, EventError>,
) -> Result<Vec<EventError>, EventError> {
    let must_parse = parse || !filter.is_empty();
    let merging = cursors.len() > 1;
    for c in &mut cursors {
        c.advance(filter, must_parse, merging, &mut skipped)?;
    }
    loop {
        // The cursor whose line comes first: with one left, its order alone.
        let mut live = cursors.iter().enumerate().filter(|(_, c)| c.has_line());
        let Some((mut best, _)) = live.next() else {
            return Ok(skipped);
        };
        for (i, c) in live {
            if c.key < cursors[best].key {
                best = i;
            }
        }
        let c = &mut cursors[best];
        let end = c.end;
        let record = c.record.take();
        if !each(Line {
            json: &c.lines[c.pos..end],
            record,
        })? {
            return Ok(skipped);
        }
        c.pos = end + 1;
        // Merging while another chain has lines (one without has none left at all).
        let merging = cursors
            .iter()
            .enumerate()
            .any(|(i, c)| i != best && c.has_line());
        cursors[best].advance(filter, must_parse, merging, &mut skipped)?;
    }
}

/// Where the merge stands in one chain.
struct Cursor {
    chain: Chain,
    /// Its batches that may match.
    source: Source,
    /// The open batch's JSON Lines.
    lines: Vec<u8>,
    /// Where its next line starts (`lines.len()` when none is left).
    pos: usize,
    /// Where that line ends (its newline, or the end of the batch).
    end: usize,
    /// That line parsed, when parsing was asked.
    record: Option<EventRecord>,
    /// That line's merge key, while chains are merged.
    key: Option<(String, String, u64)>,
}

impl Cursor {
    fn has_line(&self) -> bool {
        self.pos < self.lines.len()
    }

    fn line_end(&self) -> usize {
        memchr::memchr(b'\n', &self.lines[self.pos..]).map_or(self.lines.len(), |n| self.pos + n)
    }

    /// Moves to the next line that passes the filter (opening batches as needed), and
    /// reads its key when merging.
    fn advance(
        &mut self,
        filter: &Filter,
        parse: bool,
        merging: bool,
        skipped: &mut Vec<EventError>,
    ) -> Result<(), EventError> {
        loop {
            while self.pos < self.lines.len() {
                let end = self.line_end();
                let json = &self.lines[self.pos..end];
                if json.is_empty() {
                    self.pos = end + 1;
                    continue;
                }
                let bad = |e: serde_json::Error| {
                    EventError::BadRecord(format!(
                        "a batch of {} holds an unreadable record: {e}",
                        self.chain.name()
                    ))
                };
                self.end = end;
                if parse {
                    let record: EventRecord = serde_json::from_slice(json).map_err(bad)?;
                    if !filter.matches(&record) {
                        self.pos = end + 1;
                        continue;
                    }
                    self.key = merging
                        .then(|| (record.timestamp.clone(), record.writer.clone(), record.seq));
                    self.record = Some(record);
                } else if merging {
                    let k: Key<'_> = serde_json::from_slice(json).map_err(bad)?;
                    self.key = Some((k.timestamp.into_owned(), k.writer.into_owned(), k.seq));
                }
                return Ok(());
            }
            // The next batch that may match.
            let next = match &mut self.source {
                Source::Ahead(reader) => reader.recv().ok(),
                Source::Here(batches) => batches.next(),
            };
            match next {
                Some(Ahead::Lines(lines)) => {
                    self.lines = lines;
                    self.pos = 0;
                }
                Some(Ahead::Skipped(e)) => skipped.push(e),
                Some(Ahead::Failed(e)) => return Err(e),
                None => {
                    self.lines.clear();
                    self.pos = 0;
                    return Ok(());
                }
            }
        }
    }
}

/// The merge key of a record, read without the rest of it.
#[derive(serde::Deserialize)]
struct Key<'a> {
    #[serde(borrow)]
    timestamp: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    writer: std::borrow::Cow<'a, str>,
    seq: u64,
}
