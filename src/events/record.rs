//! Event records (DESIGN.md §6): the envelope every event is stored in, and the 27 typed
//! MapReduce events of the original tool.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::id::ObjectId;

/// The schema version written in every record's `v`.
pub const RECORD_VERSION: u32 = 1;

/// One stored event: the envelope and its event (kept as JSON, so that unknown event types
/// from newer writers survive a round trip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Schema version.
    pub v: u32,
    /// Unique id (UUID v7 when written here).
    pub id: String,
    /// RFC 3339, UTC, microseconds: `2026-11-25T17:50:02.024123Z`.
    pub timestamp: String,
    /// Unique per logger instance (or per `events append` call).
    pub writer: String,
    /// 0, 1, 2, … per writer.
    pub seq: u64,
    /// Groups the events of one logical operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event: a JSON object with an `event_type`.
    pub event: Value,
    /// Where it was written.
    #[serde(default)]
    pub metadata: Metadata,
}

/// Where a record was written: real values, never invented ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The git worktree the writer ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<String>,
    /// The agent that wrote it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Anything else the writer added.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl EventRecord {
    /// The event's `event_type` ("" when missing, which appends refuse).
    pub fn event_type(&self) -> &str {
        self.event
            .get("event_type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The agent: the event's `agent_id`, else the metadata's.
    pub fn agent_id(&self) -> Option<&str> {
        self.event
            .get("agent_id")
            .and_then(Value::as_str)
            .or(self.metadata.agent_id.as_deref())
    }

    /// The work item, if the event names one.
    pub fn item_id(&self) -> Option<&str> {
        self.event.get("item_id").and_then(Value::as_str)
    }

    /// The event's `duration_ms`, if it has one.
    pub fn duration_ms(&self) -> Option<u64> {
        self.event.get("duration_ms").and_then(Value::as_u64)
    }

    /// The object the event attaches (a call's transcript), which its log node names.
    pub fn attachment(&self) -> Option<ObjectId> {
        attachment_of(&self.event)
    }
}

/// The fields of an event that name an object the job keeps (a `claude_call_finished`'s
/// transcript, a `step_output`'s log). Its log node lists it, so gc, fsck and push/pull
/// reach it.
pub const ATTACHMENT_FIELDS: [&str; 2] = ["transcript", "log"];

/// The object an event (as JSON) attaches, if any.
pub fn attachment_of(event: &Value) -> Option<ObjectId> {
    ATTACHMENT_FIELDS
        .iter()
        .find_map(|f| event.get(*f)?.as_str()?.parse().ok())
}

/// The MapReduce events of the original tool, with its field names, plus `item_id` on every
/// agent event. Durations are whole milliseconds (`duration_ms`); the original's
/// `[secs, nanos]` arrays are converted on import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum MapReduceEvent {
    JobStarted {
        job_id: String,
        config: Value,
        total_items: usize,
        timestamp: String,
    },
    JobCompleted {
        job_id: String,
        duration_ms: u64,
        success_count: usize,
        failure_count: usize,
    },
    JobFailed {
        job_id: String,
        error: String,
        partial_results: usize,
    },
    JobPaused {
        job_id: String,
        checkpoint_version: u32,
    },
    JobResumed {
        job_id: String,
        checkpoint_version: u32,
        pending_items: usize,
    },
    AgentStarted {
        job_id: String,
        agent_id: String,
        item_id: String,
        worktree: String,
        attempt: u32,
    },
    AgentProgress {
        job_id: String,
        agent_id: String,
        item_id: String,
        step: String,
        progress_pct: f32,
    },
    AgentCompleted {
        job_id: String,
        agent_id: String,
        item_id: String,
        duration_ms: u64,
        commits: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_log_location: Option<String>,
        /// Ours: the attempt that finished, and what its steps captured — what `resume`
        /// needs to adopt the item from the log alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
    },
    AgentFailed {
        job_id: String,
        agent_id: String,
        item_id: String,
        error: String,
        retry_eligible: bool,
    },
    AgentRetrying {
        job_id: String,
        agent_id: String,
        item_id: String,
        attempt: u32,
        backoff_ms: u64,
    },
    CheckpointCreated {
        job_id: String,
        version: u32,
        agents_completed: usize,
    },
    CheckpointLoaded {
        job_id: String,
        version: u32,
    },
    CheckpointFailed {
        job_id: String,
        error: String,
    },
    WorktreeCreated {
        job_id: String,
        agent_id: String,
        worktree_name: String,
        branch: String,
    },
    WorktreeMerged {
        job_id: String,
        agent_id: String,
        target_branch: String,
    },
    WorktreeCleaned {
        job_id: String,
        agent_id: String,
        worktree_name: String,
    },
    QueueDepthChanged {
        job_id: String,
        pending: usize,
        active: usize,
        completed: usize,
    },
    MemoryPressure {
        job_id: String,
        used_mb: usize,
        limit_mb: usize,
    },
    #[serde(rename = "dlq_item_added")]
    DlqItemAdded {
        job_id: String,
        item_id: String,
        error_signature: String,
        failure_count: u32,
    },
    #[serde(rename = "dlq_item_removed")]
    DlqItemRemoved {
        job_id: String,
        item_id: String,
    },
    #[serde(rename = "dlq_items_reprocessed")]
    DlqItemsReprocessed {
        job_id: String,
        count: usize,
    },
    #[serde(rename = "dlq_items_evicted")]
    DlqItemsEvicted {
        job_id: String,
        count: usize,
    },
    #[serde(rename = "dlq_analysis_generated")]
    DlqAnalysisGenerated {
        job_id: String,
        patterns: usize,
    },
    ClaudeToolInvoked {
        agent_id: String,
        tool_name: String,
        tool_id: String,
        parameters: Value,
        timestamp: String,
    },
    ClaudeTokenUsage {
        agent_id: String,
        input_tokens: u64,
        output_tokens: u64,
        cache_tokens: u64,
    },
    ClaudeSessionStarted {
        agent_id: String,
        session_id: String,
        model: String,
        tools: Vec<String>,
    },
    ClaudeMessage {
        agent_id: String,
        content: String,
        message_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_log_location: Option<String>,
    },
    /// Ours: a `claude:` step's call began (`step` is `<phase>/<n>`, with `/on_failure`
    /// for a handler, `merge` for the merge fallback).
    ClaudeCallStarted {
        job_id: String,
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item_id: Option<String>,
        step: String,
        command: String,
        attempt: u32,
    },
    /// Ours: a call ended, with what its final `result` said and the transcript (the
    /// stream as claude wrote it, an object the event's log node names).
    ClaudeCallFinished {
        job_id: String,
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item_id: Option<String>,
        step: String,
        attempt: u32,
        exit_code: i32,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        num_turns: Option<u64>,
        is_error: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default)]
        usage: ClaudeUsage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total_cost_usd: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transcript: Option<ObjectId>,
    },
    /// Ours: a step's `validate:` gave its result (one event per validation run: the first
    /// and one after each `on_incomplete` round).
    StepValidated {
        job_id: String,
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item_id: Option<String>,
        step: String,
        /// 1 for the first validation, 2 after the first `on_incomplete` round, …
        attempt: u32,
        completion: f64,
        threshold: f64,
        status: String,
        passed: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        missing: Vec<String>,
    },
    /// Ours: a step ended; `log` is what it printed (its command, output and error, as the
    /// step log has it, secrets masked), kept in the store with the job.
    StepOutput {
        job_id: String,
        agent_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item_id: Option<String>,
        step: String,
        attempt: u32,
        /// 0 unless the step failed (even when its failure was forgiven).
        exit_code: i32,
        bytes: u64,
        log: ObjectId,
    },
}

