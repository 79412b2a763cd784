//! `prodigy events append`: JSON Lines in, one durable append per call.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::Scope;

use anyhow::{Context, anyhow};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::events::record::{
    RECORD_VERSION, RecordInfo, is_stored_timestamp, new_id, new_id_and_timestamp,
    normalize_timestamp, stored_timestamp, write_record_line,
};
use crate::events::{Batch, EventLog, EventRecord, Metadata};
use crate::lock::WriteGuard;
use crate::store::id::ObjectId;
use crate::store::object::{ObjectBatch, ObjectError};

/// How long standard input may have nothing ready before what was read is checked.
const STALLED: std::time::Duration = std::time::Duration::from_millis(20);

/// How many released batches' lines a call keeps decoded for repeats (see
/// `Builder::decoded`).
const DECODED: usize = 8;

/// The longest line accepted (16 MiB), as every command reading lines.
pub const MAX_LINE: usize = crate::cli::MAX_INPUT_LINE;

/// Append events from JSON Lines (FILE, or standard input when FILE is - or absent).
///
/// Each line is either a full record (with `id`, `timestamp` and an `event` object) or a
/// bare event object with an `event_type`, which is wrapped into a record with a new id,
/// the current time, this call's writer id and the next seq. Event types this version does
/// not know are kept as they are. The call is all or nothing: a malformed line is refused
/// with its line number and nothing is appended. Prints how many events were appended,
/// once they are durable.
///
/// Full records are appended idempotently: a record is known by its writer and seq, so a
/// retried append skips the records already stored (and says how many), and a record with
/// the writer and seq of a stored one but other content is refused.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job to append to.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), long, value_name = "JOB")]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Records per batch object.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,
    /// The input file (default: standard input).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// An event as the fast paths read it, without building it: the fields the batch summary
/// needs, and (for a bare event) whether it has fields that move out of it into the
/// record, which send it down the general path.
#[derive(serde::Deserialize)]
struct Summarised<'a> {
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    agent_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(borrow, default)]
    transcript: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    log: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, deserialize_with = "present")]
    metadata: bool,
    #[serde(default, deserialize_with = "present")]
    correlation_id: bool,
    #[serde(default, deserialize_with = "present")]
    event: bool,
}

impl<'a> Summarised<'a> {
    /// Reads `json` when it is an object (serde also reads a struct from an array) whose
    /// summarised fields have their usual types; `None` sends it down the general path.
    fn read(json: &'a str) -> Option<Summarised<'a>> {
        json.starts_with('{')
            .then(|| serde_json::from_str(json).ok())
            .flatten()
    }

    /// The object the event attaches; `Err` when the general path must decide.
    fn attachment(&self) -> Result<Option<ObjectId>, ()> {
        match (&self.transcript, &self.log) {
            (None, None) => Ok(None),
            (Some(t), None) | (None, Some(t)) => t.parse().map(Some).map_err(|_| ()),
            (Some(_), Some(_)) => Err(()),
        }
    }
}

/// A full record as [`parse_full`] reads it: the envelope typed, the event and the
/// metadata as the JSON they are.
#[derive(serde::Deserialize)]
struct Full<'a> {
    #[serde(default = "record_version")]
    v: u32,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    timestamp: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    writer: std::borrow::Cow<'a, str>,
    seq: u64,
    #[serde(borrow, default)]
    correlation_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    event: &'a RawValue,
    /// Present (even as `null`) or not: `Option<&RawValue>` would read `null` as absent.
    #[serde(borrow, default, deserialize_with = "raw_present")]
    metadata: Option<&'a RawValue>,
}

/// A full record in the stored form, as `events show --json` prints it: `v` 1 first,
/// every envelope field the stored form has (`metadata` too) and no other, the event and
/// the metadata objects read by the typed views in the same pass. Its line is stored as
/// it is: read once, not rewritten.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored<'a> {
    v: u32,
    /// A string, not looked at (the line keeps it).
    #[serde(deserialize_with = "string")]
    #[allow(dead_code)]
    id: (),
    #[serde(borrow)]
    timestamp: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    writer: std::borrow::Cow<'a, str>,
    seq: u64,
    /// A string when present (a `null` one, which the stored form leaves out, sends the
    /// line down the path that writes the envelope).
    #[serde(default, deserialize_with = "string")]
    #[allow(dead_code)]
    correlation_id: (),
    #[serde(borrow, deserialize_with = "object")]
    event: Summarised<'a>,
    #[serde(borrow, deserialize_with = "object")]
    metadata: MetadataView<'a>,
}

/// A JSON string, whatever it says.
fn string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
    }
    d.deserialize_str(Text)
}

/// A `T` read from a JSON object only (serde also reads a struct from an array).
fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Object<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(Object(std::marker::PhantomData))
}

