//! Garbage collection (DESIGN.md §10): mark everything reachable from refs and reflogs,
//! sweep unreachable loose objects older than a grace period, remove stale temp files,
//! and pack the reachable loose objects (`crate::pack`), merging packs once they pile up.
//!
//! gc holds the home's gc lock exclusively (`lock::gc_guard`) for its whole run; writers
//! hold it shared from their first object write until their ref moves
//! (`RefStore::write_guard`), so even `--prune now` never removes an object that a writer is
//! about to reference. Reflogs are roots: an object any ref ever named stays (reflog
//! expiry is a later setting). A reachable object that cannot be read stops gc before it
//! removes anything, since what it links to is unknown.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::fsutil::{self, FsError};
use crate::home::Home;
use crate::lock::{self, LockError, LockOptions};
use crate::object::{ObjectError, ObjectId};
use crate::refs::{RefError, RefKind, RefStore};

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

/// How to collect.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Unreachable objects and temp files younger than this stay (zero: `--prune now`).
    pub prune: Duration,
    /// Report only.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            prune: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// What gc did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Loose objects before.
    pub objects_before: u64,
    /// Objects reachable from refs and reflogs.
    pub reachable: u64,
    /// Unreachable objects removed.
    pub pruned: u64,
    /// Their bytes on disk.
    pub pruned_bytes: u64,
    /// Unreachable objects kept for being younger than the grace period.
    pub kept_young: u64,
    /// Reachable objects named by a ref or reflog but missing (fsck reports them).
    pub missing: u64,
    /// Temp files removed.
    pub temp_removed: u64,
    /// Bytes of objects (loose and packed) before.
    pub bytes_before: u64,
    /// Bytes of objects (loose and packed) after.
    pub bytes_after: u64,
    /// Objects written into the new pack.
    pub packed: u64,
    /// Packs after.
    pub packs: u64,
    /// True when nothing was changed.
    pub dry_run: bool,
}