/// The token usage a call's `result` reports (the Claude CLI's field names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaudeUsage {
    /// Input tokens (not read from the cache).
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

impl ClaudeUsage {
    /// Adds another call's usage.
    pub fn add(&mut self, other: &ClaudeUsage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
    }
}

impl MapReduceEvent {
    /// The `event_type` tag.
    pub fn event_type(&self) -> &'static str {
        use MapReduceEvent::*;
        let index = match self {
            JobStarted { .. } => 0,
            JobCompleted { .. } => 1,
            JobFailed { .. } => 2,
            JobPaused { .. } => 3,
            JobResumed { .. } => 4,
            AgentStarted { .. } => 5,
            AgentProgress { .. } => 6,
            AgentCompleted { .. } => 7,
            AgentFailed { .. } => 8,
            AgentRetrying { .. } => 9,
            CheckpointCreated { .. } => 10,
            CheckpointLoaded { .. } => 11,
            CheckpointFailed { .. } => 12,
            WorktreeCreated { .. } => 13,
            WorktreeMerged { .. } => 14,
            WorktreeCleaned { .. } => 15,
            QueueDepthChanged { .. } => 16,
            MemoryPressure { .. } => 17,
            DlqItemAdded { .. } => 18,
            DlqItemRemoved { .. } => 19,
            DlqItemsReprocessed { .. } => 20,
            DlqItemsEvicted { .. } => 21,
            DlqAnalysisGenerated { .. } => 22,
            ClaudeToolInvoked { .. } => 23,
            ClaudeTokenUsage { .. } => 24,
            ClaudeSessionStarted { .. } => 25,
            ClaudeMessage { .. } => 26,
            ClaudeCallStarted { .. } => 27,
            ClaudeCallFinished { .. } => 28,
            StepValidated { .. } => 29,
            StepOutput { .. } => 30,
        };
        EVENT_TYPES[index]
    }

    /// The agent the event is about, if any.
    pub fn agent_id(&self) -> Option<&str> {
        use MapReduceEvent::*;
        match self {
            AgentStarted { agent_id, .. }
            | AgentProgress { agent_id, .. }
            | AgentCompleted { agent_id, .. }
            | AgentFailed { agent_id, .. }
            | AgentRetrying { agent_id, .. }
            | WorktreeCreated { agent_id, .. }
            | WorktreeMerged { agent_id, .. }
            | WorktreeCleaned { agent_id, .. }
            | ClaudeToolInvoked { agent_id, .. }
            | ClaudeTokenUsage { agent_id, .. }
            | ClaudeSessionStarted { agent_id, .. }
            | ClaudeMessage { agent_id, .. }
            | ClaudeCallStarted { agent_id, .. }
            | ClaudeCallFinished { agent_id, .. }
            | StepValidated { agent_id, .. }
            | StepOutput { agent_id, .. } => Some(agent_id),
            _ => None,
        }
    }

    /// The reported duration in milliseconds, if any.
    pub fn duration_ms(&self) -> Option<u64> {
        match self {
            MapReduceEvent::JobCompleted { duration_ms, .. }
            | MapReduceEvent::AgentCompleted { duration_ms, .. }
            | MapReduceEvent::ClaudeCallFinished { duration_ms, .. } => Some(*duration_ms),
            _ => None,
        }
    }

    /// The object the event attaches (see [`ATTACHMENT_FIELDS`]).
    pub fn attachment(&self) -> Option<ObjectId> {
        match self {
            MapReduceEvent::ClaudeCallFinished { transcript, .. } => *transcript,
            MapReduceEvent::StepOutput { log, .. } => Some(*log),
            _ => None,
        }
    }
}