/// A record's metadata as the full-record path checks it: the fields [`Metadata`] types,
/// with its types (so what this reads, `Metadata` reads too); the rest is not looked at.
#[derive(serde::Deserialize)]
struct MetadataView<'a> {
    #[serde(borrow, default)]
    #[allow(dead_code)]
    host: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    #[allow(dead_code)]
    pid: Option<u32>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    worktree: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    agent_id: Option<std::borrow::Cow<'a, str>>,
}

fn record_version() -> u32 {
    RECORD_VERSION
}

fn raw_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// True for a key that is there, whatever its value (null too).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Where a full record read before is: its batch, its line's offset there, its input line.
#[derive(Clone, Copy)]
struct Given {
    batch: usize,
    start: usize,
    number: usize,
}

/// Ok when a full record (`json`) whose writer and seq are those of the earlier input line
/// `first` (`earlier`) is the same record, written the same way or another; the refusal
/// otherwise.
fn same_record(
    earlier: &[u8],
    json: &[u8],
    (writer, seq): (&str, u64),
    first: usize,
) -> Result<(), String> {
    let parse = |l: &[u8]| serde_json::from_slice::<EventRecord>(l).ok();
    if earlier == json || parse(earlier).is_some_and(|e| parse(json) == Some(e)) {
        return Ok(());
    }
    let id = crate::events::record::record_id(json).unwrap_or_default();
    Err(format!(
        "record {id} has writer {writer} and seq {seq} as line {first} with other content"
    ))
}

/// The batches of a call: consecutive records of one writer, at most `size` each. Each
/// batch, once sealed (the next one begun, or the input ended after several), goes to
/// `sealed`, a thread that compresses and stores it while the next ones are read; a lone
/// batch is stored by the append. Each batch drops its lines once that thread has
/// compressed it: the frames wait for the commit, not the lines.
struct Batches<'g> {
    list: Vec<Arc<Batch>>,
    size: u64,
    /// The batches before this one have released their lines.
    released: usize,
    /// Closed (`None`) once every line is read.
    sealed: Option<SyncSender<Arc<Batch>>>,
    /// The home's gc guard, taken before the first object is written and kept until the
    /// log's ref has moved.
    guard: Option<WriteGuard>,
    log: &'g EventLog,
}

impl Batches<'_> {
    /// Adds a stored line to the last batch, or a new one when that one is full or
    /// another writer's.
    fn add(&mut self, json: &[u8], info: &RecordInfo<'_>) -> Result<(), String> {
        self.add_written(info, |line| {
            line.extend_from_slice(json);
            Ok(())
        })
    }

    /// [`Self::add`] of the line `write` writes into the batch (see
    /// [`Batch::push_written`]).
    fn add_written(
        &mut self,
        info: &RecordInfo<'_>,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
    ) -> Result<(), String> {
        let start_new = match self.list.last() {
            None => true,
            Some(b) => b.writer() != Some(info.writer) || b.len() >= self.size,
        };
        if start_new {
            self.seal()?;
            let next = self.list.last().map_or_else(Batch::new, |b| b.successor());
            self.list.push(Arc::new(next));
        }
        let batch = self
            .list
            .last_mut()
            .and_then(Arc::get_mut)
            .ok_or("the batch being filled is shared")?;
        batch.push_written(info, write).map_err(|e| e.to_string())
    }

    /// Hands the last batch to the thread that stores it.
    fn seal(&mut self) -> Result<(), String> {
        let Some(last) = self.list.last() else {
            return Ok(());
        };
        if self.guard.is_none() {
            self.guard = Some(self.log.refs().write_guard().map_err(|e| e.to_string())?);
        }
        // A closed channel means the storing thread failed; its error is reported when
        // it is joined.
        if let Some(sealed) = &self.sealed {
            let _ = sealed.send(Arc::clone(last));
        }
        self.release_stored();
        Ok(())
    }

    /// Drops the lines of the batches the storing thread is done with (it stores them
    /// in order, and holds each until then); stops at one it let go of unstored (it
    /// failed, and its error is reported when it is joined).
    fn release_stored(&mut self) {
        while let Some(batch) = self.list.get_mut(self.released).and_then(Arc::get_mut) {
            if !batch.release_lines() {
                return;
            }
            self.released += 1;
        }
    }
}

/// The full records of one writer read so far: where their lines are, by seq.
#[derive(Default)]
struct Seen {
    /// In input order, which is seq order while the writer's seqs only went up.
    lines: Vec<(u64, Given)>,
    /// By seq, once a seq came out of order (then `lines` is empty).
    by_seq: Option<HashMap<u64, Given>>,
}

impl Seen {
    fn get(&self, seq: u64) -> Option<Given> {
        if let Some(by_seq) = &self.by_seq {
            return by_seq.get(&seq).copied();
        }
        match self.lines.last() {
            Some(&(last, _)) if seq <= last => self
                .lines
                .binary_search_by_key(&seq, |&(s, _)| s)
                .ok()
                .map(|i| self.lines[i].1),
            _ => None,
        }
    }

