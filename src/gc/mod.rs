//! Garbage collection (DESIGN.md §10): expire old reflog entries, mark everything
//! reachable from refs and reflogs, sweep unreachable loose objects older than a grace
//! period, remove stale temp files, and pack the reachable loose objects (`crate::store::pack`),
//! merging packs once they pile up.
//!
//! gc holds the home's gc lock exclusively (`lock::gc_guard`) for its whole run; writers
//! hold it shared from their first object write until their ref moves
//! (`RefStore::write_guard`), so even `--prune now` never removes an object that a writer is
//! about to reference.
//!
//! Every object is read once: a scan reads every loose file (directory by directory, in
//! inode order, on several threads so that a cold disk's queue stays full) and every pack
//! (in large sequential chunks), verifies each object and notes its links. Marking then
//! walks those notes in memory, and the pack is written from the frames already read. A
//! reachable object that cannot be read stops gc before it removes anything, since what it
//! links to is unknown.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::fsutil::{self, FsError};
use crate::home::Home;
use crate::lock::{self, LockError, LockOptions};
use crate::par;
use crate::store::bucket::Collection;
use crate::store::object::{ObjectError, ObjectId, ObjectStore};
use crate::store::pack::{Entry, Pack};
use crate::store::refs::{LANES_DIR, RefError, RefKind, RefStore};
use repack::Source;

mod bucket;
mod repack;

/// Failures of gc.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The gc lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Reading refs or reflogs.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// Listing or reading objects.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// Removing files.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A reachable object that cannot be read: nothing was removed.
    #[error("reachable object {id} cannot be read, so gc removed nothing (run `prodigy fsck`)")]
    Unreadable {
        /// The object.
        id: ObjectId,
        /// Why.
        #[source]
        source: ObjectError,
    },
}

impl crate::hint::Hint for GcError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            GcError::Lock(e) => e.hint(),
            GcError::Ref(e) => e.hint(),
            GcError::Object(e) => e.hint(),
            GcError::Fs(e) => e.hint(),
            GcError::Unreadable { .. } => None,
        }
    }
}

/// The steps of a gc, as progress reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GcPhase {
    /// Reading and verifying every object.
    Scan,
    /// Removing unreachable objects and temp files.
    Prune,
    /// Writing the new pack.
    Pack,
    /// Removing the loose copies of packed objects.
    Remove,
}

impl GcPhase {
    /// The phase as a word.
    pub fn as_str(self) -> &'static str {
        match self {
            GcPhase::Scan => "scanning",
            GcPhase::Prune => "pruning",
            GcPhase::Pack => "packing",
            GcPhase::Remove => "removing loose copies",
        }
    }
}

/// A progress report: `done` of `total` in `phase`.
#[derive(Debug, Clone, Copy)]
pub struct GcProgress {
    /// The step.
    pub phase: GcPhase,
    /// Objects done in it.
    pub done: u64,
    /// Objects it has.
    pub total: u64,
}

/// Where progress goes (called from several threads).
pub type ProgressFn = Arc<dyn Fn(&GcProgress) + Send + Sync>;

/// How to collect.
#[derive(Clone)]
pub struct GcOptions {
    /// Unreachable objects and temp files younger than this stay (zero: `--prune now`).
    pub prune: Duration,
    /// Reflog entries older than this are dropped first (`None`: never).
    pub reflog_expire: Option<Duration>,
    /// Report only.
    pub dry_run: bool,
    /// Progress reports.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for GcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcOptions")
            .field("prune", &self.prune)
            .field("reflog_expire", &self.reflog_expire)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            prune: Duration::from_secs(3600),
            reflog_expire: Some(crate::config::DEFAULT_REFLOG_EXPIRE),
            dry_run: false,
            progress: None,
        }
    }
}