/// Lays out one record's JSON line (no newline) in `line`, the same as [`EventRecord`]'s
/// own serialisation: the envelope written directly, `event` writing the event's JSON in
/// place (no copy on the logger's hot path), `metadata` given as JSON. The one place a
/// record is laid out by hand (the logger, imports).
#[allow(clippy::too_many_arguments)]
pub fn write_record_line(
    line: &mut Vec<u8>,
    id: &str,
    timestamp: &str,
    writer: &str,
    seq: u64,
    correlation_id: Option<&str>,
    event: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
    metadata: &[u8],
) -> Result<(), serde_json::Error> {
    line.extend_from_slice(b"{\"v\":");
    push_number(line, u64::from(RECORD_VERSION));
    line.extend_from_slice(b",\"id\":");
    push_string(line, id);
    line.extend_from_slice(b",\"timestamp\":");
    push_string(line, timestamp);
    line.extend_from_slice(b",\"writer\":");
    push_string(line, writer);
    line.extend_from_slice(b",\"seq\":");
    push_number(line, seq);
    if let Some(c) = correlation_id {
        line.extend_from_slice(b",\"correlation_id\":");
        push_string(line, c);
    }
    line.extend_from_slice(b",\"event\":");
    event(line)?;
    line.extend_from_slice(b",\"metadata\":");
    line.extend_from_slice(metadata);
    line.push(b'}');
    Ok(())
}