    /// Records a seq not read before.
    fn insert(&mut self, seq: u64, given: Given) {
        if let Some(by_seq) = &mut self.by_seq {
            by_seq.insert(seq, given);
        } else if self.lines.last().is_some_and(|&(last, _)| seq < last) {
            let mut by_seq: HashMap<u64, Given> = self.lines.drain(..).collect();
            by_seq.insert(seq, given);
            self.by_seq = Some(by_seq);
        } else {
            self.lines.push((seq, given));
        }
    }
}

/// Turns input lines into batches.
struct Builder<'g> {
    batches: Batches<'g>,
    writer: String,
    next_seq: u64,
    metadata: Metadata,
    /// The full records read so far, by writer: where their lines are. The last full
    /// record's writer's are in `hot` instead (most inputs are long runs of one writer).
    given: HashMap<String, Seen>,
    hot: (String, Seen),
    /// Full records repeated in the input, skipped.
    repeated: u64,
    /// The lines of the last [`DECODED`] released batches a repeat was looked up in,
    /// decoded from their frames, the latest last: repeats come in runs, of one writer
    /// or a few interleaved.
    decoded: std::collections::VecDeque<(usize, Vec<u8>)>,
    /// `metadata` as JSON, written into every bare event's envelope.
    metadata_json: Vec<u8>,
}

impl Builder<'_> {
    fn push(&mut self, record: EventRecord, number: usize) -> Result<(), String> {
        // Serialized once: the line stored, and for full records what a repeat is told by.
        let json = serde_json::to_vec(&record).map_err(|e| format!("record {}: {e}", record.id))?;
        if record.writer != self.writer {
            return self.add_full(&json, &record.info(), number);
        }
        self.batches.add(&json, &record.info())
    }

    /// Adds a full record's line unless it repeats one read before, which is skipped (the
    /// same line, or the same record written another way); a record with the writer and
    /// seq of an earlier one and other content is refused.
    fn add_full(
        &mut self,
        json: &[u8],
        info: &RecordInfo<'_>,
        number: usize,
    ) -> Result<(), String> {
        let seen = self.seen(info.writer).get(info.seq);
        if let Some(Given {
            batch,
            start,
            number: first,
        }) = seen
        {
            // A released batch's lines are decoded from the frame it kept.
            let line = if self.batches.list[batch].is_released() {
                let at = match self.decoded.iter().position(|(b, _)| *b == batch) {
                    Some(at) => at,
                    None => {
                        let objects = self.batches.log.refs().objects();
                        let lines = self.batches.list[batch].lines(objects).map_err(|e| {
                            format!("cannot read line {first} back: {}", crate::error_line(&e))
                        })?;
                        if self.decoded.len() == DECODED {
                            self.decoded.pop_front();
                        }
                        self.decoded.push_back((batch, lines.into_owned()));
                        self.decoded.len() - 1
                    }
                };
                crate::events::log::line_in(&self.decoded[at].1, start)
            } else {
                self.batches.list[batch].line_at(start)
            };
            same_record(line, json, (info.writer, info.seq), first)?;
            self.repeated += 1;
            return Ok(());
        }
        self.batches.add(json, info)?;
        let batch = self.batches.list.len() - 1;
        let given = Given {
            batch,
            start: self.batches.list[batch].bytes() - json.len() - 1,
            number,
        };
        self.seen(info.writer).insert(info.seq, given);
        Ok(())
    }

    /// The full records of `writer` read so far (made `hot`).
    fn seen(&mut self, writer: &str) -> &mut Seen {
        if self.hot.0 != writer {
            let taken = self.given.remove(writer).unwrap_or_default();
            let (cold, seen) = std::mem::replace(&mut self.hot, (writer.to_owned(), taken));
            self.given.insert(cold, seen);
        }
        &mut self.hot.1
    }

    /// Adds input line `number`, `text`, as [`parse_chunk`] made `item` of it (in
    /// `parsed`), to the batches.
    fn add(
        &mut self,
        parsed: &Parsed,
        item: &Item,
        text: &[u8],
        number: usize,
    ) -> Result<(), String> {
        let string = |at: &Range<usize>| &parsed.strings[at.clone()];
        match item {
            Item::Full {
                line,
                summary,
                timestamp,
                writer,
                seq,
            } => {
                let info = RecordInfo {
                    timestamp: string(timestamp),
                    event_type: string(&summary.event_type),
                    agent_id: summary.agent_id.as_ref().map(string),
                    duration_ms: summary.duration_ms,
                    writer: string(writer),
                    seq: *seq,
                    attachment: summary.attachment,
                };
                let line = match line {
                    Some(stored) => &parsed.out[stored.clone()],
                    None => text,
                };
                if info.writer == self.writer {
                    self.batches.add(line, &info)
                } else {
                    self.add_full(line, &info, number)
                }
            }
            Item::Bare(summary) => {
                let (id, timestamp) = new_id_and_timestamp();
                let seq = self.next_seq;
                let info = RecordInfo {
                    timestamp: &timestamp,
                    event_type: string(&summary.event_type),
                    agent_id: summary
                        .agent_id
                        .as_ref()
                        .map(string)
                        .or(self.metadata.agent_id.as_deref()),
                    duration_ms: summary.duration_ms,
                    writer: &self.writer,
                    seq,
                    attachment: summary.attachment,
                };
                // Its envelope written straight into the batch, around the event as given.
                let (writer, metadata_json) = (&self.writer, &self.metadata_json);
                self.batches.add_written(&info, |line| {
                    write_record_line(
                        line,
                        &id,
                        &timestamp,
                        writer,
                        seq,
                        None,
                        |l| {
                            l.extend_from_slice(text);
                            Ok(())
                        },
                        metadata_json,
                    )
                })?;
                self.next_seq += 1;
                Ok(())
            }
            Item::General => {
                let value: Value =
                    serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))?;
                let record = self.line(value)?;
                self.push(record, number)
            }
            Item::Refused(reason) => Err(reason.clone()),
        }
    }

    fn line(&mut self, value: Value) -> Result<EventRecord, String> {
        let Value::Object(mut obj) = value else {
            return Err("not a JSON object".into());
        };
        if obj.contains_key("event") {
            return full_record(obj);
        }
        match obj.get("event_type") {
            Some(Value::String(_)) => {}
            Some(_) => return Err("event_type must be a string".into()),
            None => return Err("not an event: no event_type".into()),
        }
        let mut metadata = self.metadata.clone();
        if let Some(Value::Object(extra)) = obj.remove("metadata") {
            merge_metadata(&mut metadata, extra);
        }
        let correlation_id = match obj.remove("correlation_id") {
            Some(Value::String(c)) => Some(c),
            _ => None,
        };
        let (id, timestamp) = new_id_and_timestamp();
        let record = EventRecord {
            v: RECORD_VERSION,
            id,
            timestamp,
            writer: self.writer.clone(),
            seq: self.next_seq,
            correlation_id,
            event: Value::Object(obj),
            metadata,
        };
        self.next_seq += 1;
        Ok(record)
    }
}

