//! `fsck`: verifies every object (re-hash), every ref and reflog, everything a ref reaches
//! (event-log chains and their batches, DLQ snapshots, shards and items), and the repo
//! records, and finds stray temp files left by interrupted writers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::fsutil::{self, FsError, IoContext};
use crate::home::Home;
use crate::names;
use crate::repo::{self, RepoError};
use crate::store::bucket::Collection;
use crate::store::object::{ObjectError, ObjectId, ObjectStore};
use crate::store::refs::{RefError, RefKind, RefName, RefStore};

mod bucket;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data is wrong or missing: `fsck` fails.
    Error,
    /// Expected after a crash or harmless (a reflog gap, an unknown file): reported only.
    Warning,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The file, relative to the home.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// A temp file left by a writer (running now, or killed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TempFile {
    /// The file, relative to the home.
    pub path: PathBuf,
    /// Its age in whole seconds.
    pub age_secs: u64,
}

/// What `fsck` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    /// Loose objects verified.
    pub objects: usize,
    /// Refs checked.
    pub refs: usize,
    /// Problems, errors first.
    pub findings: Vec<Finding>,
    /// Temp files present.
    pub temp_files: Vec<TempFile>,
}

impl FsckReport {
    /// The number of errors (warnings do not count).
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }
}

/// Failures that stop `fsck` itself (as opposed to problems it reports).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    /// A file-system operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The object store could not be listed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The refs could not be listed.
    #[error(transparent)]
    Ref(#[from] RefError),
    /// The repo records could not be listed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl crate::hint::Hint for FsckError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            FsckError::Fs(e) => e.hint(),
            FsckError::Object(e) => e.hint(),
            FsckError::Ref(e) => e.hint(),
            FsckError::Repo(e) => e.hint(),
        }
    }
}

struct Checker<'a> {
    home: &'a Home,
    report: FsckReport,
    good: HashSet<ObjectId>,
    bad: HashSet<ObjectId>,
    /// The links of every good object that has some (see [`crate::reach`]).
    links: HashMap<ObjectId, Vec<ObjectId>>,
    /// Every ref's value, for the reachability walk.
    heads: Vec<(RefName, PathBuf, ObjectId)>,
    /// What refs and reflog entries name, checked once the objects are listed: (the file,
    /// what names it, the id).
    named: Vec<(PathBuf, String, ObjectId)>,
    now: SystemTime,
}