/// Writes `s` as a JSON string, as serde_json does. The envelope's strings (ids,
/// timestamps, writers) never need escaping: such a string is copied whole after a check
/// eight bytes at a time, where serde_json looks up every byte on its own (a sixth of
/// `events append`'s batching thread, for bare events).
fn push_string(line: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *line, s);
        return;
    }
    line.reserve(s.len() + 2);
    line.push(b'"');
    line.extend_from_slice(s.as_bytes());
    line.push(b'"');
}

/// Whether `bytes` hold a `"`, a `\` or a control character (what JSON escapes), eight
/// bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of each byte that is zero (exact for "is any byte zero") or, in
    // `below_space`, below 0x20.
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let below_space = |w: u64| w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        let quote = zero(w ^ (ONES * u64::from(b'"')));
        let backslash = zero(w ^ (ONES * u64::from(b'\\')));
        if below_space(w) | quote | backslash != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Writes `n` in decimal (what `write!` does, without the formatting machinery).
fn push_number(line: &mut Vec<u8>, n: u64) {
    let (digits, at) = decimal(n, 1);
    line.extend_from_slice(&digits[at..]);
}

/// The deepest a record line may nest arrays and objects: serde_json's recursion limit,
/// where every reader of the log stops. A record deeper than this could be stored but
/// never read back, and would hide its whole batch.
pub const MAX_RECORD_DEPTH: usize = 127;

/// How deep `json` nests, when deeper than [`MAX_RECORD_DEPTH`]. A line with no more
/// opening brackets than that (any line of an ordinary record) is counted, not scanned.
pub fn too_deep(json: &[u8]) -> Option<usize> {
    // Counted in bytes a chunk at a time, which the compiler turns into vector compares.
    let count = |bytes: &[u8]| -> usize {
        let in_chunk = bytes
            .iter()
            .fold(0u8, |n, &b| n + u8::from(b == b'{' || b == b'['));
        usize::from(in_chunk)
    };
    let chunks = json.chunks_exact(128);
    let rest = count(chunks.remainder());
    let opening: usize = chunks.map(count).sum::<usize>() + rest;
    if opening <= MAX_RECORD_DEPTH {
        return None;
    }
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    (deepest > MAX_RECORD_DEPTH).then_some(deepest)
}

/// `n` in decimal, zero-padded to at least `width` digits (at most 20): the digits are
/// `buf[at..]` of the returned `(buf, at)`.
fn decimal(mut n: u64, width: usize) -> ([u8; 20], usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    (digits, at.min(digits.len() - width.min(digits.len())))
}

/// The `id` of a stored record line without parsing the rest: records laid out by
/// [`write_record_line`] (or serialised from [`EventRecord`]) start `{"v":1,"id":"…"`;
/// anything else (an escaped id, another layout) is parsed.
pub fn record_id(line: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    const PREFIX: &[u8] = b"{\"v\":1,\"id\":\"";
    if let Some(rest) = line.strip_prefix(PREFIX)
        && let Some(end) = rest.iter().position(|b| *b == b'"' || *b == b'\\')
        && rest[end] == b'"'
        && let Ok(id) = std::str::from_utf8(&rest[..end])
    {
        return Some(std::borrow::Cow::Borrowed(id));
    }
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    serde_json::from_slice::<IdOnly>(line)
        .ok()
        .map(|r| std::borrow::Cow::Owned(r.id))
}

/// What a batch summary needs from a record, borrowed from wherever the record is.
#[derive(Debug, Clone, Copy)]
pub struct RecordInfo<'a> {
    /// Its timestamp (stored form).
    pub timestamp: &'a str,
    /// Its event type.
    pub event_type: &'a str,
    /// Its agent.
    pub agent_id: Option<&'a str>,
    /// Its duration.
    pub duration_ms: Option<u64>,
    /// Its writer.
    pub writer: &'a str,
    /// Its seq.
    pub seq: u64,
    /// The object it attaches.
    pub attachment: Option<ObjectId>,
}