/// Input lines, read on the calling thread and parsed as one on another.
#[derive(Default)]
struct Chunk {
    /// The lines' text, trimmed, one after another.
    text: Vec<u8>,
    /// Each line that is not blank: where it is in `text`, and its line number.
    lines: Vec<(Range<usize>, usize)>,
}

impl Chunk {
    /// The lines read before a chunk is parsed (or fewer, when the input has no more
    /// ready), and the most bytes.
    const LINES: usize = 1000;
    const BYTES: usize = 1 << 20;

    /// Keeps the line read into `text` from `start` (trimmed), or drops it when blank.
    fn keep_line(&mut self, start: usize, number: usize) {
        let line = &self.text[start..];
        let leading = line.len() - line.trim_ascii_start().len();
        let kept = line.trim_ascii().len();
        if kept == 0 {
            self.text.truncate(start);
        } else {
            let at = start + leading;
            self.lines.push((at..at + kept, number));
        }
    }

    fn is_full(&self) -> bool {
        self.lines.len() >= Chunk::LINES || self.text.len() >= Chunk::BYTES
    }
}

/// What the parse of a chunk made of its lines: `items[i]` of the chunk's line `i`.
struct Parsed {
    chunk: Chunk,
    /// The full records' lines as they are stored, when that is not as they were read.
    out: Vec<u8>,
    /// The strings of their summaries, and of the bare events'.
    strings: String,
    items: Vec<Item>,
}

/// The fields of an event that its batch's summary needs, its strings as ranges of
/// [`Parsed::strings`].
struct Summary {
    event_type: Range<usize>,
    agent_id: Option<Range<usize>>,
    duration_ms: Option<u64>,
    attachment: Option<ObjectId>,
}

/// A line as parsed, before it is added to a batch.
enum Item {
    /// A full record of the usual types, its stored line at `line` of [`Parsed::out`]
    /// (`None`: the line as it was read, stored as it is).
    Full {
        line: Option<Range<usize>>,
        summary: Summary,
        timestamp: Range<usize>,
        writer: Range<usize>,
        seq: u64,
    },
    /// A bare event that keeps all its fields: the line is stored as written, in an
    /// envelope made when it is added (id, time and seq in input order).
    Bare(Summary),
    /// A line for the general path (which also refuses what is wrong).
    General,
    /// A line refused, and why.
    Refused(String),
}

