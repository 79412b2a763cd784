//! `prodigy migrate-events` (DESIGN.md §11): imports the original tool's repo-local
//! `.prodigy/` — event files, DLQ items, checkpoints — into the store under the
//! repository's name, verifies by reading back, and removes the local files only when
//! asked and only those it imported (or that are empty).
//!
//! Idempotent: events are matched by their original id against the job's log, DLQ items by
//! item id against the queue, checkpoints by version against the imported chain, so a
//! second run finds everything present and writes nothing.

pub mod legacy;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use crate::dlq::{DeadLetterQueue, DeadLetteredItem, DlqError};
use crate::events::record::record_id;
use crate::events::{Batch, EventError, EventLog};
use crate::fsutil::{FsError, IoContext};
use crate::home::Home;
use crate::names;
use crate::state::{ImportedCheckpoint, JobSpec, JobStateManager, StateError};
use crate::store::object::{ObjectId, ObjectType};
use crate::store::refs::{RefError, RefKind, RefName, RefStore};
use legacy::{JobFrom, LegacyEvent, LegacyFile, Line, Tree};

/// Records per imported batch object.
const BATCH_RECORDS: u64 = 1000;

/// Why a line or a file was not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The last line stops mid-record (a writer killed while writing it).
    TruncatedLine,
    /// Not JSON.
    InvalidJson,
    /// JSON, but not an event record (no `id`, `timestamp` or `event.event_type`).
    NotAnEventRecord,
    /// A timestamp that does not parse.
    InvalidTimestamp,
    /// An event of a many-job file without a `job_id`.
    NoJobId,
    /// A job id that is not a safe name (`../x`, `a/b`, 129+ characters): never a path.
    UnsafeJobId,
    /// A file naming another job than its directory.
    JobIdMismatch,
    /// A file or directory that cannot be read (or a damaged gzip stream).
    UnreadableFile,
    /// Not a DLQ item of the original.
    NotADlqItem,
    /// Not a checkpoint of the original.
    NotACheckpoint,
    /// A checkpoint's result for an item that is not in its work list (the rest imports).
    UnknownItem,
    /// The job id is taken in the store by a job that was not imported.
    JobExists,
    /// A symbolic link in the legacy tree (`.prodigy` itself included): never followed,
    /// so nothing is imported or removed through it.
    Symlink,
}

impl Reason {
    /// Its name, as in `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TruncatedLine => "truncated_line",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnEventRecord => "not_an_event_record",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::NoJobId => "no_job_id",
            Reason::UnsafeJobId => "unsafe_job_id",
            Reason::JobIdMismatch => "job_id_mismatch",
            Reason::UnreadableFile => "unreadable_file",
            Reason::NotADlqItem => "not_a_dlq_item",
            Reason::NotACheckpoint => "not_a_checkpoint",
            Reason::UnknownItem => "unknown_item",
            Reason::JobExists => "job_exists",
            Reason::Symlink => "symlink",
        }
    }
}

/// One refusal: the file (relative to the repository), the line if any, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The file.
    pub path: String,
    /// The line (1-based), for event files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Why.
    pub reason: Reason,
    /// The details.
    pub detail: String,
}

impl Rejection {
    /// A refusal of a whole file.
    pub fn file(path: String, reason: Reason, detail: String) -> Rejection {
        Rejection {
            path,
            line: None,
            reason,
            detail,
        }
    }
}

/// Failures that stop a migration (a bad legacy line never does: it is a [`Rejection`]).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The event log failed.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The DLQ failed.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// Job state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A ref failed.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The repo name is not a valid name.
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    /// What was written does not read back.
    #[error("verification failed for {what} of job {job}: {detail}")]
    Verify {
        /// events, DLQ items or checkpoints.
        what: &'static str,
        /// The job.
        job: String,
        /// What is missing.
        detail: String,
    },
}

