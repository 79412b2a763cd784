//! Filters over a job's log, and the one streaming reader every command uses: nodes whose
//! summaries cannot match are skipped without opening their batch.

use std::sync::Arc;

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
    each: impl FnMut(Line<'_>) -> Result<bool, EventError>,
) -> Result<Vec<EventError>, EventError> {
    // A chain with the cores to itself gets a reader per core.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let per_chain = (cores / chains.len().max(1)).clamp(1, MAX_READERS_PER_CHAIN);
    stream_with_readers(chains, filter, best_effort, parse, per_chain, each)
}

/// [`stream_chains`] with `per_chain` read-ahead threads for each chain (when there are
/// at most [`READ_AHEAD_CHAINS`] chains).
fn stream_with_readers(
    chains: Vec<(Chain, Option<ObjectId>, Option<ObjectId>)>,
    filter: &Filter,
    best_effort: bool,
    parse: bool,
    per_chain: usize,
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
    // A few chains each get read-ahead threads that read (and verify) their next batches
    // while the caller writes the current one; with several per chain, each reads every
    // n-th batch, so the cores share the chain's decoding too.
    let ahead = walked.len() <= READ_AHEAD_CHAINS;
    std::thread::scope(|scope| {
        let mut cursors = Vec::with_capacity(walked.len());
        for (chain, ids) in walked {
            let ids = Arc::new(ids);
            let source = if ahead {
                let readers = (0..per_chain)
                    .map(|first| {
                        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
                        let mut batches = Batches {
                            chain: chain.clone(),
                            ids: Arc::clone(&ids),
                            next: first,
                            stride: per_chain,
                            filter: filter.clone(),
                            best_effort,
                        };
                        scope.spawn(move || {
                            while let Some(batch) = batches.next() {
                                let last = matches!(batch, Ahead::Failed(_));
                                if tx.send(batch).is_err() || last {
                                    return;
                                }
                            }
                        });
                        rx
                    })
                    .collect();
                Source::Ahead { readers, turn: 0 }
            } else {
                Source::Here(Box::new(Batches {
                    chain: chain.clone(),
                    ids,
                    next: 0,
                    stride: 1,
                    filter: filter.clone(),
                    best_effort,
                }))
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

/// Chains up to which each gets read-ahead threads, the most threads one chain gets, and
/// the batches each thread reads ahead.
const READ_AHEAD_CHAINS: usize = 8;
const MAX_READERS_PER_CHAIN: usize = 4;
const READ_AHEAD: usize = 2;

/// What a read-ahead thread hands over, in the chain's order.
enum Ahead {
    /// A batch's lines.
    Lines(Vec<u8>),
    /// A node whose batch cannot match the filter (sent when readers take turns, so that
    /// each message comes in its turn).
    Passed,
    /// A batch that could not be read, skipped (best effort).
    Skipped(EventError),
    /// The error that ends the read.
    Failed(EventError),
}

/// The batches of one chain that may match a filter, in the chain's order: read (and
/// verified) by read-ahead threads, each every `stride`-th node from `next`, or by the
/// caller.
struct Batches {
    chain: Chain,
    /// The chain's node ids, oldest first.
    ids: Arc<Vec<ObjectId>>,
    /// The next node to open.
    next: usize,
    /// How far apart the nodes this reader opens are (the number of readers taking turns).
    stride: usize,
    filter: Filter,
    best_effort: bool,
}

impl Batches {
    /// The next batch that may match; `None` at the end of the chain. After a
    /// [`Ahead::Failed`], nothing more is to be read. Readers taking turns also hand over
    /// each node that cannot match, as [`Ahead::Passed`].
    fn next(&mut self) -> Option<Ahead> {
        loop {
            let id = *self.ids.get(self.next)?;
            let turn = self.next / self.stride;
            if turn.is_multiple_of(PREFETCH) && self.chain.refs().objects().wants_prefetch() {
                let mine: Vec<ObjectId> = self.ids[self.next..]
                    .iter()
                    .step_by(self.stride)
                    .take(PREFETCH)
                    .copied()
                    .collect();
                prefetch(&self.chain, &mine);
            }
            self.next += self.stride;
            let node = match self.chain.node(&id) {
                Ok(node) => node,
                Err(e) => return Some(Ahead::Failed(e)),
            };
            if !self.filter.node_may_match(&node) {
                if self.stride > 1 {
                    return Some(Ahead::Passed);
                }
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
    /// Read-ahead threads, taking turns: the next batch comes from `readers[turn]`.
    Ahead {
        readers: Vec<std::sync::mpsc::Receiver<Ahead>>,
        turn: usize,
    },
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
                Source::Ahead { readers, turn } => {
                    // The first reader to have nothing more ends the chain: the others'
                    // nodes all come after its.
                    let next = readers[*turn].recv().ok();
                    *turn = (*turn + 1) % readers.len();
                    next
                }
                Source::Here(batches) => batches.next(),
            };
            match next {
                Some(Ahead::Lines(lines)) => {
                    self.lines = lines;
                    self.pos = 0;
                }
                Some(Ahead::Passed) => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::log::Batch;
    use crate::lock::LockOptions;
    use crate::store::refs::{RefKind, RefName, RefStore};

    /// A chain of ten batches of one record each, their event types `a`, `b`, `c` in turn.
    fn chain(dir: &std::path::Path) -> Chain {
        let home = crate::home::Home::at(dir).unwrap();
        let chain = Chain::new(
            RefStore::new(&home, LockOptions::default()),
            RefName::new(RefKind::Events, "r", "j").unwrap(),
        );
        for seq in 0..10u64 {
            let mut batch = Batch::new();
            let event_type = ["a", "b", "c"][seq as usize % 3];
            batch
                .push(&EventRecord {
                    v: 1,
                    id: format!("id-{seq}"),
                    timestamp: format!("2026-01-01T00:00:{seq:02}.000000Z"),
                    writer: "w".into(),
                    seq,
                    correlation_id: None,
                    event: serde_json::json!({"event_type": event_type}),
                    metadata: Default::default(),
                })
                .unwrap();
            chain.append(&[batch]).unwrap();
        }
        chain
    }

    /// The seqs streamed from `chain` by `readers` threads, and the batches skipped.
    fn seqs(
        chain: &Chain,
        filter: &Filter,
        best_effort: bool,
        readers: usize,
    ) -> Result<(Vec<u64>, usize), EventError> {
        let head = chain.refs().read(chain.name()).unwrap();
        let mut seqs = Vec::new();
        let skipped = stream_with_readers(
            vec![(chain.clone(), head, None)],
            filter,
            best_effort,
            false,
            readers,
            |line| {
                let record: EventRecord = serde_json::from_slice(line.json).unwrap();
                seqs.push(record.seq);
                Ok(true)
            },
        )?;
        Ok((seqs, skipped.len()))
    }

    #[test]
    fn readers_taking_turns_keep_the_chains_order_through_filters_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let chain = chain(dir.path());
        let only_b = Filter {
            types: vec!["b".into()],
            ..Filter::default()
        };
        for readers in 1..=4 {
            let all = seqs(&chain, &Filter::default(), false, readers).unwrap();
            assert_eq!(all, ((0..10).collect(), 0), "{readers} readers");
            // Nodes that cannot match are passed over by whichever reader's turn it is.
            let b = seqs(&chain, &only_b, false, readers).unwrap();
            assert_eq!(b, (vec![1, 4, 7], 0), "{readers} readers");
        }
        // Damage the sixth batch (a `c`): the read stops there, or (best effort) goes past.
        let nodes = chain.nodes().unwrap();
        let path = chain.refs().objects().path(&nodes[5].1.batch);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 2;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        for readers in 1..=4 {
            let e = seqs(&chain, &Filter::default(), false, readers).unwrap_err();
            assert!(e.to_string().contains("broken at batch"), "{e}");
            let rest = seqs(&chain, &Filter::default(), true, readers).unwrap();
            assert_eq!(
                rest,
                (vec![0, 1, 2, 3, 4, 6, 7, 8, 9], 1),
                "{readers} readers"
            );
            // Passed over by the filter, the damaged batch is not read at all.
            let b = seqs(&chain, &only_b, false, readers).unwrap();
            assert_eq!(b, (vec![1, 4, 7], 0), "{readers} readers");
        }
    }
}
