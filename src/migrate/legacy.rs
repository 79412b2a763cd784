//! The original tool's repo-local `.prodigy/`: where its files are, and how each kind of
//! record becomes ours. Nothing here writes; [`super`] imports what this reads.
//!
//! The shapes are those of the original at its last repo-local revision (see
//! `../shared/fixtures/legacy-local/README.md`): JSON Lines event records with nanosecond
//! timestamps, `d_l_q_*` event tags and `[secs, nanos]` durations; pretty-printed DLQ items
//! with an externally tagged `ErrorType`; `MapReduceJobState` checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Reason, Rejection};
use crate::dlq::classify::{self, ErrorType};
use crate::dlq::{DeadLetteredItem, FailureDetail, eligibility};
use crate::events::Metadata;
use crate::events::record::{RecordInfo, normalize_timestamp, write_record_line};
use crate::state::{Checkpoint, Counters, ItemResult, ItemStatus, Phase};

/// Top-level names of a store's home: in the compatibility mode `<repo>/.prodigy` is both
/// the store and the original's directory, and these are never legacy data.
const STORE_NAMES: [&str; 10] = [
    "objects",
    "dlq",
    "state",
    "archive",
    "repos",
    "worktrees",
    "gc.lock",
    "config.json",
    "legacy-warned",
    "events",
];

/// Where the job of an event file's records comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFrom {
    /// A per-job file (`events/<job>/events-*.jsonl`): the directory names the job.
    Dir(String),
    /// A file of many jobs (the executor's `global/events.jsonl`, the archive): each
    /// event's `job_id`.
    Event,
}

/// One legacy file, by its path relative to the repository and on disk.
#[derive(Debug, Clone)]
pub struct LegacyFile {
    /// Relative to the repository root: `.prodigy/mapreduce/events/global/events.jsonl`.
    pub rel: String,
    /// On disk.
    pub path: PathBuf,
}

/// An event file.
#[derive(Debug, Clone)]
pub struct EventFile {
    /// The file.
    pub file: LegacyFile,
    /// Where its records' job comes from.
    pub job: JobFrom,
}

/// A job's directory of DLQ items or of checkpoints.
#[derive(Debug, Clone)]
pub struct JobDir {
    /// The directory's name (the job id the original used).
    pub job: String,
    /// The directory.
    pub dir: PathBuf,
    /// Item files, or checkpoint files with their versions (sorted by version).
    pub files: Vec<(u32, LegacyFile)>,
    /// `index.json` (DLQ) or `metadata.json` (checkpoints): derived, never imported.
    pub index: Option<LegacyFile>,
}

/// Everything found under `<repo>/.prodigy`.
#[derive(Debug, Default)]
pub struct Tree {
    /// Event files, in path order.
    pub events: Vec<EventFile>,
    /// DLQ directories.
    pub dlq: Vec<JobDir>,
    /// Checkpoint directories.
    pub checkpoints: Vec<JobDir>,
    /// Files and directories that are no legacy data this version knows (left alone).
    pub unknown: Vec<String>,
    /// Directories that could not be listed.
    pub problems: Vec<Rejection>,
    /// The directories holding legacy data, deepest first (removed when empty).
    pub dirs: Vec<PathBuf>,
}

struct Scanner<'a> {
    root: &'a Path,
    tree: Tree,
}

/// A directory entry: its name, path and whether it is a real directory or file.
struct Entry {
    name: String,
    path: PathBuf,
    is_dir: bool,
    is_file: bool,
}