impl EventRecord {
    /// The summary view of this record.
    pub fn info(&self) -> RecordInfo<'_> {
        RecordInfo {
            timestamp: &self.timestamp,
            event_type: self.event_type(),
            agent_id: self.agent_id(),
            duration_ms: self.duration_ms(),
            writer: &self.writer,
            seq: self.seq,
            attachment: self.attachment(),
        }
    }
}

/// Every event type name: the original's 27 in its order, then ours.
pub const EVENT_TYPES: [&str; 31] = [
    "job_started",
    "job_completed",
    "job_failed",
    "job_paused",
    "job_resumed",
    "agent_started",
    "agent_progress",
    "agent_completed",
    "agent_failed",
    "agent_retrying",
    "checkpoint_created",
    "checkpoint_loaded",
    "checkpoint_failed",
    "worktree_created",
    "worktree_merged",
    "worktree_cleaned",
    "queue_depth_changed",
    "memory_pressure",
    "dlq_item_added",
    "dlq_item_removed",
    "dlq_items_reprocessed",
    "dlq_items_evicted",
    "dlq_analysis_generated",
    "claude_tool_invoked",
    "claude_token_usage",
    "claude_session_started",
    "claude_message",
    "claude_call_started",
    "claude_call_finished",
    "step_validated",
    "step_output",
];

/// The current time as a record timestamp: RFC 3339, UTC, exactly six fractional digits,
/// so that timestamps compare correctly as strings.
pub fn now_timestamp() -> String {
    let now = jiff::Timestamp::now();
    SECOND.with_borrow_mut(|second| timestamp_from(now, second))
}

thread_local! {
    /// The second a thread last formatted, and its text up to the fraction.
    static SECOND: std::cell::RefCell<(i64, String)> =
        const { std::cell::RefCell::new((i64::MIN, String::new())) };
}

/// `ts` as [`format_timestamp`] writes it, jiff formatting only the second (once per
/// second, kept in `second`); the microseconds are written here.
fn timestamp_from(ts: jiff::Timestamp, second: &mut (i64, String)) -> String {
    let (secs, micros) = (ts.as_second(), ts.subsec_microsecond());
    if micros < 0 {
        // Before 1970 the fraction counts the other way: jiff writes it.
        return format_timestamp(ts);
    }
    if second.0 != secs || second.1.is_empty() {
        let whole = format!("{:.0}", jiff::Timestamp::from_second(secs).unwrap_or(ts));
        second.1 = whole.trim_end_matches('Z').to_owned();
        second.0 = secs;
    }
    let mut text = String::with_capacity(second.1.len() + 8);
    text.push_str(&second.1);
    text.push('.');
    let (digits, at) = decimal(u64::from(micros.unsigned_abs()), 6);
    text.extend(digits[at..].iter().map(|&d| char::from(d)));
    text.push('Z');
    text
}

/// Formats a timestamp the way records store it (truncated to microseconds).
pub fn format_timestamp(ts: jiff::Timestamp) -> String {
    format!("{ts:.6}")
}

/// Parses any RFC 3339 timestamp and returns it in the stored form (microseconds, UTC).
pub fn normalize_timestamp(text: &str) -> Result<String, String> {
    text.parse::<jiff::Timestamp>()
        .map(format_timestamp)
        .map_err(|e| format!("invalid timestamp {text:?}: {e}"))
}

/// True when `text` is a timestamp in the stored form (what [`stored_timestamp`] keeps
/// as it is).
pub fn is_stored_timestamp(text: &str) -> bool {
    is_stored_form(text.as_bytes())
}

/// [`normalize_timestamp`], borrowing `text` when it is already in the stored form
/// (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, a real date and time of the years 1000 to 9998), as
/// every record this tool writes has it: checked by hand, without a parse and a format.
pub fn stored_timestamp(text: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    if is_stored_timestamp(text) {
        Ok(std::borrow::Cow::Borrowed(text))
    } else {
        normalize_timestamp(text).map(std::borrow::Cow::Owned)
    }
}