/// What gc did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Objects before, loose and packed.
    pub objects_before: u64,
    /// Objects reachable from refs and reflogs.
    pub reachable: u64,
    /// Unreachable objects removed.
    pub pruned: u64,
    /// Their bytes on disk.
    pub pruned_bytes: u64,
    /// Unreachable objects kept for being younger than the grace period.
    pub kept_young: u64,
    /// Reflog entries dropped for being older than the expiry.
    pub reflog_expired: u64,
    /// Temp files removed.
    pub temp_removed: u64,
    /// Bytes the objects (loose and packed) took on disk before: allocated blocks, so a
    /// 200-byte loose object counts its whole block.
    pub bytes_before: u64,
    /// Bytes on disk after, counted the same way.
    pub bytes_after: u64,
    /// Objects written into the new pack.
    pub packed: u64,
    /// Packs after.
    pub packs: u64,
    /// True when nothing was changed.
    pub dry_run: bool,
    /// True when the objects were packed in place (a home's files; a bucket is never
    /// packed).
    #[serde(skip)]
    pub repacked: bool,
}

/// Packs are merged into one once there are this many.
pub const MAX_PACKS: usize = 4;

/// A loose object as the scan found it.
struct Loose {
    path: PathBuf,
    ino: u64,
    /// Bytes on disk.
    size: u64,
    mtime: SystemTime,
    /// The verified frame, or why it cannot be used.
    frame: Result<Vec<u8>, ObjectError>,
    links: Vec<ObjectId>,
}

/// A packed object as the scan found it.
struct Packed {
    pack: usize,
    offset: u64,
    len: u32,
    checked: Result<(), ObjectError>,
    links: Vec<ObjectId>,
}

/// Counts done work and reports it every so often.
struct Ticker<'a> {
    progress: Option<&'a ProgressFn>,
    phase: GcPhase,
    done: AtomicU64,
    total: u64,
    started: std::time::Instant,
}

impl Drop for Ticker<'_> {
    fn drop(&mut self) {
        tracing::debug!(
            phase = self.phase.as_str(),
            done = self.done.load(Ordering::Relaxed),
            ms = self.started.elapsed().as_millis() as u64,
            "gc phase ended"
        );
    }
}