impl Scanner<'_> {
    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn file(&self, path: &Path) -> LegacyFile {
        LegacyFile {
            rel: self.rel(path),
            path: path.to_path_buf(),
        }
    }

    /// The entries of `dir` sorted by name; a missing directory has none, an unreadable
    /// one is reported. Symlinks are neither files nor directories here (never followed).
    fn entries(&mut self, dir: &Path) -> Vec<Entry> {
        if let Some(link) = symlink_on_the_way(self.root, dir) {
            self.symlink(&link);
            return Vec::new();
        }
        let read = match fs::read_dir(dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                let rel = self.rel(dir);
                self.tree.problems.push(Rejection::file(
                    rel,
                    Reason::UnreadableFile,
                    format!("cannot list the directory: {e}"),
                ));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for entry in read {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let rel = self.rel(dir);
                    self.tree.problems.push(Rejection::file(
                        rel,
                        Reason::UnreadableFile,
                        format!("cannot list the directory: {e}"),
                    ));
                    break;
                }
            };
            let kind = entry.file_type().ok();
            if kind.is_some_and(|k| k.is_symlink()) {
                self.symlink(&entry.path());
                continue;
            }
            out.push(Entry {
                name: entry.file_name().to_string_lossy().into_owned(),
                path: entry.path(),
                is_dir: kind.is_some_and(|k| k.is_dir()),
                is_file: kind.is_some_and(|k| k.is_file()),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Refuses a symbolic link (once), naming it.
    fn symlink(&mut self, link: &Path) {
        let rel = self.rel(link);
        if self.tree.problems.iter().any(|p| p.path == rel) {
            return;
        }
        let target = fs::read_link(link)
            .map(|t| format!(" (to '{}')", t.display()))
            .unwrap_or_default();
        self.tree.problems.push(Rejection::file(
            rel,
            Reason::Symlink,
            format!(
                "a symbolic link{target}: never followed, nothing imported or removed through it"
            ),
        ));
    }

    fn unknown(&mut self, path: &Path) {
        let rel = self.rel(path);
        self.tree.unknown.push(rel);
    }

    /// Event files in `dir` (`*.jsonl`, `*.jsonl.gz`); other files are unknown,
    /// subdirectories are skipped when `skip_dirs` (a local store's refs live beside).
    fn event_dir(&mut self, dir: &Path, job: JobFrom, skip_dirs: bool) {
        for e in self.entries(dir) {
            if e.is_file && is_event_file_name(&e.name) {
                let file = self.file(&e.path);
                self.tree.events.push(EventFile {
                    file,
                    job: job.clone(),
                });
            } else if !(e.is_dir && skip_dirs) {
                self.unknown(&e.path);
            }
        }
    }

    /// A directory of event files: `<root>/<many>/` and files directly in `<root>` hold
    /// many jobs, `<root>/<job>/` one. Every subdirectory is removed once empty (a local
    /// store's `events/<repo>/` never is: it holds job directories).
    fn events_root(&mut self, root: &Path, many: &str, skip_dirs: bool) {
        for e in self.entries(root) {
            if e.is_dir {
                let job = if e.name == many {
                    JobFrom::Event
                } else {
                    JobFrom::Dir(e.name.clone())
                };
                self.event_dir(&e.path, job, skip_dirs);
                self.tree.dirs.push(e.path);
            } else if e.is_file && is_event_file_name(&e.name) {
                let file = self.file(&e.path);
                self.tree.events.push(EventFile {
                    file,
                    job: JobFrom::Event,
                });
            } else {
                self.unknown(&e.path);
            }
        }
    }

    /// `<dir>/<job>/…` directories of DLQ items or checkpoints.
    fn job_dirs(&mut self, dir: &Path, dlq: bool) -> Vec<JobDir> {
        let mut out = Vec::new();
        for e in self.entries(dir) {
            if !e.is_dir {
                self.unknown(&e.path);
                continue;
            }
            let mut job = JobDir {
                job: e.name.clone(),
                dir: e.path.clone(),
                files: Vec::new(),
                index: None,
            };
            let files_dir = if dlq {
                e.path.join("items")
            } else {
                e.path.clone()
            };
            for f in self.entries(&e.path) {
                match f.name.as_str() {
                    "index.json" if dlq && f.is_file => job.index = Some(self.file(&f.path)),
                    "metadata.json" if !dlq && f.is_file => job.index = Some(self.file(&f.path)),
                    "items" if dlq && f.is_dir => {}
                    name if !dlq && f.is_file => match checkpoint_version(name) {
                        Some(v) => job.files.push((v, self.file(&f.path))),
                        None => self.unknown(&f.path),
                    },
                    _ => self.unknown(&f.path),
                }
            }
            if dlq {
                for f in self.entries(&files_dir) {
                    if f.is_file && f.name.ends_with(".json") {
                        job.files.push((0, self.file(&f.path)));
                    } else {
                        self.unknown(&f.path);
                    }
                }
                self.tree.dirs.push(files_dir);
            }
            job.files
                .sort_by(|a, b| (a.0, &a.1.rel).cmp(&(b.0, &b.1.rel)));
            self.tree.dirs.push(e.path);
            out.push(job);
        }
        out
    }
}

fn is_event_file_name(name: &str) -> bool {
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")
}

/// `checkpoint-v13.json` → 13.
fn checkpoint_version(name: &str) -> Option<u32> {
    name.strip_prefix("checkpoint-v")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// Finds the legacy files under `<root>/.prodigy` (`root` is the repository's root).
pub fn scan(root: &Path) -> Tree {
    let dot = root.join(crate::storage::LOCAL_DIR);
    let mut s = Scanner {
        root,
        tree: Tree::default(),
    };
    // The executor's files: mapreduce/events/global/*.jsonl, and per-job directories
    // beside it (what `FileEventWriter` with base `.prodigy/mapreduce` would write).
    let mr = dot.join("mapreduce");
    let mr_events = mr.join("events");
    s.events_root(&mr_events, "global", false);
    // events/<job>/events-*.jsonl (FileEventWriter), events/archive/*.jsonl.gz (retention).
    // In the compatibility mode events/<repo>/<job>/ holds refs: directories, skipped.
    let events = dot.join("events");
    s.events_root(&events, "archive", true);
    let dlq = s.job_dirs(&mr.join("dlq"), true);
    let checkpoints = s.job_dirs(&mr.join("jobs"), false);
    s.tree.dlq = dlq;
    s.tree.checkpoints = checkpoints;
    for e in s.entries(&mr) {
        if !matches!(e.name.as_str(), "events" | "dlq" | "jobs") {
            s.unknown(&e.path);
        }
    }
    for e in s.entries(&dot) {
        if e.name != "mapreduce" && !STORE_NAMES.contains(&e.name.as_str()) {
            s.unknown(&e.path);
        }
    }
    for dir in [
        mr.join("dlq"),
        mr.join("jobs"),
        mr_events,
        mr,
        events,
        dot.clone(),
    ] {
        s.tree.dirs.push(dir);
    }
    // Nothing is removed through a symlink: `.prodigy/mapreduce` a link makes
    // `.prodigy/mapreduce/dlq` a directory somewhere else.
    s.tree
        .dirs
        .retain(|d| symlink_on_the_way(root, d).is_none());
    s.tree.events.sort_by(|a, b| a.file.rel.cmp(&b.file.rel));
    s.tree
}

/// The first symbolic link among the components of `path` below `root` (`path` itself
/// included), if any; `root` (the repository) is the user's own choice and is trusted.
fn symlink_on_the_way(root: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Some(at),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// True when `<root>/.prodigy` holds data of the original tool (a quick look, for the
/// warning every command gives): `mapreduce/`, or event files under `events/`.
pub fn present(root: &Path) -> bool {
    let dot = root.join(crate::storage::LOCAL_DIR);
    // Through a symlink nothing is migrated, so nothing is announced either.
    let real = |dir: &Path| symlink_on_the_way(root, dir).is_none();
    let mapreduce = dot.join("mapreduce");
    if real(&mapreduce) && mapreduce.is_dir() {
        return true;
    }
    let events = dot.join("events");
    if !real(&events) {
        return false;
    }
    let Ok(read) = fs::read_dir(events) else {
        return false;
    };
    read.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        match e.file_type() {
            Ok(t) if t.is_file() => is_event_file_name(&name),
            Ok(t) if t.is_dir() => fs::read_dir(e.path()).is_ok_and(|mut r| {
                r.any(|f| f.is_ok_and(|f| is_event_file_name(&f.file_name().to_string_lossy())))
            }),
            _ => false,
        }
    })
}

/// A file's text: gzip is recognised by its magic bytes (`1f 8b`), not its name — the
/// original renamed rotated files to `*.jsonl.gz` without compressing them.
pub struct Content {
    /// The (decompressed) bytes.
    pub bytes: Vec<u8>,
    /// True when the file was gzip.
    pub gzip: bool,
    /// Why decompression stopped early (`bytes` holds what came before).
    pub error: Option<String>,
}

/// Reads an event file, decompressing gzip.
pub fn read_content(path: &Path) -> std::io::Result<Content> {
    let raw = crate::fsutil::read_nofollow(path)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(Content {
            bytes: raw,
            gzip: false,
            error: None,
        });
    }
    let mut bytes = Vec::new();
    let error = crate::fsutil::read_to_end_limited(
        flate2::read::MultiGzDecoder::new(&raw[..]),
        crate::store::object::MAX_OBJECT_SIZE,
        &mut bytes,
    )
    .err()
    .map(|e| match e.kind() {
        // Refused whole: what it would inflate to is past what an object may hold.
        std::io::ErrorKind::FileTooLarge => format!("the gzip stream inflates {e}"),
        _ => format!("the gzip stream is damaged: {e}"),
    });
    Ok(Content {
        bytes,
        gzip: true,
        error,
    })
}

/// An event file read and every line parsed.
pub struct ParsedFile {
    /// True when the file was gzip.
    pub gzip: bool,
    /// Why decompression stopped early.
    pub error: Option<String>,
    /// Every line, in order.
    pub lines: Vec<Line>,
}

/// Lines parsed per task (the parse is spread over the cores in chunks of this many).
const CHUNK_LINES: usize = 4096;

/// Reads event files (one after the other) and parses their lines on every core.
pub fn parse_event_files(paths: &[&Path]) -> Vec<std::io::Result<ParsedFile>> {
    let contents: Vec<std::io::Result<Content>> = paths.iter().map(|p| read_content(p)).collect();
    // (file, its lines, terminated) and chunks of (file, first line, end).
    let mut split: Vec<(Vec<&[u8]>, bool)> = Vec::with_capacity(contents.len());
    let mut chunks = Vec::new();
    for (file, content) in contents.iter().enumerate() {
        let (lines, terminated) = match content {
            Ok(c) => {
                let mut lines: Vec<&[u8]> = c.bytes.split(|b| *b == b'\n').collect();
                let terminated = c.bytes.last().is_none_or(|b| *b == b'\n');
                if terminated {
                    lines.pop();
                }
                (lines, terminated)
            }
            Err(_) => (Vec::new(), true),
        };
        for start in (0..lines.len()).step_by(CHUNK_LINES) {
            chunks.push((file, start, (start + CHUNK_LINES).min(lines.len())));
        }
        split.push((lines, terminated));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parsed = crate::par::map(&chunks, threads, |&(file, start, end)| {
        let (lines, terminated) = &split[file];
        (start..end)
            .map(|n| event_line(lines[n], !terminated && n + 1 == lines.len()))
            .collect::<Vec<Line>>()
    });
    let mut out: Vec<std::io::Result<ParsedFile>> = contents
        .into_iter()
        .map(|c| {
            c.map(|c| ParsedFile {
                gzip: c.gzip,
                error: c.error,
                lines: Vec::new(),
            })
        })
        .collect();
    for ((file, _, _), lines) in chunks.iter().zip(parsed) {
        if let Ok(f) = &mut out[*file] {
            f.lines.extend(lines);
        }
    }
    out
}

/// One legacy event, converted and kept compact (the event and metadata as JSON): its
/// `writer` and `seq` are given when it is imported ([`LegacyEvent::write_line`]).
#[derive(Debug)]
pub struct LegacyEvent {
    /// The event's own `job_id`, if it has one.
    pub job_id: Option<String>,
    /// Its original timestamp (nanoseconds), for ordering.
    pub at: jiff::Timestamp,
    /// The original id.
    pub id: String,
    /// The stored timestamp (microseconds).
    pub timestamp: String,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// The converted event's `event_type`.
    pub event_type: String,
    /// Its agent.
    pub agent_id: Option<String>,
    /// Its duration.
    pub duration_ms: Option<u64>,
    /// The converted event, as JSON.
    pub event: Vec<u8>,
    /// The metadata, as JSON.
    pub metadata: Vec<u8>,
}

impl LegacyEvent {
    /// Lays out the record as `writer`'s `seq`-th into `line`; returns what a batch
    /// summary needs.
    pub fn write_line<'a>(
        &'a self,
        line: &mut Vec<u8>,
        writer: &'a str,
        seq: u64,
    ) -> Result<RecordInfo<'a>, serde_json::Error> {
        line.clear();
        write_record_line(
            line,
            &self.id,
            &self.timestamp,
            writer,
            seq,
            self.correlation_id.as_deref(),
            |l| {
                l.extend_from_slice(&self.event);
                Ok(())
            },
            &self.metadata,
        )?;
        Ok(RecordInfo {
            timestamp: &self.timestamp,
            event_type: &self.event_type,
            agent_id: self.agent_id.as_deref(),
            duration_ms: self.duration_ms,
            writer,
            seq,
            attachment: None,
        })
    }
}