impl Checker<'_> {
    fn rel(&self, path: &Path) -> PathBuf {
        path.strip_prefix(self.home.root())
            .unwrap_or(path)
            .to_path_buf()
    }

    fn find(&mut self, severity: Severity, path: &Path, message: impl Into<String>) {
        let path = self.rel(path);
        self.report.findings.push(Finding {
            severity,
            path,
            message: message.into(),
        });
    }

    fn temp(&mut self, path: &Path) {
        let age_secs = fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| self.now.duration_since(t).ok())
            .map_or(0, |d| d.as_secs());
        let path = self.rel(path);
        self.report.temp_files.push(TempFile { path, age_secs });
    }

    fn objects(&mut self, store: &ObjectStore) -> Result<(), FsckError> {
        let (ids, strays) = store.list_loose()?;
        for stray in strays {
            let is_link = fs::symlink_metadata(&stray).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                self.find(
                    Severity::Error,
                    &stray,
                    "a symlink inside objects/, which the store never follows",
                );
            } else {
                self.find(
                    Severity::Warning,
                    &stray,
                    "not an object file (unexpected name)",
                );
            }
        }
        for (id, path) in ids {
            let result = store.read_loose(&id).map_err(|e| crate::error_line(&e));
            self.checked(id, result, &path, "");
        }
        match store.temp_files() {
            Ok(paths) => paths.iter().for_each(|path| self.temp(path)),
            // `objects/tmp` made a file, say: a finding, and the check goes on.
            Err(e) => {
                let tmp = store.tmp_dir().to_path_buf();
                self.find(Severity::Error, &tmp, crate::error_line(&e));
            }
        }
        self.packs(store);
        Ok(())
    }

    /// Counts an object read for checking: its links when good, an error when not (a good
    /// copy elsewhere — loose or in another pack — still makes the id good).
    fn checked(
        &mut self,
        id: ObjectId,
        result: Result<crate::store::object::Object, String>,
        path: &Path,
        context: &str,
    ) {
        self.report.objects += 1;
        match result {
            Ok(object) => {
                self.good.insert(id);
                let links = crate::reach::links(&object);
                if !links.is_empty() {
                    self.links.insert(id, links);
                }
            }
            Err(e) => {
                self.bad.insert(id);
                self.find(Severity::Error, path, format!("{context}{e}"));
            }
        }
    }

    /// Every pack: its index opens, both checksums match, and every object in it decodes
    /// and re-hashes (a bad one is named with its offset).
    fn packs(&mut self, store: &ObjectStore) {
        let dir = store.pack_dir();
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|e| e.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.sort();
        for path in paths {
            match path.extension().and_then(|e| e.to_str()) {
                Some("idx") => {}
                Some("pack") if path.with_extension("idx").exists() => continue,
                Some("pack") => {
                    self.find(
                        Severity::Warning,
                        &path,
                        "a pack without an index (left by an interrupted gc; the next gc removes it)",
                    );
                    continue;
                }
                _ => {
                    self.find(
                        Severity::Warning,
                        &path,
                        "not a pack file (unexpected name)",
                    );
                    continue;
                }
            }
            let pack = match crate::store::pack::Pack::open(&path) {
                Ok(p) => p,
                Err(e) => {
                    self.find(Severity::Error, &path, format!("corrupt pack index: {e}"));
                    continue;
                }
            };
            // A checksum names the pack; the objects below name themselves and their offsets.
            if let Err(e) = pack.verify() {
                self.find(Severity::Error, &path, format!("corrupt pack: {e}"));
            }
            let entries = match pack.entries() {
                Ok(e) => e,
                Err(e) => {
                    self.find(
                        Severity::Error,
                        &path,
                        format!("cannot read pack index: {e}"),
                    );
                    continue;
                }
            };
            // Without its dictionary no object of the pack reads: one finding, not one an
            // object.
            if let Err(e) = pack.dictionary() {
                self.find(
                    Severity::Error,
                    pack.pack_path(),
                    format!(
                        "corrupt pack: {e}: none of its {} objects can be read",
                        entries.len()
                    ),
                );
                for (id, _, _) in entries {
                    self.report.objects += 1;
                    self.bad.insert(id);
                }
                continue;
            }
            for (id, offset, len) in entries {
                let object = match pack.frame(offset, len) {
                    Ok(bytes) => crate::store::object::decode_packed(&id, &pack, offset, &bytes)
                        .map_err(|e| crate::error_line(&e)),
                    Err(e) => Err(format!("object {id} at offset {offset}: {e}")),
                };
                self.checked(id, object, pack.pack_path(), "");
            }
        }
    }

    /// Notes that `what` in `path` names `id`, to be checked by [`Checker::named`] once the
    /// objects are listed.
    fn target(&mut self, path: &Path, what: &str, id: ObjectId) {
        self.named.push((path.to_path_buf(), what.to_owned(), id));
    }

    /// Every id a ref or a reflog entry named is a good object. The refs are read before the objects are listed: a writer writes its
    /// objects before it moves a ref, so what a ref named then is listed (a ref moved during
    /// the listing would name objects written after it).
    /// What an object that did not read is: corrupt (there, not what it claims) or
    /// missing.
    fn state_of(&self, id: &ObjectId) -> &'static str {
        match self.bad.contains(id) {
            true => "corrupt",
            false => "missing",
        }
    }

    fn named(&mut self) {
        for (path, what, id) in std::mem::take(&mut self.named) {
            if self.good.contains(&id) {
                continue;
            }
            let state = self.state_of(&id);
            self.find(
                Severity::Error,
                &path,
                format!("{what} names {state} object {id}"),
            );
        }
    }

    /// A good object a ref names is of its kind's type (`RefKind::object_type`), or a
    /// warning says that the ref's readers will refuse it. Not an error: nothing is
    /// damaged, and `ref update` is plumbing that sets any good object, as the store's own
    /// compare-and-swap tests do.
    fn kind_of_head(&mut self, store: &RefStore, name: &RefName, path: &Path, id: ObjectId) {
        if !self.good.contains(&id) {
            return;
        }
        let want = name.kind().object_type();
        match store.objects().read(&id) {
            Ok(object) if object.kind == want => {}
            Ok(object) => self.find(
                Severity::Warning,
                path,
                format!(
                    "ref {name} names {id}, a {} object: its readers expect a {want}",
                    object.kind
                ),
            ),
            Err(e) => self.find(Severity::Error, path, crate::error_line(&e)),
        }
    }

    /// The entries of a directory of the ref tree, or none and a finding when it cannot be
    /// listed (a file where the directory should be): the check goes on.
    fn entries(&mut self, dir: &Path) -> Vec<PathBuf> {
        list_entries(dir).unwrap_or_else(|e| {
            self.find(Severity::Error, dir, crate::error_line(&e));
            Vec::new()
        })
    }

    fn refs(&mut self, store: &RefStore) -> Result<(), FsckError> {
        for kind in RefKind::ALL {
            let kind_dir = self.home.kind_dir(kind.as_str());
            for repo_dir in self.entries(&kind_dir) {
                let Some(repo) = self.component(&repo_dir, "repo name")? else {
                    continue;
                };
                for job_dir in self.entries(&repo_dir) {
                    let Some(job) = self.component(&job_dir, "job id")? else {
                        continue;
                    };
                    let name = RefName::new(kind, &repo, &job)?;
                    self.one_ref(store, &name, &job_dir)?;
                }
            }
        }
        Ok(())
    }

    /// Checks that a directory entry of the ref tree is a real directory with a valid
    /// name; returns the name when it is.
    fn component(&mut self, path: &Path, what: &'static str) -> Result<Option<String>, FsckError> {
        let meta = fs::symlink_metadata(path).at("inspect", path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if meta.file_type().is_symlink() {
            self.find(
                Severity::Error,
                path,
                "a symlink in the ref tree, which the store never follows",
            );
            return Ok(None);
        }
        if !meta.is_dir() {
            self.find(Severity::Warning, path, "unexpected file in the ref tree");
            return Ok(None);
        }
        if let Err(e) = names::validate(what, &name) {
            self.find(Severity::Error, path, e.to_string());
            return Ok(None);
        }
        Ok(Some(name))
    }

    fn one_ref(&mut self, store: &RefStore, name: &RefName, dir: &Path) -> Result<(), FsckError> {
        for path in self.entries(dir) {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match file.as_str() {
                "HEAD" | "lock" | "reflog" => {}
                // A job's run lock (held by the process running it).
                "run.lock" if name.kind() == crate::store::refs::RefKind::State => {}
                // The refs of an event log's writers.
                crate::store::refs::LANES_DIR
                    if name.kind() == crate::store::refs::RefKind::Events
                        && name.writer().is_none()
                        && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) =>
                {
                    for lane_dir in self.entries(&path) {
                        let Some(writer) = self.component(&lane_dir, "writer")? else {
                            continue;
                        };
                        let lane = RefName::lane(name.repo(), name.job(), &writer)?;
                        self.one_ref(store, &lane, &lane_dir)?;
                    }
                }
                _ if file.ends_with(".tmp") => self.temp(&path),
                _ => self.find(
                    Severity::Warning,
                    &path,
                    "unexpected file in a ref directory",
                ),
            }
        }
        let head_path = store.head_path(name);
        let head = match store.read(name) {
            Ok(head) => head,
            Err(RefError::Corrupt { reason, .. }) => {
                self.find(
                    Severity::Error,
                    &head_path,
                    format!("ref {name} is corrupt: {reason}"),
                );
                return Ok(());
            }
            // A HEAD that is a directory, or cannot be read: this ref's finding, and the
            // check goes on.
            Err(e) => {
                self.find(Severity::Error, &head_path, crate::error_line(&e));
                return Ok(());
            }
        };
        if let Some(id) = head {
            self.report.refs += 1;
            self.target(&head_path, &format!("ref {name}"), id);
            self.heads.push((name.clone(), head_path.clone(), id));
        }
        let log_path = store.reflog_path(name);
        let log = match store.log(name) {
            Ok(log) => log,
            Err(e) => {
                self.find(Severity::Error, &log_path, crate::error_line(&e));
                return Ok(());
            }
        };
        self.check_log(name, &log_path, &log, head);
        Ok(())
    }

    /// A reflog's lines parse, its entries name good objects and follow one another, and
    /// the last one matches the ref.
    fn check_log(
        &mut self,
        name: &RefName,
        log_path: &Path,
        log: &crate::store::refs::Reflog,
        head: Option<ObjectId>,
    ) {
        let lines = log.entries.len() + log.bad_lines.len();
        for (n, reason) in &log.bad_lines {
            if *n == lines && log.torn_tail {
                self.find(
                    Severity::Warning,
                    log_path,
                    format!("line {n} is torn (an append cut short by a crash)"),
                );
            } else {
                self.find(Severity::Error, log_path, format!("line {n}: {reason}"));
            }
        }
        let mut previous: Option<ObjectId> = None;
        for (n, entry) in log.entries.iter().enumerate() {
            for id in [entry.old, entry.new] {
                if !id.is_zero() {
                    self.target(log_path, &format!("entry {}", n + 1), id);
                }
            }
            if previous.is_some_and(|p| p != entry.old) {
                self.find(
                    Severity::Warning,
                    log_path,
                    format!("entry {} does not follow the one before (an update whose reflog line was lost in a crash)", n + 1),
                );
            }
            previous = Some(entry.new);
        }
        let last = previous.filter(|id| !id.is_zero());
        // An empty reflog beside a ref is what gc's reflog expiry leaves.
        if !log.entries.is_empty() && last != head {
            self.find(
                Severity::Warning,
                log_path,
                format!("the last entry does not match ref {name} (an update interrupted between its two steps)"),
            );
        }
    }

    /// Walks every ref's objects through their links: each must be present and valid.
    fn reachability(&mut self) {
        let mut seen: HashSet<ObjectId> = HashSet::new();
        for (name, path, head) in std::mem::take(&mut self.heads) {
            let mut stack = vec![head];
            while let Some(id) = stack.pop() {
                if !seen.insert(id) {
                    continue;
                }
                for link in self.links.get(&id).cloned().unwrap_or_default() {
                    if self.good.contains(&link) {
                        stack.push(link);
                    } else {
                        let state = self.state_of(&link);
                        self.find(
                            Severity::Error,
                            &path,
                            format!("ref {name} reaches {state} object {link} (named by {id})"),
                        );
                    }
                }
            }
        }
    }

    fn records(&mut self) -> Result<(), FsckError> {
        let dir = self.home.repos_dir();
        for path in self.entries(&dir) {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if file.ends_with(".tmp") {
                self.temp(&path);
                continue;
            }
            let Some(name) = file.strip_suffix(".json") else {
                self.find(Severity::Warning, &path, "unexpected file in repos/");
                continue;
            };
            match repo::read_record(self.home, name) {
                Ok(Some(record)) if record.name == name => {}
                Ok(Some(record)) => self.find(
                    Severity::Error,
                    &path,
                    format!("the record names {:?}, not {name:?}", record.name),
                ),
                Ok(None) => {}
                Err(e) => self.find(Severity::Error, &path, crate::error_line(&e)),
            }
        }
        Ok(())
    }
}