/// Parses every line of `chunk` (what needs no state of the call: the reads, the checks,
/// a full record's line), so chunks can be parsed on several threads at once.
fn parse_chunk(chunk: Chunk) -> Parsed {
    let mut parsed = Parsed {
        out: Vec::new(),
        strings: String::new(),
        items: Vec::with_capacity(chunk.lines.len()),
        chunk: Chunk::default(),
    };
    for (at, _) in &chunk.lines {
        let item = parse_line(&chunk.text[at.clone()], &mut parsed);
        parsed.items.push(item);
    }
    parsed.chunk = chunk;
    parsed
}

fn parse_line(text: &[u8], parsed: &mut Parsed) -> Item {
    // Most lines are bare events without metadata of their own, or full records as
    // `events show --json` prints them (`{"v":…`): either is stored as written, in an
    // envelope written by hand. The likelier fast path is tried first, so a line is read
    // twice only when it is not what it looks like. UTF-8 is checked once for the whole
    // line, not string by string.
    let full_first = text.starts_with(b"{\"v\":");
    if let Ok(text) = std::str::from_utf8(text) {
        if text.starts_with("{\"v\":1,\"id\":\"")
            && let Some(item) = parse_stored(text, parsed)
        {
            return item;
        }
        for full in [full_first, !full_first] {
            let item = if full {
                parse_full(text, parsed)
            } else {
                parse_bare(text, parsed)
            };
            if let Some(item) = item {
                return item;
            }
        }
    }
    Item::General
}

/// Appends `s` to `strings`, returning where it is.
fn keep(strings: &mut String, s: &str) -> Range<usize> {
    let start = strings.len();
    strings.push_str(s);
    start..strings.len()
}

fn summary_of(event: &Summarised<'_>, strings: &mut String) -> Option<Summary> {
    Some(Summary {
        attachment: event.attachment().ok()?,
        event_type: keep(strings, &event.event_type),
        agent_id: event.agent_id.as_deref().map(|a| keep(strings, a)),
        duration_ms: event.duration_ms,
    })
}

/// A full record whose envelope is of the usual types and whose event keeps its
/// summarised fields' usual types: the envelope is written by hand (its timestamp in the
/// stored form), the event and the metadata stored as written. Read back, the record is
/// the one the general path stores. `None` when it needs the general path.
fn parse_full(text: &str, parsed: &mut Parsed) -> Option<Item> {
    let full = serde_json::from_str::<Full<'_>>(text).ok()?;
    if full.v != RECORD_VERSION {
        return None;
    }
    let event = Summarised::read(full.event.get())?;
    let metadata_agent = match full.metadata {
        None => None,
        Some(raw) => match serde_json::from_str::<MetadataView<'_>>(raw.get()) {
            Ok(m) if raw.get().starts_with('{') => m.agent_id,
            _ => return None,
        },
    };
    let mut summary = summary_of(&event, &mut parsed.strings)?;
    if summary.agent_id.is_none() {
        summary.agent_id = metadata_agent.map(|a| keep(&mut parsed.strings, &a));
    }
    let timestamp = match stored_timestamp(&full.timestamp) {
        Ok(t) => t,
        Err(reason) => return Some(Item::Refused(reason)),
    };
    let start = parsed.out.len();
    let written = write_record_line(
        &mut parsed.out,
        &full.id,
        &timestamp,
        &full.writer,
        full.seq,
        full.correlation_id.as_deref(),
        |l| {
            l.extend_from_slice(full.event.get().as_bytes());
            Ok(())
        },
        full.metadata
            .map_or(b"{}".as_slice(), |m| m.get().as_bytes()),
    );
    if let Err(e) = written {
        parsed.out.truncate(start);
        return Some(Item::Refused(e.to_string()));
    }
    Some(Item::Full {
        line: Some(start..parsed.out.len()),
        summary,
        timestamp: keep(&mut parsed.strings, &timestamp),
        writer: keep(&mut parsed.strings, &full.writer),
        seq: full.seq,
    })
}

/// A full record in the stored form ([`Stored`]) whose timestamp is in the stored form
/// and whose event keeps its summarised fields' usual types: its line is stored as it is.
/// Read back, the record is the one [`parse_full`] would store. `None` when it needs
/// another path.
fn parse_stored(text: &str, parsed: &mut Parsed) -> Option<Item> {
    let stored = serde_json::from_str::<Stored<'_>>(text).ok()?;
    if stored.v != RECORD_VERSION || !is_stored_timestamp(&stored.timestamp) {
        return None;
    }
    let mut summary = summary_of(&stored.event, &mut parsed.strings)?;
    if summary.agent_id.is_none() {
        summary.agent_id = stored
            .metadata
            .agent_id
            .as_deref()
            .map(|a| keep(&mut parsed.strings, a));
    }
    Some(Item::Full {
        line: None,
        summary,
        timestamp: keep(&mut parsed.strings, &stored.timestamp),
        writer: keep(&mut parsed.strings, &stored.writer),
        seq: stored.seq,
    })
}