/// What one line is.
#[derive(Debug)]
pub enum Line {
    /// Empty or whitespace.
    Blank,
    /// An event.
    Event(Box<LegacyEvent>),
    /// Refused, with why.
    Rejected(Reason, String),
}

/// Parses and converts one line; `unterminated` is true for a last line without its
/// newline (a writer killed mid-line).
pub fn event_line(line: &[u8], unterminated: bool) -> Line {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Line::Blank;
    }
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) if unterminated && e.is_eof() => {
            return Line::Rejected(Reason::TruncatedLine, format!("the line ends early: {e}"));
        }
        Err(e) => return Line::Rejected(Reason::InvalidJson, e.to_string()),
    };
    let Value::Object(mut obj) = value else {
        return Line::Rejected(Reason::NotAnEventRecord, "not a JSON object".into());
    };
    let id = match obj.remove("id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => return Line::Rejected(Reason::NotAnEventRecord, "no string \"id\"".into()),
    };
    let Some(Value::String(ts)) = obj.remove("timestamp") else {
        return Line::Rejected(Reason::NotAnEventRecord, "no string \"timestamp\"".into());
    };
    let event = match obj.remove("event") {
        Some(Value::Object(event)) if matches!(event.get("event_type"), Some(Value::String(_))) => {
            event
        }
        _ => {
            return Line::Rejected(
                Reason::NotAnEventRecord,
                "no \"event\" object with a string \"event_type\"".into(),
            );
        }
    };
    let at: jiff::Timestamp = match ts.parse() {
        Ok(at) => at,
        Err(e) => {
            return Line::Rejected(Reason::InvalidTimestamp, format!("timestamp {ts:?}: {e}"));
        }
    };
    let job_id = event
        .get("job_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let correlation_id = match obj.remove("correlation_id") {
        Some(Value::String(c)) => Some(c),
        _ => None,
    };
    let metadata = match obj.remove("metadata") {
        Some(Value::Object(m)) => metadata(m),
        _ => Metadata::default(),
    };
    let event = convert_event(event);
    let text = |k: &str| event.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Ok(event_json), Ok(metadata_json)) =
        (serde_json::to_vec(&event), serde_json::to_vec(&metadata))
    else {
        return Line::Rejected(Reason::NotAnEventRecord, "cannot be serialised".into());
    };
    Line::Event(Box::new(LegacyEvent {
        job_id,
        at,
        timestamp: crate::events::record::format_timestamp(at),
        correlation_id,
        event_type: text("event_type").unwrap_or_default(),
        agent_id: text("agent_id").or_else(|| metadata.agent_id.clone()),
        duration_ms: event.get("duration_ms").and_then(Value::as_u64),
        id,
        event: event_json,
        metadata: metadata_json,
    }))
}