/// True when `t` is a timestamp as [`format_timestamp`] writes it, for a year from 1000
/// to 9998 (well inside what jiff reads; the rest goes through jiff).
fn is_stored_form(t: &[u8]) -> bool {
    const SHAPE: &[u8; 27] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    if t.len() != SHAPE.len() {
        return false;
    }
    let shaped = t.iter().zip(SHAPE).all(|(&c, &want)| match want {
        b'd' => c.is_ascii_digit(),
        _ => c == want,
    });
    if !shaped {
        return false;
    }
    let number = |range: std::ops::Range<usize>| {
        t[range]
            .iter()
            .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1000..=9998).contains(&year)
        && (1..=days).contains(&day)
        && number(11..13) < 24
        && number(14..16) < 60
        && number(17..19) < 60
}

/// A new unique id (UUID v7: time-ordered).
pub fn new_id() -> String {
    id_text(uuid::Uuid::now_v7())
}

fn id_text(id: uuid::Uuid) -> String {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

/// A new record's id and timestamp ([`new_id`], [`now_timestamp`]) from one reading of
/// the clock: the id's time is the timestamp's (unless the clock went back: the id then
/// keeps its last time, so that it still sorts after the ids before it). The ids a thread
/// makes are ordered by its own UUID v7 counter (no lock shared with other threads).
pub fn new_id_and_timestamp() -> (String, String) {
    thread_local! {
        static CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
    }
    let now = jiff::Timestamp::now();
    CONTEXT
        .with(|context| SECOND.with_borrow_mut(|second| id_and_timestamp_at(now, context, second)))
}

/// [`new_id_and_timestamp`] at `now`.
fn id_and_timestamp_at(
    now: jiff::Timestamp,
    context: &uuid::ContextV7,
    second: &mut (i64, String),
) -> (String, String) {
    let id = match (
        u64::try_from(now.as_second()),
        u32::try_from(now.subsec_nanosecond()),
    ) {
        (Ok(secs), Ok(nanos)) => {
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(context, secs, nanos))
        }
        // Before 1970: the id keeps its own clock.
        _ => uuid::Uuid::now_v7(),
    };
    (id_text(id), timestamp_from(now, second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_deep_is_exactly_where_serde_json_stops_reading() {
        let nested = |depth: usize| {
            let mut line = br#"{"v":1,"x":"#.to_vec();
            line.extend(std::iter::repeat_n(b'[', depth - 1));
            line.extend(std::iter::repeat_n(b']', depth - 1));
            line.push(b'}');
            line
        };
        let reads = |line: &[u8]| serde_json::from_slice::<Value>(line).is_ok();
        let at_limit = nested(MAX_RECORD_DEPTH);
        assert!(reads(&at_limit));
        assert_eq!(too_deep(&at_limit), None);
        let past = nested(MAX_RECORD_DEPTH + 1);
        assert!(!reads(&past));
        assert_eq!(too_deep(&past), Some(MAX_RECORD_DEPTH + 1));
        // Brackets in strings, escaped quotes included, are text.
        let mut text = br#"{"s":"\"["#.to_vec();
        text.extend(std::iter::repeat_n(b'[', 300));
        text.extend(br#"","t":[{}]}"#);
        assert!(reads(&text));
        assert_eq!(too_deep(&text), None);
    }

    #[test]
    fn an_id_and_its_timestamp_come_from_one_reading_of_the_clock() {
        let context = uuid::ContextV7::new();
        let mut second = (i64::MIN, String::new());
        for text in [
            "2026-12-07T11:43:12.345678Z",
            "2026-12-07T11:43:12.999999Z",
            "2026-12-07T11:43:13.000000Z",
            "2027-01-01T00:00:00.000999Z",
        ] {
            let now: jiff::Timestamp = text.parse().unwrap();
            let (id, timestamp) = id_and_timestamp_at(now, &context, &mut second);
            assert_eq!(timestamp, text);
            let uuid = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(uuid.get_version_num(), 7);
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            let millis = secs as i64 * 1000 + i64::from(nanos / 1_000_000);
            assert_eq!(millis, now.as_millisecond(), "{id} for {text}");
        }
        // One thread's ids are ordered, from the real clock too.
        let mut last = String::new();
        for _ in 0..2000 {
            let (id, timestamp) = new_id_and_timestamp();
            assert!(is_stored_form(timestamp.as_bytes()), "{timestamp}");
            assert!(id > last, "{id} after {last}");
            last = id;
        }
    }

    #[test]
    fn every_type_serializes_under_its_name() {
        let samples = [
            MapReduceEvent::JobStarted {
                job_id: "j".into(),
                config: Value::Null,
                total_items: 1,
                timestamp: now_timestamp(),
            },
            MapReduceEvent::DlqItemAdded {
                job_id: "j".into(),
                item_id: "i".into(),
                error_signature: "s".into(),
                failure_count: 1,
            },
            MapReduceEvent::ClaudeMessage {
                agent_id: "a".into(),
                content: "c".into(),
                message_type: "m".into(),
                json_log_location: None,
            },
        ];
        for (event, name) in samples
            .iter()
            .zip(["job_started", "dlq_item_added", "claude_message"])
        {
            let json = serde_json::to_value(event).unwrap();
            assert_eq!(json["event_type"], name);
            assert_eq!(event.event_type(), name);
            assert!(EVENT_TYPES.contains(&name));
            let back: MapReduceEvent = serde_json::from_value(json).unwrap();
            assert_eq!(&back, event);
        }
    }

    #[test]
    fn record_ids_are_read_from_the_prefix_or_parsed() {
        let mut line = Vec::new();
        let empty = |l: &mut Vec<u8>| {
            l.extend_from_slice(b"{}");
            Ok(())
        };
        write_record_line(&mut line, "a-1", "t", "w", 0, None, empty, b"{}").unwrap();
        assert_eq!(record_id(&line).as_deref(), Some("a-1"));
        line.clear();
        write_record_line(&mut line, "a\"b", "t", "w", 0, Some("c"), empty, b"{}").unwrap();
        assert_eq!(record_id(&line).as_deref(), Some("a\"b"));
        let record: EventRecord = serde_json::from_slice(&line).unwrap();
        assert_eq!(serde_json::to_vec(&record).unwrap(), line);
        assert_eq!(record_id(br#"{"id":"x","v":1}"#).as_deref(), Some("x"));
        assert_eq!(record_id(b"{not json"), None);
    }

    #[test]
    fn timestamps_have_six_digits_and_normalize() {
        let ts = now_timestamp();
        assert_eq!(ts.len(), 27, "{ts}");
        assert_eq!(
            normalize_timestamp("2025-01-09T14:32:53.346192243Z").unwrap(),
            "2025-01-09T14:32:53.346192Z"
        );
        assert_eq!(
            normalize_timestamp("2025-01-09T14:32:53Z").unwrap(),
            "2025-01-09T14:32:53.000000Z"
        );
        assert_eq!(
            normalize_timestamp("2025-01-09T15:32:53+01:00").unwrap(),
            "2025-01-09T14:32:53.000000Z"
        );
        assert!(normalize_timestamp("yesterday").is_err());
    }

    #[test]
    fn the_time_written_a_second_at_a_time_is_what_jiff_writes() {
        let mut second = (i64::MIN, String::new());
        let mut samples = vec![
            jiff::Timestamp::UNIX_EPOCH,
            jiff::Timestamp::new(-1, 500_000_000).unwrap(),
            jiff::Timestamp::new(-86_400, 0).unwrap(),
            jiff::Timestamp::now(),
        ];
        // Across second boundaries, with fractions that need zero padding and
        // nanoseconds that are truncated.
        for n in 0..5_000i64 {
            let secs = 1_765_000_000 + n / 7;
            let nanos = (n * 7_919_993) % 1_000_000_000;
            samples.push(jiff::Timestamp::new(secs, nanos as i32).unwrap());
        }
        samples.push(jiff::Timestamp::MAX);
        samples.push(jiff::Timestamp::new(253_402_207_199, 999_999_999).unwrap());
        for ts in samples {
            assert_eq!(
                timestamp_from(ts, &mut second),
                format_timestamp(ts),
                "{ts:?}"
            );
        }
        assert!(is_stored_form(now_timestamp().as_bytes()));
    }

    #[test]
    fn ids_are_hyphenated_lowercase_uuids() {
        let id = new_id();
        let parsed: uuid::Uuid = id.parse().unwrap();
        assert_eq!(parsed.to_string(), id);
        assert_eq!(parsed.get_version_num(), 7);
    }

    #[test]
    fn a_byte_to_escape_is_found_wherever_it_is() {
        for len in 0..40 {
            let plain = "é".repeat(len / 2) + &"a".repeat(len % 2);
            assert!(!needs_escape(plain.as_bytes()), "{plain:?}");
            for b in (0u8..0x20).chain([b'"', b'\\']) {
                for at in 0..plain.len() {
                    let mut bytes = plain.as_bytes().to_vec();
                    bytes[at] = b;
                    assert!(needs_escape(&bytes), "{b:#x} at {at} of {len}");
                }
            }
            for b in (0x20u8..=0xff).filter(|&b| b != b'"' && b != b'\\') {
                let mut bytes = plain.as_bytes().to_vec();
                bytes.push(b);
                assert!(!needs_escape(&bytes), "{b:#x} after {len}");
            }
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let long = format!("{}\"{}", "x".repeat(100), "y".repeat(50));
        let every_control: String = (0u8..0x20).map(char::from).collect();
        for s in [
            "",
            "0192f5e0-7c3a-7bb1-9a4e-1f2d3c4b5a69",
            "2026-12-07T00:00:00.000000Z",
            "a\"b",
            "back\\slash",
            &every_control,
            "\u{7f} is not escaped, nor / nor '",
            "héllo ✓ 🦀",
            &long,
        ] {
            let mut line = b"before ".to_vec();
            push_string(&mut line, s);
            let mut expected = b"before ".to_vec();
            serde_json::to_writer(&mut expected, s).unwrap();
            assert_eq!(line, expected, "{s:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 4_294_967_296, u64::MAX] {
            let mut line = Vec::new();
            push_number(&mut line, n);
            assert_eq!(line, n.to_string().into_bytes());
        }
        for (n, width, text) in [
            (7, 6, "000007"),
            (123_456, 6, "123456"),
            (0, 1, "0"),
            (42, 0, "42"),
        ] {
            let (digits, at) = decimal(n, width);
            assert_eq!(&digits[at..], text.as_bytes());
        }
    }

    #[test]
    fn a_timestamp_taken_as_stored_is_what_jiff_would_store() {
        // Every day of four years (one a leap year, one a century that is not), edges of
        // the time of day, and damaged copies: whatever the hand check takes as stored,
        // jiff reads and writes back unchanged; the rest takes jiff's way.
        let mut samples = Vec::new();
        for year in [
            "1000", "1900", "2000", "2024", "2026", "9998", "9999", "0999",
        ] {
            for month in 0..=13 {
                for day in 0..=32 {
                    for time in [
                        "00:00:00.000000",
                        "23:59:59.999999",
                        "24:00:00.000000",
                        "12:60:00.000000",
                        "12:00:60.000000",
                    ] {
                        samples.push(format!("{year}-{month:02}-{day:02}T{time}Z"));
                    }
                }
            }
        }
        let base = "2026-12-07T08:22:28.430733Z";
        for i in 0..base.len() {
            for c in ['0', '9', 'z', ' ', '-', ':', '.', 'T', 'Z', '+'] {
                let mut s = base.to_owned();
                s.replace_range(i..=i, &c.to_string());
                samples.push(s);
            }
            samples.push(format!("{}{}", &base[..i], &base[i + 1..]));
        }
        samples.push(format!("{}0Z", &base[..26]));
        let mut taken = 0;
        for s in &samples {
            let stored = stored_timestamp(s);
            assert_eq!(
                stored.as_deref().map_err(|_| ()),
                normalize_timestamp(s).as_deref().map_err(|_| ()),
                "{s}"
            );
            if matches!(stored, Ok(std::borrow::Cow::Borrowed(_))) {
                taken += 1;
            }
        }
        // Most of the real dates are taken without jiff.
        assert!(taken > 5 * 365 * 2, "{taken}");
    }
}