/// A bare event that keeps all its fields (no `metadata`, `correlation_id` or `event` of
/// its own, every summarised field of the usual type): checked by a typed read, stored as
/// written. `None` when it needs the general path.
fn parse_bare(text: &str, parsed: &mut Parsed) -> Option<Item> {
    let bare = Summarised::read(text)?;
    if bare.metadata || bare.correlation_id || bare.event {
        return None;
    }
    let summary = summary_of(&bare, &mut parsed.strings)?;
    Some(Item::Bare(summary))
}

fn merge_metadata(metadata: &mut Metadata, extra: Map<String, Value>) {
    for (k, v) in extra {
        match (k.as_str(), v) {
            ("agent_id", Value::String(s)) => metadata.agent_id = Some(s),
            ("worktree", Value::String(s)) => metadata.worktree = Some(s),
            (_, v) => {
                metadata.extra.insert(k, v);
            }
        }
    }
}

fn full_record(mut obj: Map<String, Value>) -> Result<EventRecord, String> {
    let event = obj.get("event").ok_or("no event")?;
    match event.get("event_type") {
        Some(Value::String(_)) => {}
        _ => return Err("the record's event has no string event_type".into()),
    }
    for field in ["id", "timestamp", "writer"] {
        if !matches!(obj.get(field), Some(Value::String(_))) {
            return Err(format!("a full record needs a string {field:?}"));
        }
    }
    if !obj.get("seq").is_some_and(Value::is_u64) {
        return Err("a full record needs a numeric \"seq\"".into());
    }
    obj.entry("v").or_insert(Value::from(RECORD_VERSION));
    let ts = obj
        .get("timestamp")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ts = normalize_timestamp(ts)?;
    obj.insert("timestamp".into(), Value::String(ts));
    serde_json::from_value(Value::Object(obj)).map_err(|e| format!("not a valid record: {e}"))
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let log = EventLog::new(ctx.refs(), &repo, &args.job)?;
    let cwd = std::env::current_dir().ok();
    let metadata = Metadata {
        host: Some(
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        ),
        pid: Some(std::process::id()),
        worktree: cwd
            .and_then(|d| crate::repo::worktree_root(&d))
            .map(|p| p.display().to_string()),
        agent_id: None,
        extra: Map::new(),
    };
    let metadata_json = serde_json::to_vec(&metadata)?;
    let objects = log.refs().objects();
    // Reading and parsing on this thread, compressing and storing sealed batches on
    // another: the two overlap. Nothing is appended until every line has been read.
    let (sealed, to_store) = std::sync::mpsc::sync_channel::<Arc<Batch>>(4);
    let (repeated, done) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let writer = new_id();
        let fresh = writer.clone();
        let storing = scope.spawn(move || -> Result<ObjectBatch<'_>, ObjectError> {
            // One pack for a call of many batches, not a file each.
            let mut group = objects.batch().packed();
            for batch in to_store {
                // A full record's batch keeps its frame: a repeat of one of its records
                // is compared with its line, read back from the frame once the batch has
                // released its lines. The call's own batches are never looked at.
                if batch.writer() == Some(fresh.as_str()) {
                    batch.store_in(&mut group)?;
                } else {
                    batch.store_in_keeping_frame(&mut group)?;
                }
            }
            Ok(group)
        });
        let mut builder = Builder {
            batches: Batches {
                list: Vec::new(),
                size: args.batch_size,
                released: 0,
                sealed: Some(sealed),
                guard: None,
                log: &log,
            },
            writer,
            next_seq: 0,
            metadata,
            given: HashMap::new(),
            // No writer's records yet (the empty writer's too: none read).
            hot: (String::new(), Seen::default()),
            repeated: 0,
            decoded: std::collections::VecDeque::new(),
            metadata_json,
        };
        // An append of one batch (most calls) stores it itself, on this thread, and writes
        // nothing on the other; an append of many hands its last batch over too, so that
        // all of them share one pack.
        let read = read_input(&args, ctx, &mut builder, scope);
        if read.is_ok() && builder.batches.list.len() > 1 {
            builder.batches.seal().map_err(|e| anyhow!(e))?;
        }
        // Closing the channel ends the storing thread, after what was sealed.
        builder.batches.sealed = None;
        let stored = storing
            .join()
            .map_err(|_| anyhow!("the thread storing batch objects panicked"))?;
        // On a refused line, the stored group is dropped unused: its temp files go.
        read?;
        stored?.commit()?;
        let done = log.append_idempotent(&builder.batches.list, &builder.writer)?;
        Ok((builder.repeated, done))
    })?;
    let plural = if done.added == 1 { "" } else { "s" };
    write!(
        ctx.out,
        "appended {} event{plural} to {}",
        done.added,
        log.name()
    )?;
    let skipped = done.skipped + repeated;
    if skipped > 0 {
        let plural = if skipped == 1 { "" } else { "s" };
        write!(
            ctx.out,
            "; skipped {skipped} record{plural} already there (same writer, seq and content)"
        )?;
    }
    writeln!(ctx.out)?;
    Ok(Exit::Success)
}