/// The original's metadata map: `host` and `pid` have their own fields, the rest
/// (`thread`, …) is kept as it was.
fn metadata(map: Map<String, Value>) -> Metadata {
    let mut out = Metadata::default();
    for (k, v) in map {
        match (k.as_str(), v) {
            ("host", Value::String(s)) => out.host = Some(s),
            ("pid", Value::Number(n)) if n.as_u64().is_some_and(|p| p <= u32::MAX as u64) => {
                out.pid = n.as_u64().map(|p| p as u32);
            }
            ("worktree", Value::String(s)) => out.worktree = Some(s),
            ("agent_id", Value::String(s)) => out.agent_id = Some(s),
            (_, v) => {
                out.extra.insert(k, v);
            }
        }
    }
    out
}

/// The original's event as ours: `d_l_q_*` tags become `dlq_*`, a `duration` (chrono's
/// `[secs, nanos]` or std's `{secs, nanos}`) becomes whole `duration_ms`, and an inner
/// `timestamp` is stored like ours (microseconds, UTC).
pub fn convert_event(mut event: Map<String, Value>) -> Map<String, Value> {
    if let Some(Value::String(t)) = event.get_mut("event_type")
        && let Some(rest) = t.strip_prefix("d_l_q_")
    {
        *t = format!("dlq_{rest}");
    }
    if let Some(ms) = event.get("duration").and_then(duration_ms) {
        event.remove("duration");
        event.insert("duration_ms".into(), ms.into());
    }
    if let Some(Value::String(ts)) = event.get_mut("timestamp")
        && let Ok(norm) = normalize_timestamp(ts)
    {
        *ts = norm;
    }
    event
}