impl crate::hint::Hint for MigrateError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            MigrateError::Event(e) => e.hint(),
            MigrateError::Dlq(e) => e.hint(),
            MigrateError::State(e) => e.hint(),
            MigrateError::Ref(e) => e.hint(),
            MigrateError::Fs(e) => e.hint(),
            MigrateError::Name(_) | MigrateError::Verify { .. } => None,
        }
    }
}

/// What to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Read and report only; write nothing, remove nothing.
    pub dry_run: bool,
    /// After a verified import, remove the local files that were imported (or are empty).
    pub remove_local: bool,
    /// Remove even when something was refused (the refused files stay).
    pub force: bool,
}

/// One event file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventFileReport {
    /// Relative to the repository.
    pub path: String,
    /// `plain` or `gzip` (by content, not name).
    pub encoding: &'static str,
    /// Physical lines.
    pub lines: u64,
    /// Event records read.
    pub records: u64,
    /// Blank lines.
    pub blank: u64,
    /// Lines refused.
    pub rejected: u64,
}

/// Per job: records read, newly imported, already in the store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobCount {
    /// Read from the legacy files (distinct ids).
    pub read: u64,
    /// Written now (0 on a dry run: see `would_import`).
    pub imported: u64,
    /// Already in the store.
    pub already_present: u64,
}

/// Events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventsReport {
    /// Every event file.
    pub files: Vec<EventFileReport>,
    /// Event records read.
    pub records_read: u64,
    /// Imported now (on a dry run: would be).
    pub imported: u64,
    /// Already in the store (a second run).
    pub already_present: u64,
    /// Records whose id was read before in this run.
    pub duplicates_skipped: u64,
    /// Blank lines.
    pub blank_lines_skipped: u64,
    /// Lines refused.
    pub rejected_total: u64,
    /// Refusals by reason.
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// Per job.
    pub per_job: BTreeMap<String, JobCount>,
    /// Event types imported or present, per job (original names).
    pub per_job_event_types: BTreeMap<String, BTreeMap<String, u64>>,
}

/// DLQ items.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DlqReport {
    /// Item files read.
    pub read: u64,
    /// Imported now (on a dry run: would be).
    pub imported: u64,
    /// Already in the queue.
    pub already_present: u64,
    /// Item files refused.
    pub rejected_total: u64,
    /// Per job.
    pub per_job: BTreeMap<String, JobCount>,
}

/// Checkpoints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointsReport {
    /// Checkpoint files read.
    pub read: u64,
    /// Imported now (on a dry run: would be).
    pub imported: u64,
    /// Already imported.
    pub already_present: u64,
    /// Checkpoint files refused.
    pub rejected_total: u64,
    /// Versions read, per job.
    pub versions_per_job: BTreeMap<String, Vec<u32>>,
    /// The newest version, per job (what `jobs` shows).
    pub latest_version_per_job: BTreeMap<String, u32>,
}

/// What a migration did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The repo name imported into.
    pub repo: String,
    /// The legacy directory.
    pub source: PathBuf,
    /// Nothing was written.
    pub dry_run: bool,
    /// Events.
    pub events: EventsReport,
    /// DLQ items.
    pub dlq: DlqReport,
    /// Checkpoints.
    pub checkpoints: CheckpointsReport,
    /// Every refusal, by file and line.
    pub rejected: Vec<Rejection>,
    /// Files and directories that are no legacy data (left alone).
    pub unknown: Vec<String>,
    /// Everything read is in the store (read back after writing).
    pub verified: bool,
    /// Files removed (`--remove-local`; on a dry run: would be).
    pub removed: Vec<String>,
    /// `--remove-local` was refused because something was refused (no `--force`).
    pub removal_refused: bool,
}

impl Report {
    /// Refusals in all.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.len() as u64
    }

    /// True when there was no legacy data at all.
    pub fn is_empty(&self) -> bool {
        self.events.files.is_empty()
            && self.dlq.read == 0
            && self.checkpoints.read == 0
            && self.rejected.is_empty()
    }
}