/// Reads every line of the input (FILE or standard input) into `builder`; the first line
/// refused is the error. This thread reads the lines a chunk at a time; full chunks are
/// parsed by parsing threads (one per core, started with the first full chunk), each
/// chunk's lines then added here in input order. The last chunk, and what was read when
/// standard input stalls ([`STALLED`]), are parsed here once the others are added, so a
/// refused line is reported without waiting for more input.
fn read_input<'scope>(
    args: &Args,
    ctx: &mut Ctx<'_>,
    builder: &mut Builder<'_>,
    scope: &'scope Scope<'scope, '_>,
) -> anyhow::Result<()> {
    let mut file = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let file =
                File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?;
            Some(BufReader::with_capacity(1 << 16, file))
        }
        _ => None,
    };
    let mut parsing = Parsing {
        workers: Vec::new(),
        sent: 0,
        added: 0,
        scope,
    };
    let mut number = 0usize;
    let mut chunk = Chunk::default();
    // An input that cannot be read to its end: reported after the lines before it.
    let mut unread = None;
    loop {
        // Read into the chunk itself: a line is copied once, to its batch.
        let start = chunk.text.len();
        let read = match &mut file {
            Some(file) => crate::cli::append_bounded_line(file, &mut chunk.text),
            None => crate::cli::append_bounded_line(&mut *ctx.stdin, &mut chunk.text),
        };
        let complete = match read {
            Ok(Some(complete)) => complete,
            Ok(None) => break,
            Err(e) => {
                unread = Some(anyhow::Error::new(e).context("cannot read the input"));
                break;
            }
        };
        number += 1;
        if !complete {
            // Not kept: the line is not parsed.
            chunk.text.truncate(start);
            unread = Some(anyhow!(
                "line {number} is longer than {MAX_LINE} bytes; nothing was appended"
            ));
            break;
        }
        chunk.keep_line(start, number);
        if chunk.is_full() {
            parsing.send(std::mem::take(&mut chunk), builder)?;
        }
        // Before waiting for more input, what was read is checked (a bad line reported).
        // Only once standard input has stalled a while: a pipe that is empty for a moment
        // (its writer slower than this reader) keeps the parsing threads busy.
        let waiting = !chunk.lines.is_empty() || parsing.added < parsing.sent;
        if file.is_none() && waiting && ctx.stdin_waits(STALLED) {
            parsing.here(std::mem::take(&mut chunk), builder)?;
        }
    }
    parsing.here(chunk, builder)?;
    unread.map_or(Ok(()), Err)
}

/// The chunks handed to parsing threads and not yet added.
struct Parsing<'scope, 'env> {
    /// Each parsing thread's way in (chunks) and out (parsed chunks); chunk `n` goes to
    /// thread `n % workers.len()`.
    workers: Vec<(SyncSender<Chunk>, Receiver<Parsed>)>,
    /// Chunks handed out so far, and added so far.
    sent: usize,
    added: usize,
    scope: &'scope Scope<'scope, 'env>,
}

impl<'scope> Parsing<'scope, '_> {
    /// Hands `chunk` to a parsing thread (starting them first), after adding parsed
    /// chunks until each thread has at most one other: a thread never waits on this one
    /// while this one waits on it.
    fn send(&mut self, chunk: Chunk, builder: &mut Builder<'_>) -> anyhow::Result<()> {
        if self.workers.is_empty() {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            for _ in 0..cores.clamp(1, 4) {
                let (to_parse, chunks) = std::sync::mpsc::sync_channel::<Chunk>(1);
                let (done, parsed) = std::sync::mpsc::sync_channel::<Parsed>(1);
                self.scope.spawn(move || {
                    for chunk in chunks {
                        if done.send(parse_chunk(chunk)).is_err() {
                            return;
                        }
                    }
                });
                self.workers.push((to_parse, parsed));
            }
        }
        while self.sent - self.added >= self.workers.len() {
            self.add_next(builder)?;
        }
        let n = self.sent % self.workers.len();
        self.workers[n]
            .0
            .send(chunk)
            .map_err(|_| anyhow!("a thread parsing the input stopped"))?;
        self.sent += 1;
        Ok(())
    }

    /// Adds every chunk handed out, then parses and adds `chunk` on this thread.
    fn here(&mut self, chunk: Chunk, builder: &mut Builder<'_>) -> anyhow::Result<()> {
        while self.added < self.sent {
            self.add_next(builder)?;
        }
        add_parsed(&parse_chunk(chunk), builder)
    }

    /// Adds the next chunk in input order, once its thread has parsed it.
    fn add_next(&mut self, builder: &mut Builder<'_>) -> anyhow::Result<()> {
        let n = self.added % self.workers.len();
        let parsed = self.workers[n]
            .1
            .recv()
            .map_err(|_| anyhow!("a thread parsing the input stopped"))?;
        self.added += 1;
        add_parsed(&parsed, builder)
    }
}