/// `[secs, nanos]` or `{"secs": s, "nanos": n}` in whole milliseconds.
pub fn duration_ms(value: &Value) -> Option<u64> {
    let (secs, nanos) = match value {
        Value::Array(a) if a.len() == 2 => (a[0].as_u64()?, a[1].as_u64()?),
        Value::Object(o) => (o.get("secs")?.as_u64()?, o.get("nanos")?.as_u64()?),
        _ => return None,
    };
    secs.checked_mul(1000)?.checked_add(nanos / 1_000_000)
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn timestamp(v: &Value, key: &str) -> Result<String, String> {
    let ts = text(v, key).ok_or_else(|| format!("no string {key:?}"))?;
    normalize_timestamp(&ts)
}

/// The original's `ErrorType` (externally tagged: `"Timeout"`,
/// `{"CommandFailed":{"exit_code":101}}`, …); anything else is classified from the message.
fn error_type(v: &Value, message: &str) -> ErrorType {
    match v {
        Value::String(s) => match s.as_str() {
            "Timeout" => ErrorType::Timeout,
            "WorktreeError" => ErrorType::WorktreeError,
            "MergeConflict" => ErrorType::MergeConflict,
            "ValidationFailed" => ErrorType::ValidationFailed,
            "ResourceExhausted" => ErrorType::ResourceExhausted,
            "Unknown" => ErrorType::Unknown,
            _ => classify::classify(message, None),
        },
        Value::Object(o) => match o.get("CommandFailed") {
            Some(c) => ErrorType::CommandFailed {
                exit_code: c
                    .get("exit_code")
                    .and_then(Value::as_i64)
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(1),
            },
            None => classify::classify(message, None),
        },
        _ => classify::classify(message, None),
    }
}

/// A `DeadLetteredItem` of the original as ours. The error signature is computed again by
/// our rule, so imported and new failures group together; the flags are kept as the
/// original decided them.
pub fn dlq_item(bytes: &[u8]) -> Result<DeadLetteredItem, (Reason, String)> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| (Reason::InvalidJson, e.to_string()))?;
    let bad = |m: String| (Reason::NotADlqItem, m);
    let item_id = text(&v, "item_id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("no string \"item_id\"".into()))?;
    let history = v
        .get("failure_history")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"failure_history\" array".into()))?;
    let mut failures = Vec::with_capacity(history.len());
    for (i, f) in history.iter().enumerate() {
        let message = text(f, "error_message").unwrap_or_default();
        let error_type = error_type(f.get("error_type").unwrap_or(&Value::Null), &message);
        let exit_code = match error_type {
            ErrorType::CommandFailed { exit_code } => Some(exit_code),
            _ => None,
        };
        failures.push(FailureDetail {
            attempt: f
                .get("attempt_number")
                .and_then(Value::as_u64)
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(i as u32 + 1),
            timestamp: timestamp(f, "timestamp").map_err(|m| bad(format!("failure {i}: {m}")))?,
            error_type,
            error_message: message,
            exit_code,
            agent_id: text(f, "agent_id"),
            step: text(f, "step_failed"),
            duration_ms: f.get("duration_ms").and_then(Value::as_u64),
            log_location: None,
            stack_trace: text(f, "stack_trace"),
        });
    }
    let last = failures.last();
    let failure_count = v
        .get("failure_count")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(failures.len() as u32);
    let (eligible, review) = match last {
        Some(f) => eligibility(&f.error_type, failure_count),
        None => (true, false),
    };
    let error_signature = match last {
        Some(f) => classify::signature(&f.error_type, &f.error_message),
        None => text(&v, "error_signature").unwrap_or_default(),
    };
    let first = last.map(|_| &failures[0].timestamp);
    Ok(DeadLetteredItem {
        first_attempt: timestamp(&v, "first_attempt")
            .or_else(|e| first.cloned().ok_or(e))
            .map_err(bad)?,
        last_attempt: timestamp(&v, "last_attempt")
            .or_else(|e| last.map(|f| f.timestamp.clone()).ok_or(e))
            .map_err(bad)?,
        item_id,
        item_data: v.get("item_data").cloned().unwrap_or(Value::Null),
        failure_count,
        failure_history: failures,
        error_signature,
        worktree_artifacts: v
            .get("worktree_artifacts")
            .filter(|a| !a.is_null())
            .cloned(),
        reprocess_eligible: v
            .get("reprocess_eligible")
            .and_then(Value::as_bool)
            .unwrap_or(eligible),
        manual_review_required: v
            .get("manual_review_required")
            .and_then(Value::as_bool)
            .unwrap_or(review),
    })
}