/// Checks the whole store of `home`.
pub fn fsck(home: &Home, refs: &RefStore) -> Result<FsckReport, FsckError> {
    if let Collection::Bucket(keys) = Collection::of(refs)? {
        return bucket::fsck(home, refs, &keys);
    }
    // The home's gc lock, shared as writers hold it: gc neither packs nor removes an object
    // while it is being checked. A home that does not exist is not made; a read-only one
    // takes no lock (nothing can change it through this mount).
    let _guard = if home.root().exists() {
        match refs.write_guard() {
            Err(RefError::Lock(crate::lock::LockError::Fs(e))) if e.is_read_only() => None,
            guard => Some(guard?),
        }
    } else {
        None
    };
    let mut checker = Checker {
        home,
        report: FsckReport::default(),
        good: HashSet::new(),
        bad: HashSet::new(),
        links: HashMap::new(),
        heads: Vec::new(),
        named: Vec::new(),
        now: SystemTime::now(),
    };
    checker.refs(refs)?;
    checker.objects(refs.objects())?;
    checker.named();
    for (name, path, id) in checker.heads.clone() {
        checker.kind_of_head(refs, &name, &path, id);
    }
    checker.reachability();
    checker.records()?;
    let mut report = checker.report;
    report.findings.sort();
    report.temp_files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// Removes the temp files of `report` at least `min_age` old (a younger one may belong to
/// a writer that is still running). Returns the removed paths, relative to the home.
pub fn remove_temp_files(
    home: &Home,
    report: &FsckReport,
    min_age: Duration,
) -> Result<Vec<PathBuf>, FsckError> {
    let mut removed = Vec::new();
    for temp in &report.temp_files {
        if temp.age_secs < min_age.as_secs() {
            continue;
        }
        let path = home.root().join(&temp.path);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(temp.path.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FsError::new("remove temp file", path, e).into()),
        }
        if let Some(parent) = path.parent() {
            fsutil::sync_dir(parent)?;
        }
    }
    Ok(removed)
}

fn list_entries(dir: &Path) -> Result<Vec<PathBuf>, FsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("list", dir, e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.at("list", dir)?.path());
    }
    paths.sort();
    Ok(paths)
}