/// Adds a parsed chunk's lines to the batches; the first line refused is the error.
fn add_parsed(parsed: &Parsed, builder: &mut Builder<'_>) -> anyhow::Result<()> {
    let lines = &parsed.chunk.lines;
    for (item, (at, number)) in parsed.items.iter().zip(lines) {
        let text = &parsed.chunk.text[at.clone()];
        builder
            .add(parsed, item, text, *number)
            .map_err(|reason| anyhow!("line {number}: {reason}; nothing was appended"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches drop their lines once the storing side has let go of them, in order; the
    /// batch being filled, and one still held, keep theirs.
    #[test]
    fn batches_release_their_lines_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::at(dir.path()).unwrap();
        let refs = crate::store::refs::RefStore::new(&home, Default::default());
        let log = EventLog::new(refs, "r", "j").unwrap();
        let (sealed, to_store) = std::sync::mpsc::sync_channel::<Arc<Batch>>(8);
        let mut batches = Batches {
            list: Vec::new(),
            size: 2,
            released: 0,
            sealed: Some(sealed),
            guard: None,
            log: &log,
        };
        let add = |batches: &mut Batches<'_>, writer: &str, seq: u64| {
            let info = RecordInfo {
                timestamp: "2026-12-07T00:00:00.000000Z",
                event_type: "plain",
                agent_id: None,
                duration_ms: None,
                writer,
                seq,
                attachment: None,
            };
            batches.add(b"{}", &info).unwrap();
        };
        for seq in 0..4 {
            add(&mut batches, "fresh", seq);
        }
        add(&mut batches, "other", 0);
        add(&mut batches, "other", 1);
        // Sealed so far: fresh 0-1, fresh 2-3; both still held by the channel.
        let held: Vec<Arc<Batch>> = to_store.try_iter().collect();
        assert_eq!(held.len(), 2);
        assert!(batches.list.iter().all(|b| !b.is_released()));
        let mut group = log.refs().objects().batch();
        for batch in &held {
            batch.store_in(&mut group).unwrap();
        }
        drop(held);
        add(&mut batches, "fresh", 4);
        let released = |batches: &Batches<'_>| -> Vec<bool> {
            batches.list.iter().map(|b| b.is_released()).collect()
        };
        // fresh 0-1 and 2-3 let go of; other 0-1 still held; fresh 4 being filled.
        assert_eq!(released(&batches), [true, true, false, false]);
        assert_eq!(batches.list[0].len(), 2);
        for batch in to_store.try_iter() {
            batch.store_in(&mut group).unwrap();
        }
        add(&mut batches, "fresh", 5);
        add(&mut batches, "fresh", 6);
        // fresh 4-5 now held; other 0-1 let go of.
        assert_eq!(released(&batches), [true, true, true, false, false]);
        // A batch let go of unstored (a storing side that failed) keeps its lines, and
        // so do the ones after it.
        drop(to_store.try_iter().collect::<Vec<_>>());
        add(&mut batches, "fresh", 7);
        add(&mut batches, "fresh", 8);
        assert_eq!(released(&batches), [true, true, true, false, false, false]);
    }

    #[test]
    fn seen_records_are_found_whatever_order_their_seqs_came_in() {
        let at = |number| Given {
            batch: 0,
            start: 0,
            number,
        };
        let mut seen = Seen::default();
        for seq in [5, 6, 9] {
            assert!(seen.get(seq).is_none());
            seen.insert(seq, at(seq as usize));
        }
        let found = |seen: &Seen, seq| seen.get(seq).map(|g| g.number);
        assert_eq!(found(&seen, 6), Some(6));
        assert_eq!(found(&seen, 7), None);
        assert_eq!(found(&seen, 10), None);
        assert_eq!(found(&seen, 4), None);
        // A seq lower than the last: from then on, by seq.
        seen.insert(2, at(2));
        assert!(seen.by_seq.is_some());
        for seq in [2, 5, 6, 9] {
            assert_eq!(found(&seen, seq), Some(seq as usize));
        }
        assert_eq!(found(&seen, 3), None);
        seen.insert(3, at(3));
        assert_eq!(found(&seen, 3), Some(3));
    }
}