/// A `MapReduceJobState` of the original, converted.
#[derive(Debug)]
pub struct LegacyCheckpoint {
    /// Its `job_id`.
    pub job_id: String,
    /// Its `checkpoint_version`.
    pub version: u32,
    /// `started_at` (stored form).
    pub started: String,
    /// `config` (the original's `MapReduceConfig`).
    pub config: Value,
    /// `parent_worktree`.
    pub parent_worktree: Option<String>,
    /// The checkpoint (full; `parent`, `spec`, `items` and `original` are filled in by
    /// [`crate::state::JobStateManager::import`]).
    pub checkpoint: Checkpoint,
    /// `work_items`.
    pub items: Vec<Value>,
    /// Results naming items that are not in `work_items` (left out).
    pub unknown_items: Vec<String>,
}

/// The item id the original gave the item at `index`: its `id` field (string or number),
/// else `item_<index>`.
fn original_item_id(index: usize, item: &Value) -> String {
    match item.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("item_{index}"),
    }
}

/// Converts a checkpoint file of the original. `reason` is what our checkpoint says
/// about where it came from.
pub fn checkpoint(bytes: &[u8], reason: &str) -> Result<LegacyCheckpoint, (Reason, String)> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| (Reason::InvalidJson, e.to_string()))?;
    let bad = |m: String| (Reason::NotACheckpoint, m);
    let job_id = text(&v, "job_id").ok_or_else(|| bad("no string \"job_id\"".into()))?;
    let version = v
        .get("checkpoint_version")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad("no \"checkpoint_version\"".into()))?;
    let items = v
        .get("work_items")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| bad("no \"work_items\" array".into()))?;
    let started = timestamp(&v, "started_at").map_err(bad)?;
    let updated = timestamp(&v, "updated_at").map_err(bad)?;
    let mut index_of = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        index_of.entry(original_item_id(i, item)).or_insert(i);
    }
    let reduce = v.get("reduce_phase_state").filter(|r| r.is_object());
    let reduce_started = reduce
        .and_then(|r| r.get("started"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let complete = v
        .get("is_complete")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let failed = v.get("failed_agents").and_then(Value::as_object);
    let mut delta = BTreeMap::new();
    let mut counters = Counters {
        total: items.len(),
        ..Counters::default()
    };
    let mut unknown_items = Vec::new();
    let results = v.get("agent_results").and_then(Value::as_object);
    for (id, r) in results.into_iter().flatten() {
        let Some(&index) = index_of.get(id) else {
            unknown_items.push(id.clone());
            continue;
        };
        // AgentStatus: "Success", {"Failed": msg}, "Timeout"; Pending, Running and
        // Retrying are not finished.
        let (status, status_error) = match r.get("status") {
            Some(Value::String(s)) if s == "Success" => (ItemStatus::Done, None),
            Some(Value::String(s)) if s == "Timeout" => {
                (ItemStatus::Failed, Some("timed out".to_owned()))
            }
            Some(Value::Object(o)) if o.contains_key("Failed") => (
                ItemStatus::Failed,
                o.get("Failed").and_then(Value::as_str).map(str::to_owned),
            ),
            _ => continue,
        };
        match status {
            ItemStatus::Done => counters.done += 1,
            ItemStatus::Failed => counters.failed += 1,
        }
        let attempts = failed
            .and_then(|f| f.get(id))
            .and_then(|f| f.get("attempts"))
            .and_then(Value::as_u64)
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(1);
        let key = crate::state::item_key(index, &items[index]);
        delta.insert(
            key,
            ItemResult {
                index,
                status,
                agent_id: String::new(),
                attempts,
                duration_ms: r.get("duration").and_then(duration_ms).unwrap_or(0),
                commits: r
                    .get("commits")
                    .and_then(Value::as_array)
                    .map(|c| {
                        c.iter()
                            .filter_map(|c| c.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                // The original merged every agent's branch before its reduce phase.
                merged: status == ItemStatus::Done && reduce_started,
                output: text(r, "output"),
                error: text(r, "error").or(status_error),
            },
        );
    }
    let phase = if complete {
        Phase::Complete
    } else if reduce_started {
        Phase::Reduce
    } else {
        Phase::Map
    };
    let ended = complete.then(|| {
        reduce
            .and_then(|r| timestamp(r, "completed_at").ok())
            .unwrap_or_else(|| updated.clone())
    });
    let reduce_done = reduce
        .and_then(|r| r.get("executed_commands"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let checkpoint = Checkpoint {
        v: 1,
        parent: None,
        version,
        created: updated,
        reason: reason.to_owned(),
        spec: crate::store::object::ObjectId::ZERO,
        items: None,
        phase,
        setup_done: 0,
        reduce_done,
        captured: BTreeMap::new(),
        setup_captured: BTreeMap::new(),
        map_base: None,
        job_head: None,
        counters,
        running: BTreeMap::new(),
        base: None,
        hops: 0,
        full: true,
        delta,
        ended,
        error: reduce.and_then(|r| text(r, "error")),
        original: None,
        rewound: None,
        rewind_pending: false,
    };
    Ok(LegacyCheckpoint {
        job_id,
        version,
        started,
        config: v.get("config").cloned().unwrap_or(Value::Null),
        parent_worktree: text(&v, "parent_worktree"),
        checkpoint,
        items,
        unknown_items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_mapped_to_ours() {
        let line = br#"{"id":"x","timestamp":"2025-01-09T10:53:20.056893732Z","event":{"event_type":"d_l_q_item_added","job_id":"j","duration":[115,177900817]},"metadata":{"thread":"main","host":"h","pid":7}}"#;
        let Line::Event(e) = event_line(line, false) else {
            panic!("not an event");
        };
        let mut line = Vec::new();
        let info = e.write_line(&mut line, "w", 3).unwrap();
        assert_eq!(
            (info.event_type, info.duration_ms),
            ("dlq_item_added", Some(115_177))
        );
        let record: crate::events::EventRecord = serde_json::from_slice(&line).unwrap();
        assert_eq!((record.writer.as_str(), record.seq), ("w", 3));
        assert_eq!(record.timestamp, "2025-01-09T10:53:20.056893Z");
        assert_eq!(record.event["event_type"], "dlq_item_added");
        assert_eq!(record.event["duration_ms"], 115_177);
        assert!(record.event.get("duration").is_none());
        assert_eq!(record.metadata.host.as_deref(), Some("h"));
        assert_eq!(record.metadata.pid, Some(7));
        assert_eq!(record.metadata.extra["thread"], "main");
        assert_eq!(e.job_id.as_deref(), Some("j"));
        // The hand-made line is what serde makes of the record.
        assert_eq!(serde_json::to_vec(&record).unwrap(), line);
    }

    #[test]
    fn bad_lines_say_why() {
        let reason = |line: &[u8], last| match event_line(line, last) {
            Line::Rejected(r, _) => Some(r),
            Line::Blank => None,
            Line::Event(_) => panic!("accepted {:?}", String::from_utf8_lossy(line)),
        };
        assert_eq!(reason(b"  ", false), None);
        assert_eq!(
            reason(br#"{"id":"x","times"#, true),
            Some(Reason::TruncatedLine)
        );
        assert_eq!(
            reason(br#"{"id":"x","times"#, false),
            Some(Reason::InvalidJson)
        );
        assert_eq!(reason(b"[1,2]", false), Some(Reason::NotAnEventRecord));
        assert_eq!(
            reason(br#"{"id":"x","timestamp":"t","event":{}}"#, false),
            Some(Reason::NotAnEventRecord)
        );
        assert_eq!(
            reason(
                br#"{"id":"x","timestamp":"soon","event":{"event_type":"a"}}"#,
                false
            ),
            Some(Reason::InvalidTimestamp)
        );
    }

    #[test]
    fn durations_in_both_shapes() {
        assert_eq!(duration_ms(&serde_json::json!([2, 5_000_000])), Some(2005));
        assert_eq!(
            duration_ms(&serde_json::json!({"secs": 1, "nanos": 999_999_999})),
            Some(1999)
        );
        assert_eq!(duration_ms(&serde_json::json!("1s")), None);
    }

    #[test]
    fn checkpoint_versions_from_names() {
        assert_eq!(checkpoint_version("checkpoint-v13.json"), Some(13));
        assert_eq!(checkpoint_version("checkpoint-v.json"), None);
        assert_eq!(checkpoint_version("metadata.json"), None);
    }
}