/// Collects the home's garbage.
pub fn gc(
    home: &Home,
    refs: &RefStore,
    lock_opts: &LockOptions,
    opts: GcOptions,
) -> Result<GcReport, GcError> {
    let _held = lock::gc_guard(home.root(), lock_opts)?;
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let store = refs.objects();
    let marked = mark(home, refs, &mut report)?;
    report.reachable = marked.len() as u64;
    let now = SystemTime::now();
    let (loose, _) = store.list_loose()?;
    report.bytes_before = dir_bytes(&store.pack_dir());
    for pack in store.packs(true) {
        report.objects_before += pack.len();
    }
    let mut touched_dirs = HashSet::new();
    for (id, path) in loose {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        report.objects_before += 1;
        report.bytes_before += meta.len();
        if marked.contains(&id) {
            report.bytes_after += meta.len();
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age < opts.prune {
            report.kept_young += 1;
            report.bytes_after += meta.len();
            continue;
        }
        report.pruned += 1;
        report.pruned_bytes += meta.len();
        if !opts.dry_run {
            remove(&path)?;
            if let Some(dir) = path.parent() {
                touched_dirs.insert(dir.to_path_buf());
            }
        }
    }
    for temp in temp_files(home, store)? {
        let age = std::fs::symlink_metadata(&temp)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age >= opts.prune {
            report.temp_removed += 1;
            if !opts.dry_run {
                remove(&temp)?;
                if let Some(dir) = temp.parent() {
                    touched_dirs.insert(dir.to_path_buf());
                }
            }
        }
    }
    for dir in &touched_dirs {
        fsutil::sync_dir(dir)?;
    }
    if !opts.dry_run {
        pack(home, store, &marked, opts, &mut report)?;
    }
    Ok(report)
}

/// Packs merged into one once there are more than this.
pub const MAX_PACKS: usize = 4;

/// Packs the reachable loose objects into a new pack (and, once packs pile up, every pack
/// into one, dropping what is no longer reachable); removes the loose copies only after
/// the pack and its index are durable, and old packs only after the new one is.
fn pack(
    home: &Home,
    store: &crate::object::ObjectStore,
    marked: &HashSet<ObjectId>,
    opts: GcOptions,
    report: &mut GcReport,
) -> Result<(), GcError> {
    let now = SystemTime::now();
    // A pack without an index is what a gc killed while packing left.
    if let Ok(entries) = std::fs::read_dir(store.pack_dir()) {
        for e in entries.flatten() {
            let p = e.path();
            let young = std::fs::metadata(&p)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age < opts.prune);
            if p.extension().is_some_and(|x| x == "pack")
                && !p.with_extension("idx").exists()
                && !young
            {
                remove(&p)?;
            }
        }
    }
    let (loose, _) = store.list_loose()?;
    let loose: Vec<(ObjectId, PathBuf)> = loose
        .into_iter()
        .filter(|(id, _)| marked.contains(id))
        .collect();
    let old_packs = store.packs(true);
    let merge = old_packs.len() >= MAX_PACKS;
    if loose.is_empty() && !merge {
        report.packs = old_packs.len() as u64;
        return Ok(());
    }
    let mut objects: Vec<(ObjectId, Vec<u8>)> = Vec::with_capacity(loose.len());
    for (id, path) in &loose {
        let bytes = match fsutil::read_nofollow(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(FsError::new("read object", path, e).into()),
        };
        crate::object::decode(id, path, &bytes)
            .map_err(|source| GcError::Unreadable { id: *id, source })?;
        objects.push((*id, bytes));
    }
    if merge {
        for pack in &old_packs {
            let entries = pack
                .entries()
                .map_err(|e| FsError::new("read pack index", pack.idx_path(), e))?;
            for (id, offset, len) in entries {
                if !marked.contains(&id) {
                    report.pruned += 1;
                    continue;
                }
                let bytes = pack
                    .frame(offset, len)
                    .map_err(|e| FsError::new("read pack", pack.pack_path(), e))?;
                crate::object::decode(&id, pack.pack_path(), &bytes)
                    .map_err(|source| GcError::Unreadable { id, source })?;
                objects.push((id, bytes));
            }
        }
    }
    objects.sort_by_key(|o| o.0);
    objects.dedup_by(|a, b| a.0 == b.0);
    report.packed = objects.len() as u64;
    crate::pack::write(&store.pack_dir(), &store.pack_tmp_dir(), objects)?;
    // The pack is durable: the loose copies (and merged packs) can go.
    for (_, path) in &loose {
        remove(path)?;
    }
    if merge {
        for pack in &old_packs {
            remove(pack.idx_path())?;
            remove(pack.pack_path())?;
        }
    }
    fsutil::sync_filesystem(home.root())?;
    report.packs = store.packs(true).len() as u64;
    report.bytes_after = dir_bytes(&store.pack_dir()) + loose_bytes(store)?;
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn loose_bytes(store: &crate::object::ObjectStore) -> Result<u64, GcError> {
    let (loose, _) = store.list_loose()?;
    Ok(loose
        .iter()
        .filter_map(|(_, p)| std::fs::symlink_metadata(p).ok())
        .map(|m| m.len())
        .sum())
}

fn remove(path: &Path) -> Result<(), FsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::new("remove", path, e)),
    }
}

/// Every ref directory (with a HEAD, or only a reflog left by a deleted ref).
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
            out.extend(jobs.flatten().map(|j| j.path()).filter(|p| p.is_dir()));
        }
    }
    out.sort();
    out
}

/// Temp files of the objects and of the ref directories.
fn temp_files(home: &Home, store: &crate::object::ObjectStore) -> Result<Vec<PathBuf>, GcError> {
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

/// Everything reachable from the refs and every reflog entry.
fn mark(home: &Home, refs: &RefStore, report: &mut GcReport) -> Result<HashSet<ObjectId>, GcError> {
    let mut stack: Vec<ObjectId> = refs.list(None)?.into_iter().map(|(_, id)| id).collect();
    for dir in ref_dirs(home) {
        let log = crate::refs::read_reflog(&dir.join("reflog"))?;
        for e in log.entries {
            stack.extend([e.old, e.new].into_iter().filter(|id| !id.is_zero()));
        }
    }
    let store = refs.objects();
    let mut marked = HashSet::new();
    while let Some(id) = stack.pop() {
        if !marked.insert(id) {
            continue;
        }
        match store.read(&id) {
            Ok(object) => stack.extend(crate::reach::links(&object)),
            Err(ObjectError::NotFound { .. }) => report.missing += 1,
            Err(source) => return Err(GcError::Unreadable { id, source }),
        }
    }
    Ok(marked)
}