impl<'a> Ticker<'a> {
    fn new(opts: &'a GcOptions, phase: GcPhase, total: u64) -> Ticker<'a> {
        tracing::debug!(phase = phase.as_str(), total, "gc phase");
        let t = Ticker {
            progress: opts.progress.as_ref(),
            phase,
            done: AtomicU64::new(0),
            total,
            started: std::time::Instant::now(),
        };
        t.report(0);
        t
    }

    fn add(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        if (before + n) / 4096 != before / 4096 || before + n == self.total {
            self.report(before + n);
        }
    }

    fn report(&self, done: u64) {
        if let Some(p) = self.progress {
            p(&GcProgress {
                phase: self.phase,
                done,
                total: self.total,
            });
        }
    }
}

/// Collects the home's garbage.
pub fn gc(
    home: &Home,
    refs: &RefStore,
    lock_opts: &LockOptions,
    opts: GcOptions,
) -> Result<GcReport, GcError> {
    if let Collection::Bucket(keys) = Collection::of(refs)? {
        return bucket::gc(refs, &keys, &opts);
    }
    // A dry run on a read-only home takes no lock: it changes nothing, and nothing can
    // change the home under it through this mount.
    let _held = match lock::gc_guard(home.root(), lock_opts) {
        Err(lock::LockError::Fs(e)) if opts.dry_run && e.is_read_only() => None,
        held => Some(held?),
    };
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let store = refs.objects();
    let threads = par::io_threads();
    let roots = roots(home, refs, &opts, &mut report)?;

    // Read and verify everything once.
    let dirs = list_fanout(store)?;
    let listed: Vec<Vec<(ObjectId, PathBuf, u64)>> = par::map(&dirs, threads, |d| list_dir(d))
        .into_iter()
        .collect::<Result<_, _>>()?;
    let packs = store.packs(true);
    let pack_entries: Vec<Vec<Entry>> = packs
        .iter()
        .map(|p| {
            p.entries()
                .map_err(|e| FsError::new("read pack index", p.idx_path(), e))
        })
        .collect::<Result<_, _>>()?;
    let loose_count: u64 = listed.iter().map(|d| d.len() as u64).sum();
    let packed_count: u64 = pack_entries.iter().map(|e| e.len() as u64).sum();
    report.objects_before = loose_count + packed_count;
    let ticker = Ticker::new(&opts, GcPhase::Scan, loose_count + packed_count);
    let mut loose: HashMap<ObjectId, Loose> = HashMap::with_capacity(loose_count as usize);
    for dir in par::map(&listed, threads, |files| scan_dir(files, &ticker)) {
        loose.extend(dir);
    }
    drop(listed);
    let packed = scan_packs(&packs, pack_entries, threads, &ticker);

    let marked = mark(roots, &mut loose, &packed)?;
    report.reachable = marked.len() as u64;
    let pack_bytes_before = dir_bytes(&store.pack_dir());
    report.bytes_before = pack_bytes_before + loose.values().map(|l| l.size).sum::<u64>();

    // Sweep: unreachable loose objects past the grace period, and old temp files.
    let now = SystemTime::now();
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
    let mut doomed = Vec::new();
    let mut kept_bytes = 0;
    loose.retain(|id, l| {
        if marked.contains(id) {
            return true;
        }
        if age(l.mtime) < opts.prune {
            report.kept_young += 1;
            kept_bytes += l.size;
        } else {
            report.pruned += 1;
            report.pruned_bytes += l.size;
            doomed.push((std::mem::take(&mut l.path), l.ino));
        }
        false
    });
    for temp in temp_files(home, store)? {
        if older_than(&temp, opts.prune, now) {
            report.temp_removed += 1;
            doomed.push((temp, 0));
        }
    }
    // A pack holding unreachable objects past the grace period (a pack's age is its
    // file's) is rewritten without them. Once there are MAX_PACKS every pack is, except
    // one still in its grace period that holds unreachable objects: a `hash-object -w` of
    // many objects writes them as a pack that no ref names yet, and the pack keeps them,
    // and its own age, until it is old. A version 1 pack is rewritten in the current
    // format (its young unreachable objects carried over).
    let young: Vec<bool> = packs
        .iter()
        .map(|pack| !older_than(pack.pack_path(), opts.prune, now))
        .collect();
    let mut unreachable = vec![false; packs.len()];
    for (id, e) in &packed {
        unreachable[e.pack] |= !marked.contains(id);
    }
    let rewrite: Vec<bool> = packs
        .iter()
        .enumerate()
        .map(|(p, pack)| {
            let stale = !young[p] && unreachable[p];
            // Merged when there are MAX_PACKS, unless it holds unreachable objects: an old
            // such pack is `stale` anyway, a young one waits.
            let merged = packs.len() >= MAX_PACKS && !unreachable[p];
            pack.version() == 1 || stale || merged
        })
        .collect();
    for (id, e) in &packed {
        if marked.contains(id) {
            continue;
        }
        if rewrite[e.pack] && !young[e.pack] {
            report.pruned += 1;
            report.pruned_bytes += e.len as u64;
        } else {
            report.kept_young += 1;
        }
    }
    if opts.dry_run {
        report.bytes_after = report.bytes_before - report.pruned_bytes;
        report.packs = packs.len() as u64;
        return Ok(report);
    }
    remove_all(
        &doomed,
        threads,
        &Ticker::new(&opts, GcPhase::Prune, doomed.len() as u64),
    )?;
    pack(
        store,
        &packs,
        &rewrite,
        &young,
        loose,
        packed,
        &marked,
        threads,
        &opts,
        &mut report,
    )?;
    fsutil::sync_filesystem(home.root())?;
    report.repacked = true;
    report.packs = store.packs(true).len() as u64;
    report.bytes_after = dir_bytes(&store.pack_dir()) + kept_bytes;
    Ok(report)
}

/// Unix milliseconds before which reflog entries expire (`None`: never).
fn reflog_cutoff(opts: &GcOptions) -> Option<u64> {
    opts.reflog_expire.map(|expire| {
        SystemTime::now()
            .checked_sub(expire)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// The roots: every ref's value and every reflog entry that survives expiry (reflogs of
/// deleted refs too).
fn roots(
    home: &Home,
    refs: &RefStore,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<Vec<ObjectId>, GcError> {
    let mut roots: Vec<ObjectId> = refs.list(None)?.into_iter().map(|(_, id)| id).collect();
    let cutoff = reflog_cutoff(opts);
    for dir in ref_dirs(home) {
        let log = match cutoff {
            Some(cutoff) => {
                let (log, expired) = refs.expire_reflog(&dir, cutoff, opts.dry_run)?;
                report.reflog_expired += expired as u64;
                log
            }
            None => crate::store::refs::read_reflog(&dir.join("reflog"))?,
        };
        for e in log.entries {
            roots.extend([e.old, e.new].into_iter().filter(|id| !id.is_zero()));
        }
    }
    Ok(roots)
}

/// The fan-out directories (real ones: a symlink is not followed, and its objects read as
/// unreadable through the store).
fn list_fanout(store: &ObjectStore) -> Result<Vec<PathBuf>, GcError> {
    let dir = store.objects_dir();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("list", dir, e).into()),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if crate::store::object::is_fanout_name(&name)
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The objects of one fan-out directory, in inode order (the order a cold disk reads
/// fastest).
fn list_dir(dir: &Path) -> Result<Vec<(ObjectId, PathBuf, u64)>, GcError> {
    let prefix = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(FsError::new("list", dir, e).into()),
    };
    for entry in entries {
        let entry = entry.map_err(|e| FsError::new("list", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() != 62 || entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(id) = format!("{prefix}{name}").parse::<ObjectId>() {
            out.push((id, entry.path(), entry.ino()));
        }
    }
    out.sort_unstable_by_key(|e| e.2);
    Ok(out)
}

/// Reads and verifies the listed files of one directory (opened once: each file is
/// opened by name relative to it, and read with one positioned read of its size).
fn scan_dir(files: &[(ObjectId, PathBuf, u64)], ticker: &Ticker<'_>) -> Vec<(ObjectId, Loose)> {
    let dir = files
        .first()
        .and_then(|(_, p, _)| p.parent())
        .and_then(|d| {
            rustix::fs::open(
                d,
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW,
                rustix::fs::Mode::empty(),
            )
            .ok()
        });
    let mut out = Vec::with_capacity(files.len());
    // The next files are opened and their reads started ahead (WILLNEED), so the device
    // sees several neighbouring blocks at once and can merge them.
    let mut ahead: std::collections::VecDeque<std::io::Result<File>> = Default::default();
    let mut next = 0;
    for (id, path, ino) in files {
        while next < files.len() && ahead.len() < SCAN_AHEAD {
            let file = open_object(dir.as_ref(), &files[next].1);
            if let Ok(f) = &file {
                let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::WillNeed);
            }
            ahead.push_back(file);
            next += 1;
        }
        let file = ahead
            .pop_front()
            .unwrap_or_else(|| open_object(dir.as_ref(), path));
        if let Some(l) = scan_file(file, id, path, *ino) {
            out.push((*id, l));
        }
        ticker.add(1);
    }
    out
}

/// How many files of a directory the scan opens ahead of the one it reads (times 32
/// threads at most: 256 descriptors, well inside the usual limit of 1024).
const SCAN_AHEAD: usize = 8;

fn open_object(dir: Option<&rustix::fd::OwnedFd>, path: &Path) -> std::io::Result<File> {
    match (dir, path.file_name()) {
        (Some(dir), Some(name)) => rustix::fs::openat(
            dir,
            name,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map(File::from)
        .map_err(std::io::Error::from),
        _ => fsutil::open_nofollow(path),
    }
}

fn scan_file(file: std::io::Result<File>, id: &ObjectId, path: &Path, ino: u64) -> Option<Loose> {
    // Objects never change once renamed into place, so the size read is the size.
    let open = file.and_then(|f| {
        let meta = f.metadata()?;
        let mut buf = vec![0u8; meta.len() as usize];
        f.read_exact_at(&mut buf, 0)?;
        Ok((meta, buf))
    });
    let (size, mtime, frame) = match open {
        Ok((meta, buf)) => (
            disk_bytes(&meta),
            meta.modified().unwrap_or(UNIX_EPOCH),
            crate::store::object::decode(id, path, &buf).map(|object| (buf, object)),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            let meta = std::fs::symlink_metadata(path).ok();
            let error = if fsutil::is_symlink_refusal(&e) {
                ObjectError::Corrupt {
                    id: *id,
                    path: path.to_path_buf(),
                    reason: "it is a symlink, which the store never follows".into(),
                }
            } else {
                FsError::new("read object", path, e).into()
            };
            (
                meta.as_ref().map_or(0, disk_bytes),
                meta.and_then(|m| m.modified().ok()).unwrap_or(UNIX_EPOCH),
                Err(error),
            )
        }
    };
    let (frame, links) = match frame {
        Ok((buf, object)) => (Ok(buf), crate::reach::links(&object)),
        Err(e) => (Err(e), Vec::new()),
    };
    Some(Loose {
        path: path.to_path_buf(),
        ino,
        size,
        mtime,
        frame,
        links,
    })
}

/// Reads every pack in chunks of about this many bytes.
const PACK_CHUNK: u64 = 8 << 20;

/// Reads and verifies every packed object (the first good copy of an id wins).
fn scan_packs(
    packs: &[Arc<Pack>],
    entries: Vec<Vec<Entry>>,
    threads: usize,
    ticker: &Ticker<'_>,
) -> HashMap<ObjectId, Packed> {
    let mut chunks: Vec<(usize, Vec<Entry>)> = Vec::new();
    for (p, mut list) in entries.into_iter().enumerate() {
        list.sort_unstable_by_key(|e| e.1);
        let mut chunk = Vec::new();
        let mut bytes = 0u64;
        for e in list {
            bytes += e.2 as u64;
            chunk.push(e);
            if bytes >= PACK_CHUNK {
                chunks.push((p, std::mem::take(&mut chunk)));
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            chunks.push((p, chunk));
        }
    }
    let scanned = par::map(&chunks, threads, |(p, chunk)| {
        let out = scan_chunk(*p, &packs[*p], chunk);
        ticker.add(chunk.len() as u64);
        out
    });
    let mut packed: HashMap<ObjectId, Packed> = HashMap::new();
    for (id, object) in scanned.into_iter().flatten() {
        match packed.get(&id) {
            Some(have) if have.checked.is_ok() => {}
            _ => {
                packed.insert(id, object);
            }
        }
    }
    packed
}

fn scan_chunk(p: usize, pack: &Pack, chunk: &[Entry]) -> Vec<(ObjectId, Packed)> {
    // Entries are sorted by offset; one that reaches past the pack (a damaged index) is
    // corrupt, and never makes the read bigger than the pack.
    let start = chunk.first().map_or(0, |e| e.1).min(pack.pack_len());
    let end = chunk
        .iter()
        .map(|e| e.1.saturating_add(e.2 as u64).min(pack.pack_len()))
        .max()
        .unwrap_or(start)
        .max(start);
    let mut buf = vec![0u8; (end - start) as usize];
    let read = File::open(pack.pack_path()).and_then(|f| f.read_exact_at(&mut buf, start));
    chunk
        .iter()
        .map(|&(id, offset, len)| {
            let lo = (offset - start) as usize;
            let frame = lo.checked_add(len as usize).and_then(|hi| buf.get(lo..hi));
            let decoded = match (&read, frame) {
                (Ok(()), Some(frame)) => {
                    crate::store::object::decode_packed(&id, pack, offset, frame)
                }
                (Err(e), _) => Err(FsError::new(
                    "read pack",
                    pack.pack_path(),
                    std::io::Error::new(e.kind(), e.to_string()),
                )
                .into()),
                (Ok(()), None) => Err(ObjectError::Corrupt {
                    id,
                    path: pack.pack_path().to_path_buf(),
                    reason: format!("its entry points outside the pack at offset {offset}"),
                }),
            };
            let (checked, links) = match decoded {
                Ok(object) => (Ok(()), crate::reach::links(&object)),
                Err(e) => (Err(e), Vec::new()),
            };
            (
                id,
                Packed {
                    pack: p,
                    offset,
                    len,
                    checked,
                    links,
                },
            )
        })
        .collect()
}

/// Everything reachable from `roots`, walked over the scan's notes. A good copy (loose or
/// packed) is enough; an object with no good copy, or none at all, stops gc.
fn mark(
    mut stack: Vec<ObjectId>,
    loose: &mut HashMap<ObjectId, Loose>,
    packed: &HashMap<ObjectId, Packed>,
) -> Result<HashSet<ObjectId>, GcError> {
    let mut marked = HashSet::with_capacity(loose.len() + packed.len());
    while let Some(id) = stack.pop() {
        if !marked.insert(id) {
            continue;
        }
        let l = loose.get(&id);
        let p = packed.get(&id);
        if let Some(l) = l.filter(|l| l.frame.is_ok()) {
            stack.extend_from_slice(&l.links);
        } else if let Some(p) = p.filter(|p| p.checked.is_ok()) {
            stack.extend_from_slice(&p.links);
        } else if l.is_some() {
            let source = match loose.remove(&id).map(|l| l.frame) {
                Some(Err(e)) => e,
                _ => ObjectError::NotFound { id },
            };
            return Err(GcError::Unreadable { id, source });
        } else if let Some(p) = p {
            let source = match &p.checked {
                Err(ObjectError::Corrupt { id, path, reason }) => ObjectError::Corrupt {
                    id: *id,
                    path: path.clone(),
                    reason: reason.clone(),
                },
                _ => ObjectError::NotFound { id },
            };
            return Err(GcError::Unreadable { id, source });
        } else {
            // Missing is unreadable too: a pack whose index was lost or damaged still
            // holds it, and a gc that went on removed that pack (as left by an
            // interrupted gc) or rewrote it without the object, for good.
            return Err(GcError::Unreadable {
                id,
                source: ObjectError::NotFound { id },
            });
        }
    }
    Ok(marked)
}

/// Packs the reachable loose objects that no kept pack holds into a new pack, with what
/// stays of the packs being rewritten (their reachable objects, and all of a `young` one's);
/// removes the loose copies only after the pack and its index are durable, and the
/// rewritten packs only after the new one is.
#[allow(clippy::too_many_arguments)]
fn pack(
    store: &ObjectStore,
    packs: &[Arc<Pack>],
    rewrite: &[bool],
    young: &[bool],
    loose: HashMap<ObjectId, Loose>,
    packed: HashMap<ObjectId, Packed>,
    marked: &HashSet<ObjectId>,
    threads: usize,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<(), GcError> {
    remove_orphan_packs(store, opts.prune)?;
    let mut objects: Vec<(ObjectId, Source)> = Vec::new();
    let mut redundant: Vec<(PathBuf, u64)> = Vec::new();
    for (id, l) in loose {
        let kept = packed
            .get(&id)
            .is_some_and(|p| p.checked.is_ok() && !rewrite[p.pack]);
        if let (Ok(frame), false) = (l.frame, kept) {
            objects.push((id, Source::Loose(frame)));
        }
        redundant.push((l.path, l.ino));
    }
    for (id, p) in &packed {
        // A damaged packed copy is not carried over (a good loose copy, if any, is); an
        // unreachable one is while its pack is young.
        if rewrite[p.pack] && (marked.contains(id) || young[p.pack]) && p.checked.is_ok() {
            let (pack, offset, len) = (p.pack, p.offset, p.len);
            objects.push((*id, Source::Packed { pack, offset, len }));
        }
    }
    objects.sort_unstable_by_key(|o| o.0);
    objects.dedup_by(|a, b| a.0 == b.0);
    report.packed = objects.len() as u64;
    let mut written = None;
    if !objects.is_empty() {
        let (dictionary, frames) = repack::frames(store, &objects, packs, opts)?;
        let ids = objects.iter().map(|o| o.0);
        written = Some(store.write_pack(dictionary.as_ref().map(|d| d.bytes()), ids.zip(frames))?);
    }
    // The new pack is durable: the loose copies and the rewritten packs can go.
    remove_all(
        &redundant,
        threads,
        &Ticker::new(opts, GcPhase::Remove, redundant.len() as u64),
    )?;
    for (pack, _) in packs.iter().zip(rewrite).filter(|(_, r)| **r) {
        // A pack is named by its ids: a rewrite can produce a pack that is already there
        // (a gc killed before it removed the packs it had merged), which must stay.
        if written.as_deref() == Some(pack.idx_path()) {
            continue;
        }
        remove(pack.idx_path())?;
        remove(pack.pack_path())?;
    }
    let started = std::time::Instant::now();
    let removed = store.remove_empty_dirs();
    tracing::debug!(
        removed,
        ms = started.elapsed().as_millis() as u64,
        "gc removed emptied directories"
    );
    Ok(())
}

/// Removes what a gc killed while packing left: a pack without its index, once past the
/// grace period.
fn remove_orphan_packs(store: &ObjectStore, prune: Duration) -> Result<(), GcError> {
    let Ok(entries) = std::fs::read_dir(store.pack_dir()) else {
        return Ok(());
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "pack")
            && !p.with_extension("idx").exists()
            && older_than(&p, prune, now)
        {
            remove(&p)?;
        }
    }
    Ok(())
}

/// Removes files (`(path, inode)`) on several threads, a directory's files together in
/// inode order (which keeps the file system's inode-table and bitmap updates close).
fn remove_all(
    files: &[(PathBuf, u64)],
    threads: usize,
    ticker: &Ticker<'_>,
) -> Result<(), GcError> {
    let mut by_dir: HashMap<&Path, Vec<(&Path, u64)>> = HashMap::new();
    for (p, ino) in files {
        by_dir
            .entry(p.parent().unwrap_or(Path::new("")))
            .or_default()
            .push((p, *ino));
    }
    let mut groups: Vec<Vec<(&Path, u64)>> = by_dir.into_values().collect();
    for g in &mut groups {
        g.sort_unstable_by_key(|f| f.1);
    }
    par::map(&groups, threads, |group| {
        // Names relative to the open directory: no path walk per file.
        let dir = group.first().and_then(|(p, _)| p.parent());
        let fd = dir.and_then(|d| {
            rustix::fs::open(
                d,
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW,
                rustix::fs::Mode::empty(),
            )
            .ok()
        });
        for (p, _) in group {
            match (&fd, p.file_name()) {
                (Some(fd), Some(name)) => {
                    match rustix::fs::unlinkat(fd, name, rustix::fs::AtFlags::empty()) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                        Err(e) => return Err(FsError::new("remove", *p, e.into())),
                    }
                }
                _ => remove(p)?,
            }
            ticker.add(1);
        }
        Ok::<(), FsError>(())
    })
    .into_iter()
    .collect::<Result<(), FsError>>()?;
    Ok(())
}

/// True when the file at `path` was last modified at least `age` before `now` (or cannot
/// be inspected: a file that vanished or cannot be read has no age worth waiting for).
fn older_than(path: &Path, age: Duration, now: SystemTime) -> bool {
    std::fs::symlink_metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .is_none_or(|m| now.duration_since(m).unwrap_or_default() >= age)
}

/// What a file takes on disk (its allocated blocks).
fn disk_bytes(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| disk_bytes(&m))
                .sum()
        })
        .unwrap_or(0)
}

fn remove(path: &Path) -> Result<(), FsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::new("remove", path, e)),
    }
}

/// Every ref directory (with a HEAD, or only a reflog left by a deleted ref), writers'
/// refs of event logs included.
fn ref_dirs(home: &Home) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for kind in [
        RefKind::Events,
        RefKind::Dlq,
        RefKind::State,
        RefKind::Archive,
    ] {
        let Ok(repos) = std::fs::read_dir(home.kind_dir(kind.as_str())) else {
            continue;
        };
        for repo in repos.flatten() {
            let Ok(jobs) = std::fs::read_dir(repo.path()) else {
                continue;
            };
            for job in jobs.flatten().map(|j| j.path()).filter(|p| p.is_dir()) {
                // A job's event log has its writers' refs inside (`writers/<writer>/`).
                if kind == RefKind::Events
                    && let Ok(lanes) = std::fs::read_dir(job.join(LANES_DIR))
                {
                    out.extend(lanes.flatten().map(|l| l.path()).filter(|p| p.is_dir()));
                }
                // Only a ref's directory (a job's events directory may hold only its
                // writers').
                if job.join("HEAD").exists() || job.join("reflog").exists() {
                    out.push(job);
                }
            }
        }
    }
    out.sort();
    out
}

/// Temp files of the objects and of the ref directories.
fn temp_files(home: &Home, store: &ObjectStore) -> Result<Vec<PathBuf>, GcError> {
    let mut out = store.temp_files()?;
    for dir in ref_dirs(home) {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            out.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "tmp")),
            );
        }
    }
    Ok(out)
}