/// Per legacy file: imported (read back), or not.
struct Ledger {
    /// Files whose every record is in the store (or that held nothing).
    done: HashSet<PathBuf>,
    /// Derived files (`index.json`, `metadata.json`) removable with their directory's data.
    derived: Vec<(LegacyFile, Vec<PathBuf>)>,
}

/// Imports the legacy data of the repository at `root` into `repo` on `refs`.
pub fn migrate(
    refs: &RefStore,
    repo: &str,
    root: &Path,
    opts: Options,
) -> Result<Report, MigrateError> {
    migrate_with_progress(refs, repo, root, opts, &|_| {})
}

/// How far a migration is: `done` of `total` in `phase` (reported from several threads).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// What is being done.
    pub phase: &'static str,
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

/// [`migrate`], reporting its progress to `progress` (the command draws it on a terminal).
pub fn migrate_with_progress(
    refs: &RefStore,
    repo: &str,
    root: &Path,
    opts: Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, MigrateError> {
    names::validate("repo name", repo)?;
    let tree = legacy::scan(root);
    let mut report = Report {
        repo: repo.to_owned(),
        source: root.join(crate::storage::LOCAL_DIR),
        dry_run: opts.dry_run,
        unknown: tree.unknown.clone(),
        rejected: tree.problems.clone(),
        ..Report::default()
    };
    let mut ledger = Ledger {
        done: HashSet::new(),
        derived: Vec::new(),
    };
    import_events(refs, repo, &tree, opts, &mut report, &mut ledger, progress)?;
    progress(Progress {
        phase: "importing DLQ items",
        done: 0,
        total: tree.dlq.len() as u64,
    });
    import_dlq(refs, repo, &tree, opts, &mut report, &mut ledger)?;
    progress(Progress {
        phase: "importing checkpoints",
        done: 0,
        total: tree.checkpoints.len() as u64,
    });
    import_checkpoints(refs, repo, root, &tree, opts, &mut report, &mut ledger)?;
    report.verified = !opts.dry_run;
    if opts.remove_local {
        if !report.rejected.is_empty() && !opts.force {
            report.removal_refused = true;
        } else {
            report.removed = remove_local(root, &tree, &ledger, opts.dry_run)?;
        }
    }
    Ok(report)
}

fn reject(
    report: &mut Report,
    file: &LegacyFile,
    line: Option<u64>,
    reason: Reason,
    detail: String,
) {
    report.rejected.push(Rejection {
        path: file.rel.clone(),
        line,
        reason,
        detail,
    });
}

/// The ids already in a job's log.
fn stored_event_ids(log: &EventLog) -> Result<HashSet<String>, MigrateError> {
    let mut ids = HashSet::new();
    crate::events::query::stream(
        log,
        &crate::events::Filter::default(),
        false,
        false,
        |line| {
            if let Some(id) = record_id(line.json) {
                ids.insert(id.into_owned());
            }
            Ok(true)
        },
    )?;
    Ok(ids)
}

fn import_events(
    refs: &RefStore,
    repo: &str,
    tree: &Tree,
    opts: Options,
    report: &mut Report,
    ledger: &mut Ledger,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MigrateError> {
    progress(Progress {
        phase: "reading event files",
        done: 0,
        total: tree.events.len() as u64,
    });
    let mut jobs: BTreeMap<String, Vec<Box<LegacyEvent>>> = BTreeMap::new();
    let mut seen = HashSet::new();
    // Files with a refusal never count as imported.
    let mut clean = vec![true; tree.events.len()];
    let paths: Vec<&Path> = tree.events.iter().map(|e| e.file.path.as_path()).collect();
    let parsed = legacy::parse_event_files(&paths);
    for ((index, ef), parsed) in tree.events.iter().enumerate().zip(parsed) {
        let mut fr = EventFileReport {
            path: ef.file.rel.clone(),
            encoding: "plain",
            ..EventFileReport::default()
        };
        let dir_job = match &ef.job {
            JobFrom::Dir(job) => match names::validate("job id", job) {
                Ok(()) => Some(job.clone()),
                Err(e) => {
                    reject(report, &ef.file, None, Reason::UnsafeJobId, e.to_string());
                    clean[index] = false;
                    report.events.files.push(fr);
                    continue;
                }
            },
            JobFrom::Event => None,
        };
        let parsed = match parsed {
            Ok(c) => c,
            Err(e) => {
                reject(
                    report,
                    &ef.file,
                    None,
                    Reason::UnreadableFile,
                    e.to_string(),
                );
                clean[index] = false;
                report.events.files.push(fr);
                continue;
            }
        };
        if parsed.gzip {
            fr.encoding = "gzip";
        }
        for (n, line) in parsed.lines.into_iter().enumerate() {
            fr.lines += 1;
            let number = Some(n as u64 + 1);
            let mut refuse = |report: &mut Report, reason: Reason, detail: String| {
                reject(report, &ef.file, number, reason, detail);
                *report
                    .events
                    .rejected_by_reason
                    .entry(reason.as_str())
                    .or_default() += 1;
                report.events.rejected_total += 1;
                fr.rejected += 1;
            };
            let event = match line {
                Line::Blank => {
                    fr.blank += 1;
                    report.events.blank_lines_skipped += 1;
                    continue;
                }
                Line::Rejected(reason, detail) => {
                    refuse(report, reason, detail);
                    continue;
                }
                Line::Event(event) => event,
            };
            if let Some(id) = &event.job_id
                && let Err(e) = names::validate("job id", id)
            {
                refuse(report, Reason::UnsafeJobId, e.to_string());
                continue;
            }
            let Some(job) = dir_job.clone().or_else(|| event.job_id.clone()) else {
                refuse(report, Reason::NoJobId, "the event has no job_id".into());
                continue;
            };
            fr.records += 1;
            report.events.records_read += 1;
            if !seen.insert(event.id.clone()) {
                report.events.duplicates_skipped += 1;
                continue;
            }
            jobs.entry(job).or_default().push(event);
        }
        clean[index] = fr.rejected == 0 && parsed.error.is_none();
        if let Some(e) = parsed.error {
            reject(report, &ef.file, None, Reason::UnreadableFile, e);
        }
        report.events.files.push(fr);
    }
    // Jobs are independent (one ref each): imported on several threads, so one job's
    // fsyncs overlap another's parsing and read-back.
    let jobs: Vec<(String, Vec<Box<LegacyEvent>>)> = jobs.into_iter().collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() * 2);
    let done = std::sync::atomic::AtomicU64::new(0);
    let total = jobs.len() as u64;
    let results = crate::par::map(&jobs, threads, |(job, events)| {
        let result = import_job(refs, repo, job, events, opts.dry_run);
        let done = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(Progress {
            phase: "importing jobs' events",
            done,
            total,
        });
        result
    });
    for ((job, _), result) in jobs.iter().zip(results) {
        let (count, types) = result?;
        report.events.imported += count.imported;
        report.events.already_present += count.already_present;
        report.events.per_job.insert(job.clone(), count);
        report.events.per_job_event_types.insert(job.clone(), types);
    }
    // Every record of these files is in the store now (a failed read-back stopped above).
    for (index, ef) in tree.events.iter().enumerate() {
        if clean[index] {
            ledger.done.insert(ef.file.path.clone());
        }
    }
    Ok(())
}

/// How long an import waits for another holding the job's run lock (another migration,
/// most likely, importing the same job).
const IMPORT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Imports one job's events (sorted by time; those whose id is in its log are skipped) in
/// one append, then reads the log back: every id must be there. Returns the counts and the
/// event types (the original's names).
fn import_job(
    refs: &RefStore,
    repo: &str,
    job: &str,
    events: &[Box<LegacyEvent>],
    dry_run: bool,
) -> Result<(JobCount, BTreeMap<String, u64>), MigrateError> {
    let mut order: Vec<&LegacyEvent> = events.iter().map(|e| &**e).collect();
    order.sort_by_key(|e| e.at);
    let log = EventLog::new(refs.clone(), repo, job)?;
    // The job's run lock from the read of what is stored to the append: two migrations at
    // once each found nothing stored and imported every event (twice, under two writers).
    // The second waits for the first, then finds them. A job whose events are all stored
    // already takes no lock (and writes nothing: not even the lock's file).
    let mut stored = stored_event_ids(&log)?;
    let _lock = match dry_run || events.iter().all(|e| stored.contains(&e.id)) {
        true => None,
        false => {
            let lock = crate::state::JobStateManager::new(refs.clone(), repo)?
                .lock_job_within(job, IMPORT_LOCK_WAIT)?;
            stored = stored_event_ids(&log)?;
            Some(lock)
        }
    };
    let writer = crate::events::record::new_id();
    let mut count = JobCount {
        read: events.len() as u64,
        ..JobCount::default()
    };
    let mut types = BTreeMap::new();
    let mut batches: Vec<Batch> = Vec::new();
    let mut seq = 0;
    let mut line = Vec::with_capacity(512);
    for e in order {
        let original = e.event_type.replacen("dlq_", "d_l_q_", 1);
        *types.entry(original).or_default() += 1;
        if stored.contains(&e.id) {
            count.already_present += 1;
            continue;
        }
        let info = e
            .write_line(&mut line, &writer, seq)
            .map_err(|err| EventError::BadRecord(format!("record {}: {err}", e.id)))?;
        seq += 1;
        if batches.last().is_none_or(|b| b.len() >= BATCH_RECORDS) {
            batches.push(Batch::new());
        }
        if let Some(b) = batches.last_mut() {
            b.push_encoded(&line, &info)?;
        }
        count.imported += 1;
    }
    if dry_run {
        return Ok((count, types));
    }
    if !batches.is_empty() {
        log.append(&batches)?;
    }
    let stored = stored_event_ids(&log)?;
    let missing: Vec<&str> = events
        .iter()
        .map(|e| e.id.as_str())
        .filter(|id| !stored.contains(*id))
        .collect();
    if let Some(first) = missing.first() {
        return Err(MigrateError::Verify {
            what: "events",
            job: job.to_owned(),
            detail: format!(
                "{} of {} events are not in the log after the import (first: {first})",
                missing.len(),
                events.len(),
            ),
        });
    }
    Ok((count, types))
}

/// Checks a job directory's name; refuses all its files when it is not a safe name.
fn safe_job_dir(dir: &legacy::JobDir, report: &mut Report) -> bool {
    match names::validate("job id", &dir.job) {
        Ok(()) => true,
        Err(e) => {
            for (_, f) in &dir.files {
                reject(report, f, None, Reason::UnsafeJobId, e.to_string());
            }
            false
        }
    }
}

fn import_dlq(
    refs: &RefStore,
    repo: &str,
    tree: &Tree,
    opts: Options,
    report: &mut Report,
    ledger: &mut Ledger,
) -> Result<(), MigrateError> {
    for dir in &tree.dlq {
        let before = report.rejected.len();
        report.dlq.read += dir.files.len() as u64;
        if !safe_job_dir(dir, report) {
            report.dlq.rejected_total += dir.files.len() as u64;
            continue;
        }
        let mut items: Vec<(DeadLetteredItem, &LegacyFile)> = Vec::new();
        for (_, f) in &dir.files {
            let converted = crate::fsutil::read_nofollow(&f.path)
                .map_err(|e| (Reason::UnreadableFile, e.to_string()))
                .and_then(|bytes| legacy::dlq_item(&bytes));
            match converted {
                Ok(item) => items.push((item, f)),
                Err((reason, detail)) => {
                    report.dlq.rejected_total += 1;
                    reject(report, f, None, reason, detail);
                }
            }
        }
        let queue = DeadLetterQueue::new(refs.clone(), repo, &dir.job)?;
        let snapshot = queue.snapshot()?;
        let mut count = JobCount {
            read: items.len() as u64,
            ..JobCount::default()
        };
        let (present, fresh): (Vec<_>, Vec<_>) = items
            .iter()
            .partition(|(item, _)| snapshot.items.contains_key(&item.item_id));
        count.already_present = present.len() as u64;
        count.imported = fresh.len() as u64;
        if !opts.dry_run && !fresh.is_empty() {
            queue.import(fresh.iter().map(|(item, _)| item.clone()).collect())?;
        }
        report.dlq.imported += count.imported;
        report.dlq.already_present += count.already_present;
        report.dlq.per_job.insert(dir.job.clone(), count);
        let fresh_ids: HashSet<&str> = fresh.iter().map(|(i, _)| i.item_id.as_str()).collect();
        // Read back: a file is imported when the queue holds exactly its item (on a dry
        // run, every file that converted would be). One snapshot, then one read per item.
        let after = if opts.dry_run {
            None
        } else {
            Some(queue.snapshot()?)
        };
        let mut files = Vec::new();
        for (item, f) in &items {
            let Some(after) = &after else {
                ledger.done.insert(f.path.clone());
                files.push(f.path.clone());
                continue;
            };
            let stored = match after.items.get(&item.item_id) {
                Some(summary) => Some(queue.item(summary)?),
                None => None,
            };
            match stored {
                Some(stored) if &stored == item => {
                    ledger.done.insert(f.path.clone());
                }
                Some(_) if !fresh_ids.contains(item.item_id.as_str()) => {
                    // Another item of this id was there before: kept, this file stays.
                }
                _ => {
                    return Err(MigrateError::Verify {
                        what: "DLQ items",
                        job: dir.job.clone(),
                        detail: format!("item {:?} does not read back as imported", item.item_id),
                    });
                }
            }
            files.push(f.path.clone());
        }
        if let Some(index) = &dir.index
            && report.rejected.len() == before
        {
            ledger.derived.push((index.clone(), files));
        }
    }
    Ok(())
}

fn import_checkpoints(
    refs: &RefStore,
    repo: &str,
    root: &Path,
    tree: &Tree,
    opts: Options,
    report: &mut Report,
    ledger: &mut Ledger,
) -> Result<(), MigrateError> {
    let states = JobStateManager::new(refs.clone(), repo)?;
    for dir in &tree.checkpoints {
        let before = report.rejected.len();
        report.checkpoints.read += dir.files.len() as u64;
        if !safe_job_dir(dir, report) {
            report.checkpoints.rejected_total += dir.files.len() as u64;
            continue;
        }
        let mut converted = Vec::new();
        for (_, f) in &dir.files {
            let reason = format!("imported from {}", f.rel);
            let result = crate::fsutil::read_nofollow(&f.path)
                .map_err(|e| (Reason::UnreadableFile, e.to_string()))
                .and_then(|bytes| {
                    let c = legacy::checkpoint(&bytes, &reason)?;
                    if let Err(e) = names::validate("job id", &c.job_id) {
                        return Err((Reason::UnsafeJobId, e.to_string()));
                    }
                    if c.job_id != dir.job {
                        return Err((
                            Reason::JobIdMismatch,
                            format!(
                                "the checkpoint is of job {:?}, its directory {:?}",
                                c.job_id, dir.job
                            ),
                        ));
                    }
                    Ok((c, bytes))
                });
            match result {
                Ok((c, bytes)) => {
                    if !c.unknown_items.is_empty() {
                        reject(
                            report,
                            f,
                            None,
                            Reason::UnknownItem,
                            format!(
                                "results for items not in the work list were left out: {}",
                                c.unknown_items.join(", ")
                            ),
                        );
                    }
                    converted.push((c, bytes, f));
                }
                Err((reason, detail)) => {
                    report.checkpoints.rejected_total += 1;
                    reject(report, f, None, reason, detail);
                }
            }
        }
        converted.sort_by_key(|(c, _, _)| c.version);
        converted.dedup_by_key(|(c, _, _)| c.version);
        if converted.is_empty() {
            continue;
        }
        let versions: Vec<u32> = converted.iter().map(|(c, _, _)| c.version).collect();
        report
            .checkpoints
            .latest_version_per_job
            .insert(dir.job.clone(), *versions.last().unwrap_or(&0));
        report
            .checkpoints
            .versions_per_job
            .insert(dir.job.clone(), versions);
        // The chain so far: nothing, or an imported one (go on after its newest version).
        let name = RefName::new(RefKind::State, repo, &dir.job)?;
        let head = refs.read(&name)?;
        let (after, spec) = match head {
            None => (None, None),
            Some(_) => {
                let (id, c) = states.head(&dir.job)?;
                let spec = states.read_spec(&c.spec)?;
                if spec.imported_from.is_none() {
                    for (_, _, f) in &converted {
                        report.checkpoints.rejected_total += 1;
                        reject(
                            report,
                            f,
                            None,
                            Reason::JobExists,
                            format!(
                                "job {} exists in the store and was not imported: left as it is",
                                dir.job
                            ),
                        );
                    }
                    continue;
                }
                (Some((id, c.version)), Some(spec))
            }
        };
        let (fresh, present): (Vec<_>, Vec<_>) = converted
            .iter()
            .partition(|(c, _, _)| after.is_none_or(|(_, v)| c.version > v));
        report.checkpoints.imported += fresh.len() as u64;
        report.checkpoints.already_present += present.len() as u64;
        if opts.dry_run {
            for (_, _, f) in &converted {
                ledger.done.insert(f.path.clone());
            }
            if let Some(index) = &dir.index
                && report.rejected.len() == before
            {
                let files = converted.iter().map(|(_, _, f)| f.path.clone()).collect();
                ledger.derived.push((index.clone(), files));
            }
            continue;
        }
        if !fresh.is_empty() {
            let oldest = &fresh[0].0;
            let spec = spec.unwrap_or_else(|| JobSpec {
                target_branch: None,
                id: dir.job.clone(),
                repo: repo.to_owned(),
                repo_root: root.to_path_buf(),
                workflow_path: PathBuf::new(),
                workflow: json!({ "legacy_config": oldest.config }),
                base_commit: String::new(),
                branch: String::new(),
                worktree: oldest
                    .parent_worktree
                    .clone()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
                agents_dir: PathBuf::new(),
                env: BTreeMap::new(),
                started: oldest.started.clone(),
                workflow_source: String::new(),
                imported_from: Some(relative(root, &dir.dir)),
            });
            let list = fresh
                .iter()
                .map(|(c, bytes, _)| ImportedCheckpoint {
                    checkpoint: c.checkpoint.clone(),
                    items: c.items.clone(),
                    original: bytes.clone(),
                })
                .collect();
            states.import(&dir.job, after.map(|(id, _)| id), &spec, list)?;
        }
        // Read back: every file's bytes are named by a checkpoint of the chain.
        let originals: HashSet<ObjectId> = states
            .history(&dir.job)?
            .into_iter()
            .filter_map(|(_, c)| c.original)
            .collect();
        let mut files = Vec::new();
        for (_, bytes, f) in &converted {
            if !originals.contains(&ObjectId::hash(ObjectType::Blob, bytes)) {
                return Err(MigrateError::Verify {
                    what: "checkpoints",
                    job: dir.job.clone(),
                    detail: format!("{} is not in the job's chain after the import", f.rel),
                });
            }
            ledger.done.insert(f.path.clone());
            files.push(f.path.clone());
        }
        if let Some(index) = &dir.index
            && report.rejected.len() == before
            && files.len() == dir.files.len()
        {
            ledger.derived.push((index.clone(), files));
        }
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// True when a file holds nothing but whitespace (safe to remove unimported).
fn is_empty_file(path: &Path) -> bool {
    crate::fsutil::read_nofollow(path).is_ok_and(|b| b.iter().all(u8::is_ascii_whitespace))
}

/// Removes the imported (or empty) legacy files, the derived indexes of fully imported
/// directories, then the legacy directories left empty. Returns what went (on a dry run,
/// what would).
fn remove_local(
    root: &Path,
    tree: &Tree,
    ledger: &Ledger,
    dry_run: bool,
) -> Result<Vec<String>, MigrateError> {
    let mut files: Vec<&Path> = Vec::new();
    let all = tree.events.iter().map(|e| &e.file).chain(
        tree.dlq
            .iter()
            .chain(&tree.checkpoints)
            .flat_map(|d| d.files.iter().map(|(_, f)| f)),
    );
    for f in all {
        if ledger.done.contains(&f.path) || is_empty_file(&f.path) {
            files.push(&f.path);
        }
    }
    for (index, covered) in &ledger.derived {
        if covered.iter().all(|p| ledger.done.contains(p)) {
            files.push(&index.path);
        }
    }
    let mut removed = Vec::new();
    for path in files {
        if !dry_run {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FsError::new("remove", path, e).into()),
            }
        }
        removed.push(relative(root, path));
    }
    if !dry_run {
        let mut dirs: Vec<&PathBuf> = tree.dirs.iter().collect();
        // Deepest first, so a parent is tried after its children.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs.dedup();
        for dir in dirs {
            // Only empty directories go; anything else left stays with its directory.
            if fs::remove_dir(dir).is_ok() {
                removed.push(format!("{}/", relative(root, dir)));
            }
        }
        if let Some(parent) = tree.dirs.last().and_then(|d| d.parent()) {
            crate::fsutil::sync_dir(parent).ok();
        }
    }
    Ok(removed)
}

/// The per-repository marker that the legacy warning was given:
/// `<home>/legacy-warned/<16 hex of blake3(root)>`. Returns true the first time for
/// `root` (the marker is created then), false afterwards or when it cannot be written.
pub fn first_warning(home: &Home, root: &Path) -> bool {
    let dir = home.root().join("legacy-warned");
    let hash = blake3::hash(root.as_os_str().as_encoded_bytes());
    let marker = dir.join(&hash.to_hex()[..16]);
    if marker.exists() {
        return false;
    }
    if crate::fsutil::ensure_dir(home.root(), &dir).is_err() {
        return false;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .is_ok()
}

/// True when the repository at `root` still holds the original tool's data in `.prodigy/`.
pub fn legacy_present(root: &Path) -> bool {
    legacy::present(root)
}

/// Helps group refusals: how many per reason over the whole report.
pub fn rejected_by_reason(report: &Report) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for r in &report.rejected {
        *out.entry(r.reason.as_str()).or_default() += 1;
    }
    out
}

/// Where the original tool kept `.prodigy/` for `path`: the root of the git worktree holding
/// it (each worktree had its own), else the path itself; a path naming a `.prodigy`
/// directory means its parent.
pub fn legacy_root(path: &Path) -> Result<PathBuf, FsError> {
    let canonical = fs::canonicalize(path).at("resolve", path)?;
    if canonical
        .file_name()
        .is_some_and(|n| n == crate::storage::LOCAL_DIR)
        && let Some(parent) = canonical.parent()
    {
        return Ok(parent.to_path_buf());
    }
    Ok(crate::repo::worktree_root(&canonical).unwrap_or(canonical))
}
