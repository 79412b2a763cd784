//! Refs: small mutable files `<kind>/<repo>/<job>/HEAD` naming an object, changed only by
//! compare-and-swap under the ref's lock, with a reflog line per change (DESIGN.md §5).
//!
//! Readers take no lock: `HEAD` is only ever replaced by rename, so it is always a whole
//! old or new value.
//!
//! In an S3 store a ref is a key moved by a conditional put on its ETag, each reflog entry
//! a key of its own ([`super::keys`]), and a job's run lock a lease ([`super::s3::lease`]).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::keys;
use super::object::{ObjectError, ObjectId, ObjectStore};
use super::s3::{Outcome, Put, Remote, RemoteError, Version};
use crate::fsutil::{self, FsError, IoContext};
use crate::home::Home;
use crate::lock::{self, LockError, LockMode, LockOptions};
use crate::names::{self, NameError};

/// The kinds of refs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    /// Archived event batches of a job.
    Archive,
    /// A job's dead-letter queue (newest `dlq` snapshot).
    Dlq,
    /// A job's event log (newest `log` node).
    Events,
    /// A job's checkpoints (newest `checkpoint`).
    State,
}

impl RefKind {
    /// Every kind, sorted by name (the declaration order above, which `Ord` follows).
    pub const ALL: [RefKind; 4] = [
        RefKind::Archive,
        RefKind::Dlq,
        RefKind::Events,
        RefKind::State,
    ];

    /// The directory name under the home.
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::Events => "events",
            RefKind::Dlq => "dlq",
            RefKind::State => "state",
            RefKind::Archive => "archive",
        }
    }

    /// The type of object a ref of this kind names: an event log's (and its archive's)
    /// newest node, a queue's snapshot, a job's checkpoint.
    pub fn object_type(self) -> super::id::ObjectType {
        use super::id::ObjectType;
        match self {
            RefKind::Events | RefKind::Archive => ObjectType::Log,
            RefKind::Dlq => ObjectType::Dlq,
            RefKind::State => ObjectType::Checkpoint,
        }
    }
}

impl fmt::Display for RefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`RefStore::delete_any`] deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// A ref holding this value.
    Value(ObjectId),
    /// A broken ref; what was wrong with it.
    Broken(String),
}

/// A validated ref name, `<kind>/<repo>/<job>`, or for one writer's event log
/// `events/<repo>/<job>/<writer>` (a *lane*: see [`RefName::lane`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefName {
    kind: RefKind,
    repo: Box<str>,
    job: Box<str>,
    lane: Option<Box<str>>,
}

/// The directory of a job's event-log ref that holds its writers' refs
/// (`events/<repo>/<job>/writers/<writer>/HEAD`).
pub const LANES_DIR: &str = "writers";

impl RefName {
    /// Builds a ref name, validating the repo name and job id.
    pub fn new(kind: RefKind, repo: &str, job: &str) -> Result<RefName, RefError> {
        names::validate("repo name", repo)?;
        names::validate("job id", job)?;
        Ok(RefName {
            kind,
            repo: repo.into(),
            job: job.into(),
            lane: None,
        })
    }

    /// The event-log ref of one writer of a job, `events/<repo>/<job>/<writer>`: each
    /// writer appends to its own, so its compare-and-swap only ever competes with itself.
    pub fn lane(repo: &str, job: &str, writer: &str) -> Result<RefName, RefError> {
        names::validate("writer", writer)?;
        let mut name = RefName::new(RefKind::Events, repo, job)?;
        name.lane = Some(writer.into());
        Ok(name)
    }

    /// Its kind.
    pub fn kind(&self) -> RefKind {
        self.kind
    }

    /// Its repo name.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// Its job id.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The writer whose event log this is, for a writer's ref.
    pub fn writer(&self) -> Option<&str> {
        self.lane.as_deref()
    }

    /// The job's own ref of the same kind (itself, unless a writer's).
    pub fn of_job(&self) -> RefName {
        RefName {
            lane: None,
            ..self.clone()
        }
    }

    /// The directory holding `HEAD`, `lock` and `reflog`.
    pub fn dir(&self, home: &Path) -> PathBuf {
        let job = home
            .join(self.kind.as_str())
            .join(&*self.repo)
            .join(&*self.job);
        match &self.lane {
            Some(lane) => job.join(LANES_DIR).join(&**lane),
            None => job,
        }
    }

    /// The name in a remote store's keys: `kind/repo/job`, or `events/repo/job!/writer`
    /// (a key cannot also be a prefix on some servers, so a writer's ref is not under
    /// its job's key).
    pub fn key_path(&self) -> String {
        keys::ref_path(
            self.kind.as_str(),
            &self.repo,
            &self.job,
            self.lane.as_deref(),
        )
    }

    /// The name a key path names ([`Self::key_path`]).
    pub fn from_key_path(path: &str) -> Result<RefName, RefError> {
        match keys::parse_ref_path(path) {
            Some(("events", repo, job, Some(lane))) => RefName::lane(repo, job, lane),
            Some((kind, repo, job, None)) => format!("{kind}/{repo}/{job}").parse(),
            _ => Err(RefError::BadName {
                name: path.to_owned(),
                reason: "not a ref's key".into(),
            }),
        }
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.repo, self.job)?;
        if let Some(lane) = &self.lane {
            write!(f, "/{lane}")?;
        }
        Ok(())
    }
}

impl FromStr for RefName {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| RefError::BadName {
            name: s.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = s.splitn(4, '/');
        let (Some(kind), Some(repo), Some(job)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <kind>/<repo>/<job>"));
        };
        let kind = RefKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| bad("the kind must be events, dlq, state or archive"))?;
        match parts.next() {
            None => RefName::new(kind, repo, job),
            Some(writer) if kind == RefKind::Events => RefName::lane(repo, job, writer),
            Some(_) => Err(bad("only an events ref has a fourth part (its writer)")),
        }
    }
}

/// What the ref must hold for a compare-and-swap to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever it holds (an unconditional update).
    Any,
    /// The ref must not exist yet.
    Absent,
    /// The ref must hold this id.
    Value(ObjectId),
}

/// Failures of the ref layer.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// A file-system operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// An object-layer failure.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The remote store failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A repo name or job id is not a valid path component.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A ref name that is not `<kind>/<repo>/<job>`.
    #[error("invalid ref name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why.
        reason: String,
    },
    /// The compare-and-swap found another value.
    #[error("ref {name} changed: expected {expected}, found {found}; nothing was changed")]
    Conflict {
        /// The ref.
        name: RefName,
        /// What the caller expected.
        expected: String,
        /// What the ref held.
        found: String,
    },
    /// A ref file that does not hold 64 hex digits and a newline.
    #[error("ref {name} at '{}' is corrupt: {reason}", path.display())]
    Corrupt {
        /// The ref.
        name: RefName,
        /// Its file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// [`RefStore::delete_broken`] of a ref that reads fine.
    #[error("ref {name} is not broken (it holds {value}); delete it by compare-and-swap")]
    NotBroken {
        /// The ref.
        name: RefName,
        /// What it holds ("nothing" when it does not exist).
        value: String,
    },
    /// An update that would make a ref name an object that is not stored.
    #[error("cannot point {name} at {id}: no such object in the store")]
    MissingTarget {
        /// The ref.
        name: RefName,
        /// The missing object.
        id: ObjectId,
    },
}

impl crate::hint::Hint for RefError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            RefError::Fs(e) => e.hint(),
            RefError::Lock(e) => e.hint(),
            RefError::Object(e) => e.hint(),
            RefError::Remote(e) => e.hint(),
            RefError::Conflict { .. } => {
                Some("`prodigy ref show <name>` prints its value now; retry with that as --old")
            }
            RefError::Corrupt { .. } => Some(
                "`prodigy ref delete <name>` removes a broken ref (its reflog keeps its history); `prodigy fsck` lists everything damaged (docs/troubleshooting.md)",
            ),
            RefError::NotBroken { .. } => None,
            RefError::MissingTarget { .. } => {
                Some("store the object first (`prodigy hash-object -w`)")
            }
            RefError::Name(_) | RefError::BadName { .. } => None,
        }
    }
}

/// One line of a reflog: `old new unix_ms pid host message`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReflogEntry {
    /// The value before (zero when the ref was created).
    pub old: ObjectId,
    /// The value after (zero when the ref was deleted).
    pub new: ObjectId,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The process that made the change.
    pub pid: u32,
    /// The host it ran on.
    pub host: String,
    /// Why.
    pub message: String,
}

impl ReflogEntry {
    /// The line as written to the reflog, without its newline.
    pub fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.old, self.new, self.unix_ms, self.pid, self.host, self.message
        )
    }

    /// Parses one reflog line (without its newline).
    pub fn parse(line: &str) -> Result<ReflogEntry, String> {
        let mut parts = line.splitn(6, ' ');
        let mut field = |what: &str| parts.next().ok_or_else(|| format!("missing {what}"));
        let old = field("old id")?
            .parse()
            .map_err(|_| "bad old id".to_owned())?;
        let new = field("new id")?
            .parse()
            .map_err(|_| "bad new id".to_owned())?;
        let unix_ms = field("time")?.parse().map_err(|_| "bad time".to_owned())?;
        let pid = field("pid")?.parse().map_err(|_| "bad pid".to_owned())?;
        let host = field("host")?.to_owned();
        let message = parts.next().unwrap_or("").to_owned();
        Ok(ReflogEntry {
            old,
            new,
            unix_ms,
            pid,
            host,
            message,
        })
    }
}

/// A reflog as read: its entries and the lines that could not be parsed (`(line number,
/// reason)`; a torn last line after a crash shows up here).
#[derive(Debug, Clone, Default)]
pub struct Reflog {
    /// Parsed entries, oldest first.
    pub entries: Vec<ReflogEntry>,
    /// Unparseable lines.
    pub bad_lines: Vec<(usize, String)>,
    /// True when the file does not end in a newline (an append cut short by a crash).
    pub torn_tail: bool,
}

/// The refs of a home.
#[derive(Debug, Clone)]
pub struct RefStore {
    home: PathBuf,
    objects: ObjectStore,
    lock_opts: LockOptions,
    host: String,
}

/// A held run lock of a job (see [`RefStore::job_lock`]).
#[derive(Debug)]
pub struct JobLock {
    held: Held,
}

#[derive(Debug)]
enum Held {
    /// Held while kept: dropping it releases the lock.
    File(#[allow(dead_code)] crate::lock::LockGuard),
    Lease(crate::store::s3::lease::Lease),
}

impl JobLock {
    /// Why the lock was lost, if it was: a lease another host took over after it
    /// expired. A file lock is never lost while its process lives.
    pub fn lost(&self) -> Option<String> {
        match &self.held {
            Held::File(_) => None,
            Held::Lease(lease) => lease.lost(),
        }
    }
}

/// What [`RefStore::job_lock`] found.
#[derive(Debug)]
pub enum Taken {
    /// The lock, held until dropped.
    Held(JobLock),
    /// Another holds it.
    Busy(Holder),
}

/// Who holds a job's run lock.
#[derive(Debug, Clone)]
pub enum Holder {
    /// Another process on this host (its lock file).
    Process {
        /// The lock file.
        path: PathBuf,
        /// Its process id, when it wrote it.
        pid: Option<u32>,
        /// Its host, when it wrote it.
        host: Option<String>,
    },
    /// A runner on some host, by its lease.
    Host {
        /// The lease's address.
        url: String,
        /// The host.
        host: String,
        /// Its process id there.
        pid: u32,
        /// Seconds until the lease expires unless renewed.
        remaining_secs: u64,
    },
}

impl RefStore {
    /// The refs of `home`, locking with `lock_opts`.
    pub fn new(home: &Home, lock_opts: LockOptions) -> RefStore {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect::<String>();
        RefStore {
            home: home.root().to_path_buf(),
            objects: ObjectStore::new(home),
            lock_opts,
            host: if host.is_empty() {
                "unknown".into()
            } else {
                host
            },
        }
    }

    /// A writer's hold on the home's gc lock ([`lock::write_guard`]): take it before
    /// writing the objects of a change, keep it until the ref that names them has moved.
    pub fn write_guard(&self) -> Result<lock::WriteGuard, RefError> {
        Ok(lock::write_guard(&self.home, &self.lock_opts)?)
    }

    /// This host's name, as reflog entries record it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The home directory.
    pub fn home_dir(&self) -> &Path {
        &self.home
    }

    /// Takes the run lock of the job whose ref is `name`, waiting at most `grace`: one
    /// lock type whatever the backend — a `flock` on `run.lock` beside the ref in a home
    /// (the kernel releases it when the process dies), a lease at `leases/<repo>/<job>` on
    /// a remote store (renewed while held, free once it expires).
    pub fn job_lock(&self, name: &RefName, grace: std::time::Duration) -> Result<Taken, RefError> {
        if let Some(remote) = self.objects.s3()? {
            use crate::store::s3::lease::{self, Acquired};
            let key = keys::lease(name.repo(), name.job());
            return Ok(
                match lease::acquire(remote, &key, &self.host, lease::ttl_from_env(), grace)? {
                    Acquired::Held(lease) => Taken::Held(JobLock {
                        held: Held::Lease(lease),
                    }),
                    Acquired::Busy(held) => Taken::Busy(Holder::Host {
                        url: remote.address(&key),
                        host: held.host.clone(),
                        pid: held.pid,
                        remaining_secs: held.remaining_ms().div_ceil(1000),
                    }),
                },
            );
        }
        let dir = name.dir(&self.home);
        fsutil::ensure_dir(&self.home, &dir)?;
        let path = dir.join("run.lock");
        let opts = crate::lock::LockOptions {
            timeout: grace,
            on_wait: None,
        };
        match lock::lock(&path, LockMode::Exclusive, &opts) {
            Ok(guard) => {
                // Who runs the job, for `prodigy jobs` to tell.
                guard.record(&format!("{} {}\n", std::process::id(), self.host));
                Ok(Taken::Held(JobLock {
                    held: Held::File(guard),
                }))
            }
            Err(crate::lock::LockError::Timeout { .. }) => Ok(Taken::Busy(self.process(path))),
            Err(e) => Err(e.into()),
        }
    }

    /// The runner of the job `name` now, if any, without taking its lock (nor making a
    /// lock file): its process (a flock held) or its host (a lease not expired).
    pub fn job_holder(&self, name: &RefName) -> Result<Option<Holder>, RefError> {
        if let Some(remote) = self.objects.s3()? {
            let key = keys::lease(name.repo(), name.job());
            return Ok(match remote.get(&key)? {
                Some((bytes, _)) => {
                    match serde_json::from_slice::<crate::store::s3::lease::LeaseRecord>(&bytes) {
                        Ok(held) if held.remaining_ms() > 0 => Some(Holder::Host {
                            url: remote.address(&key),
                            remaining_secs: held.remaining_ms().div_ceil(1000),
                            host: held.host,
                            pid: held.pid,
                        }),
                        _ => None,
                    }
                }
                None => None,
            });
        }
        let path = name.dir(&self.home).join("run.lock");
        Ok(lock::holder(&path)?.map(|_| self.process(path)))
    }

    /// The process holding the run lock at `path`, as it recorded itself.
    fn process(&self, path: PathBuf) -> Holder {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut words = text.split_whitespace();
        let pid = words.next().and_then(|p| p.parse().ok());
        let host = words.next().map(str::to_owned);
        Holder::Process { path, pid, host }
    }

    /// The object store the refs point into.
    pub fn objects(&self) -> &ObjectStore {
        &self.objects
    }

    /// The `HEAD` file of a ref.
    pub fn head_path(&self, name: &RefName) -> PathBuf {
        name.dir(&self.home).join("HEAD")
    }

    /// The `reflog` file of a ref.
    pub fn reflog_path(&self, name: &RefName) -> PathBuf {
        name.dir(&self.home).join("reflog")
    }

    /// Reads a ref without locking; `None` when it does not exist.
    pub fn read(&self, name: &RefName) -> Result<Option<ObjectId>, RefError> {
        if let Some(remote) = self.objects.s3()? {
            return Ok(self.read_remote(remote, name)?.0);
        }
        let path = self.head_path(name);
        let bytes = match fsutil::read_nofollow(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(None),
            Err(e) if fsutil::is_symlink_refusal(&e) => {
                return Err(RefError::Corrupt {
                    name: name.clone(),
                    path,
                    reason: "it is a symlink, which the store never follows".into(),
                });
            }
            Err(e) => return Err(FsError::new("read ref", path, e).into()),
        };
        parse_ref_file(&bytes)
            .map(Some)
            .map_err(|reason| RefError::Corrupt {
                name: name.clone(),
                path,
                reason,
            })
    }

    /// Compare-and-swap: sets `name` to `new` if it holds what `expect` says. Returns the
    /// old value. `new` must name a stored object.
    pub fn update(
        &self,
        name: &RefName,
        new: ObjectId,
        expect: Expect,
        message: &str,
    ) -> Result<Option<ObjectId>, RefError> {
        self.transact(name, message, |old| {
            check_expect(name, expect, old)?;
            Ok(Some(new))
        })
        .map(|(old, _)| old)
    }

    /// Deletes a ref if it holds what `expect` says; returns the old value. The reflog
    /// keeps the deletion (new value zero), so history survives the ref.
    pub fn delete(
        &self,
        name: &RefName,
        expect: Expect,
        message: &str,
    ) -> Result<Option<ObjectId>, RefError> {
        self.transact(name, message, |old| {
            check_expect(name, expect, old)?;
            Ok(None)
        })
        .map(|(old, _)| old)
    }

    /// Deletes a ref whatever it holds, as `git update-ref -d` does: a value by
    /// compare-and-swap ([`Self::delete`] with [`Expect::Any`]), a broken ref by
    /// [`Self::delete_broken`]. `None` when there was no ref.
    pub fn delete_any(&self, name: &RefName, message: &str) -> Result<Option<Deleted>, RefError> {
        match self.read(name) {
            Ok(_) => Ok(self.delete(name, Expect::Any, message)?.map(Deleted::Value)),
            Err(_) => Ok(Some(Deleted::Broken(self.delete_broken(name, message)?))),
        }
    }

    /// Deletes a ref that cannot be read — corrupt, a symlink, a `HEAD` that is not a
    /// file — as `git update-ref -d` deletes a broken ref: compare-and-swap cannot, having
    /// no value to compare, and no reader can use the ref. Under the ref's lock, like every
    /// change; its reflog gets an entry from nothing to nothing saying why (fsck then warns
    /// of the gap after the last good value, which the reflog keeps). Returns what was
    /// wrong. A ref that reads fine is refused ([`RefError::NotBroken`]).
    pub fn delete_broken(&self, name: &RefName, message: &str) -> Result<String, RefError> {
        let not_broken = |value: Option<ObjectId>| RefError::NotBroken {
            name: name.clone(),
            value: value.map_or_else(|| "nothing".to_owned(), |id| id.to_string()),
        };
        let note = |reason: &str| format!("{message} (broken: {reason})");
        if let Some(remote) = self.objects.s3()? {
            remote.check_conditional()?;
            let key = keys::ref_key(&name.key_path());
            // One read gives the body judged broken and the version the put replaces, so
            // a good value written meanwhile is never wiped as broken.
            let Some((body, version)) = remote.get(&key)? else {
                return Err(not_broken(None));
            };
            if body.is_empty() {
                return Err(not_broken(None));
            }
            let reason = match parse_ref_file(&body) {
                Ok(id) => return Err(not_broken(Some(id))),
                Err(reason) => reason,
            };
            return match remote.put(&key, Vec::new(), Put::Replace(version))? {
                Outcome::Written(_) => {
                    self.log_remote(remote, name, None, None, &note(&reason))?;
                    Ok(reason)
                }
                Outcome::Conflict => Err(RefError::Conflict {
                    name: name.clone(),
                    expected: "the broken value".into(),
                    found: "another, written meanwhile".into(),
                }),
            };
        }
        let dir = name.dir(&self.home);
        if !dir.is_dir() {
            return Err(not_broken(None));
        }
        let _guard = lock::lock(&dir.join("lock"), LockMode::Exclusive, &self.lock_opts)?;
        let head = dir.join("HEAD");
        let is_dir = fs::symlink_metadata(&head).is_ok_and(|m| m.is_dir());
        // Broken: what it holds is not a value, or it is a directory. Any other error
        // reading it (EIO, EMFILE…) may pass and is no reason to lose the ref.
        let reason = match self.read(name) {
            Err(RefError::Corrupt { reason, .. }) => reason,
            Err(RefError::Fs(e)) if is_dir => e.to_string(),
            Ok(value) => return Err(not_broken(value)),
            Err(e) => return Err(e),
        };
        if is_dir {
            // Only an empty one: nothing the store wrote is ever inside a HEAD.
            fs::remove_dir(&head).at("remove ref", &head)?;
        } else {
            fs::remove_file(&head).at("remove ref", &head)?;
        }
        fsutil::sync_dir(&dir)?;
        self.append_reflog(&dir, None, None, &note(&reason))?;
        Ok(reason)
    }

    /// [`Self::transact`] for callers with their own error type: `decide` returns the new
    /// value and a result of its own. When it fails, the ref stays as it is and its error
    /// is returned as it is (not squeezed into a [`RefError`]). Returns the ref's new value
    /// and `decide`'s result.
    pub fn transact_with<T, E, F>(
        &self,
        name: &RefName,
        message: &str,
        decide: F,
    ) -> Result<(Option<ObjectId>, T), E>
    where
        E: From<RefError>,
        F: FnMut(Option<ObjectId>) -> Result<(Option<ObjectId>, T), E>,
    {
        let mut decide = decide;
        let mut outcome = None;
        let (_, new) = self.transact(name, message, |old| match decide(old) {
            Ok((new, value)) => {
                outcome = Some(Ok(value));
                Ok(new)
            }
            Err(e) => {
                outcome = Some(Err(e));
                Ok(old)
            }
        })?;
        // `transact` succeeds only after calling `decide`.
        let value = outcome.expect("transact called decide")?;
        Ok((new, value))
    }

    /// The general update under the ref's lock: `decide` sees the current value (read under
    /// the lock) and returns the new one (`None` deletes). Appenders use this to build their
    /// next node on top of whatever is current without a retry loop. Returns
    /// `(old, new)`. On a remote store there is no lock: the ref moves by a conditional
    /// put, and when another writer moved it first, `decide` is called again with the new
    /// value (so it may be called more than once).
    pub fn transact<F>(
        &self,
        name: &RefName,
        message: &str,
        mut decide: F,
    ) -> Result<(Option<ObjectId>, Option<ObjectId>), RefError>
    where
        F: FnMut(Option<ObjectId>) -> Result<Option<ObjectId>, RefError>,
    {
        if let Some(remote) = self.objects.s3()? {
            return self.transact_remote(remote, name, message, &mut decide);
        }
        let dir = name.dir(&self.home);
        fsutil::ensure_dir(&self.home, &dir)?;
        let _guard = lock::lock(&dir.join("lock"), LockMode::Exclusive, &self.lock_opts)?;
        let old = self.read(name)?;
        let new = self.decide_checked(name, old, &mut decide)?;
        if old == new {
            return Ok((old, new));
        }
        let head = dir.join("HEAD");
        match new {
            Some(id) => fsutil::write_atomic(&head, &dir, format!("{id}\n").as_bytes(), 0o644)?,
            None => {
                fs::remove_file(&head).at("remove ref", &head)?;
                fsutil::sync_dir(&dir)?;
            }
        }
        self.append_reflog(&dir, old, new, message)?;
        Ok((old, new))
    }

    /// The new value `decide` picks from `old`, which must name a stored object.
    fn decide_checked(
        &self,
        name: &RefName,
        old: Option<ObjectId>,
        decide: &mut dyn FnMut(Option<ObjectId>) -> Result<Option<ObjectId>, RefError>,
    ) -> Result<Option<ObjectId>, RefError> {
        let new = decide(old)?;
        if let Some(id) = new
            && !self.objects.contains(&id)?
        {
            return Err(RefError::MissingTarget {
                name: name.clone(),
                id,
            });
        }
        Ok(new)
    }

    fn append_reflog(
        &self,
        dir: &Path,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        message: &str,
    ) -> Result<(), RefError> {
        let entry = self.reflog_entry(old, new, message);
        let path = dir.join("reflog");
        let mut file = fsutil::open_append(&path).at("open reflog", &path)?;
        let line = format!("{}\n", entry.to_line());
        file.write_all(line.as_bytes())
            .at("append to reflog", &path)?;
        fsutil::sync_file(&file, true, "fsync reflog", &path)?;
        Ok(())
    }

    fn reflog_entry(
        &self,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        message: &str,
    ) -> ReflogEntry {
        ReflogEntry {
            old: old.unwrap_or(ObjectId::ZERO),
            new: new.unwrap_or(ObjectId::ZERO),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            pid: std::process::id(),
            host: self.host.clone(),
            message: message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        }
    }

    /// A remote ref's value and version (`None` for both when the key does not exist; a
    /// deleted ref is an empty key, its value `None` with a version).
    fn read_remote(
        &self,
        remote: &Remote,
        name: &RefName,
    ) -> Result<(Option<ObjectId>, Option<Version>), RefError> {
        let key = keys::ref_key(&name.key_path());
        let Some((bytes, version)) = remote.get(&key)? else {
            return Ok((None, None));
        };
        if bytes.is_empty() {
            return Ok((None, Some(version)));
        }
        let id = parse_ref_file(&bytes).map_err(|reason| RefError::Corrupt {
            name: name.clone(),
            path: PathBuf::from(remote.address(&key)),
            reason,
        })?;
        Ok((Some(id), Some(version)))
    }

    /// [`Self::transact`] on a remote store: read the ref and its version, decide, check
    /// the target is stored, put conditionally; when another writer moved the ref first,
    /// back off (with jitter, up to [`REMOTE_ATTEMPTS`] times) and decide again on its
    /// value. After the put, one reflog entry is created (a crash in between loses only
    /// that entry, as a crash between the local rename and the reflog append does).
    fn transact_remote(
        &self,
        remote: &Remote,
        name: &RefName,
        message: &str,
        decide: &mut dyn FnMut(Option<ObjectId>) -> Result<Option<ObjectId>, RefError>,
    ) -> Result<(Option<ObjectId>, Option<ObjectId>), RefError> {
        remote.check_conditional()?;
        let key = keys::ref_key(&name.key_path());
        let mut pause = Duration::from_millis(5);
        let mut tried: Option<(Option<ObjectId>, Option<ObjectId>)> = None;
        for attempt in 1..=REMOTE_ATTEMPTS {
            let (old, version) = self.read_remote(remote, name)?;
            // A put reported as failed may have landed (a retried request): finding our
            // own value means it did, and deciding again would apply the change twice.
            if let Some((before, after)) = tried
                && old == after
                && before != after
            {
                self.log_remote(remote, name, before, after, message)?;
                return Ok((before, after));
            }
            let new = self.decide_checked(name, old, decide)?;
            if old == new {
                return Ok((old, new));
            }
            let body = new
                .map(|id| format!("{id}\n").into_bytes())
                .unwrap_or_default();
            let mode = match version {
                None => Put::Create,
                Some(v) => Put::Replace(v),
            };
            tried = Some((old, new));
            match remote.put(&key, body, mode)? {
                Outcome::Written(_) => {
                    self.log_remote(remote, name, old, new, message)?;
                    return Ok((old, new));
                }
                Outcome::Conflict => {
                    tracing::debug!(%name, attempt, "ref moved under the conditional put, retrying");
                    if attempt == REMOTE_ATTEMPTS {
                        break;
                    }
                    let jitter = u64::from_str_radix(&crate::store::s3::rand_suffix()[..4], 16)
                        .unwrap_or(0)
                        % (pause.as_millis() as u64 + 1);
                    std::thread::sleep(pause + Duration::from_millis(jitter));
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        Err(RemoteError::Contended {
            url: remote.address(&key),
            attempts: REMOTE_ATTEMPTS,
        }
        .into())
    }

    fn log_remote(
        &self,
        remote: &Remote,
        name: &RefName,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        message: &str,
    ) -> Result<(), RefError> {
        let entry = self.reflog_entry(old, new, message);
        let key = keys::log_entry(&name.key_path(), entry.unix_ms, &entry.old, &entry.new);
        remote.put(
            &key,
            format!("{}\n", entry.to_line()).into_bytes(),
            Put::Create,
        )?;
        Ok(())
    }

    /// A remote reflog: every entry key under the ref's log, read many at once, ordered
    /// by time (and by the chain old → new for entries of one millisecond).
    fn log_remote_read(
        &self,
        remote: &Remote,
        name: &RefName,
    ) -> Result<(Reflog, Vec<String>), RefError> {
        let keys: Vec<String> = remote
            .list(&format!("{}/", keys::log_dir(&name.key_path())))?
            .into_iter()
            .map(|l| l.key)
            .collect();
        let bodies = remote.get_many(&keys)?;
        let mut log = Reflog::default();
        let mut kept = Vec::new();
        for (n, (key, body)) in keys.into_iter().zip(bodies).enumerate() {
            let Some(body) = body else { continue };
            let text = String::from_utf8_lossy(&body);
            match ReflogEntry::parse(text.trim_end_matches('\n')) {
                Ok(entry) => {
                    log.entries.push(entry);
                    kept.push(key);
                }
                Err(reason) => log.bad_lines.push((n + 1, format!("{key}: {reason}"))),
            }
        }
        Ok((log, kept))
    }

    /// Drops the entries older than `cutoff_ms` (Unix milliseconds) from the reflog in the
    /// ref directory `dir`, under the ref's lock, and returns what stays and how many went
    /// (as `git reflog expire`: the ref's own value is a root of its own, so every old
    /// entry may go). A reflog with unparseable lines is left as it is (`fsck` reports
    /// them): rewriting it would drop them. `dry_run` only counts. The reflog is replaced
    /// atomically.
    pub fn expire_reflog(
        &self,
        dir: &Path,
        cutoff_ms: u64,
        dry_run: bool,
    ) -> Result<(Reflog, usize), RefError> {
        // A dry run writes nothing and reads the reflog as any reader does (a tail being
        // appended reads as torn), so it takes no lock and works on a read-only home.
        let _guard = match dry_run {
            true => None,
            false => Some(lock::lock(
                &dir.join("lock"),
                LockMode::Exclusive,
                &self.lock_opts,
            )?),
        };
        let path = dir.join("reflog");
        let mut log = read_reflog(&path)?;
        if !log.bad_lines.is_empty() || log.torn_tail {
            return Ok((log, 0));
        }
        let before = log.entries.len();
        log.entries.retain(|e| e.unix_ms >= cutoff_ms);
        let expired = before - log.entries.len();
        if expired > 0 && !dry_run {
            let text: String = log
                .entries
                .iter()
                .map(|e| format!("{}\n", e.to_line()))
                .collect();
            fsutil::write_atomic(&path, dir, text.as_bytes(), 0o644)?;
        }
        Ok((log, expired))
    }

    /// [`Self::expire_reflog`] for a ref of a bucket: the entry keys older than
    /// `cutoff_ms` are deleted.
    pub(super) fn expire_bucket_reflog(
        &self,
        remote: &Remote,
        name: &RefName,
        cutoff_ms: u64,
        dry_run: bool,
    ) -> Result<(Reflog, usize), RefError> {
        let (mut log, keys) = self.log_remote_read(remote, name)?;
        let mut doomed = Vec::new();
        let mut kept = Vec::new();
        for (entry, key) in log.entries.drain(..).zip(keys) {
            if entry.unix_ms < cutoff_ms {
                doomed.push(key);
            } else {
                kept.push(entry);
            }
        }
        log.entries = kept;
        if !dry_run {
            remote.delete_many(&doomed)?;
        }
        Ok((log, doomed.len()))
    }

    /// Every ref name with a reflog in a bucket (deleted refs too).
    pub(super) fn bucket_logged_names(&self, remote: &Remote) -> Result<Vec<RefName>, RefError> {
        let mut names: Vec<RefName> = remote
            .list(keys::LOGS)?
            .into_iter()
            .filter_map(|l| RefName::from_key_path(keys::parse_log_entry(&l.key)?).ok())
            .collect();
        names.dedup();
        Ok(names)
    }

    /// Reads a ref's reflog, oldest first. A missing reflog is empty.
    pub fn log(&self, name: &RefName) -> Result<Reflog, RefError> {
        if let Some(remote) = self.objects.s3()? {
            return Ok(self.log_remote_read(remote, name)?.0);
        }
        read_reflog(&self.reflog_path(name))
    }

    /// Every ref whose name starts with `prefix` (whole components: `events`,
    /// `events/api`, `events/api/mr-1` — the job's ref and its writers' —,
    /// `events/api/mr-1/<writer>`), sorted by kind, repo, job and writer (the job's own
    /// first), with its value. Directories that
    /// are not valid refs are skipped here; `fsck` reports them. One ref that cannot be
    /// read (corrupt, a `HEAD` that is a directory) fails the listing: see
    /// [`Self::list_each`] for a listing that goes on.
    pub fn list(&self, prefix: Option<&str>) -> Result<Vec<(RefName, ObjectId)>, RefError> {
        self.list_each(prefix)?
            .into_iter()
            .map(|(name, value)| value.map(|id| (name, id)))
            .collect()
    }

    /// [`Self::list`] with each ref's own outcome: a ref that cannot be read is listed
    /// with its error, and the others with their values, so that a listing for people
    /// (`jobs`) can name the bad one and show the rest, as git ignores a broken ref with
    /// a warning.
    #[allow(clippy::type_complexity)]
    pub fn list_each(
        &self,
        prefix: Option<&str>,
    ) -> Result<Vec<(RefName, Result<ObjectId, RefError>)>, RefError> {
        let wanted: Vec<&str> = prefix
            .map(|p| {
                p.trim_end_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let matches = |level: usize, name: &str| wanted.get(level).is_none_or(|w| *w == name);
        let mut out = Vec::new();
        if let Some(remote) = self.objects.s3()? {
            let mut names = Vec::new();
            // As narrow a listing as the prefix allows (a listing is of a directory): one
            // job's is its own key, read as it is, and its writers' directory.
            let listing = match wanted.as_slice() {
                [kind, repo, job, ..] => {
                    if wanted.len() == 3
                        && let Ok(name) = format!("{kind}/{repo}/{job}").parse::<RefName>()
                    {
                        names.push(name);
                    }
                    keys::ref_key(&keys::ref_path(kind, repo, job, Some("")))
                }
                [kind, repo] => keys::ref_key(&format!("{kind}/{repo}/")),
                _ => keys::refs_of(wanted.first().copied()),
            };
            let listed = match wanted.first() {
                Some(kind) if wanted.len() >= 3 && *kind != "events" => Vec::new(),
                _ => remote.list(&listing)?,
            };
            for listed in listed {
                let Some(rest) = keys::parse_ref(&listed.key) else {
                    continue;
                };
                if let Ok(name) = RefName::from_key_path(rest)
                    && matches(0, name.kind.as_str())
                    && matches(1, name.repo())
                    && matches(2, name.job())
                    && match &name.lane {
                        Some(lane) => matches(3, lane),
                        None => wanted.len() < 4,
                    }
                {
                    names.push(name);
                }
            }
            let keys: Vec<String> = names.iter().map(|n| keys::ref_key(&n.key_path())).collect();
            for ((name, key), body) in names.into_iter().zip(&keys).zip(remote.get_many(&keys)?) {
                let Some(body) = body.filter(|b| !b.is_empty()) else {
                    continue;
                };
                let id = parse_ref_file(&body).map_err(|reason| RefError::Corrupt {
                    name: name.clone(),
                    path: PathBuf::from(remote.address(key)),
                    reason,
                });
                out.push((name, id));
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(out);
        }
        for kind in RefKind::ALL {
            if !matches(0, kind.as_str()) {
                continue;
            }
            for repo in list_dir_names(&self.home.join(kind.as_str()))? {
                if !matches(1, &repo) {
                    continue;
                }
                for job in list_dir_names(&self.home.join(kind.as_str()).join(&repo))? {
                    if !matches(2, &job) {
                        continue;
                    }
                    let Ok(name) = RefName::new(kind, &repo, &job) else {
                        continue;
                    };
                    if wanted.len() < 4
                        && let Some(value) = self.read(&name).transpose()
                    {
                        out.push((name.clone(), value));
                    }
                    if kind != RefKind::Events {
                        continue;
                    }
                    for lane in list_dir_names(&name.dir(&self.home).join(LANES_DIR))? {
                        if !matches(3, &lane) {
                            continue;
                        }
                        let Ok(name) = RefName::lane(&repo, &job, &lane) else {
                            continue;
                        };
                        if let Some(value) = self.read(&name).transpose() {
                            out.push((name, value));
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// How many times a remote ref update is tried before it gives up as contended.
pub const REMOTE_ATTEMPTS: u32 = 64;

fn check_expect(name: &RefName, expect: Expect, old: Option<ObjectId>) -> Result<(), RefError> {
    let show = |v: Option<ObjectId>| v.map_or_else(|| "no ref".to_owned(), |id| id.to_string());
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => old.is_none(),
        Expect::Value(want) => old == Some(want),
    };
    if ok {
        return Ok(());
    }
    Err(RefError::Conflict {
        name: name.clone(),
        expected: match expect {
            Expect::Value(want) => want.to_string(),
            _ => "no ref".to_owned(),
        },
        found: show(old),
    })
}

/// Parses the content of a `HEAD` file: exactly 64 lower-case hex digits and a newline.
pub fn parse_ref_file(bytes: &[u8]) -> Result<ObjectId, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not text".to_owned())?;
    let Some(hex) = text.strip_suffix('\n') else {
        return Err(format!(
            "expected 64 hex digits and a newline, found {} bytes",
            bytes.len()
        ));
    };
    hex.parse()
        .map_err(|_| format!("expected 64 hex digits, found {:?}", truncate(hex, 80)))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Reads a reflog file (missing means empty).
pub fn read_reflog(path: &Path) -> Result<Reflog, RefError> {
    let bytes = match fsutil::read_nofollow(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Reflog::default()),
        Err(e) => return Err(FsError::new("read reflog", path, e).into()),
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut log = Reflog {
        torn_tail: !bytes.is_empty() && !bytes.ends_with(b"\n"),
        ..Reflog::default()
    };
    for (n, line) in text.lines().enumerate() {
        match ReflogEntry::parse(line) {
            Ok(entry) => log.entries.push(entry),
            Err(reason) => log.bad_lines.push((n + 1, reason)),
        }
    }
    Ok(log)
}

/// Names of the real subdirectories of `dir`, sorted; symlinks and files are skipped.
fn list_dir_names(dir: &Path) -> Result<Vec<String>, RefError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("list", dir, e).into()),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.at("list", dir)?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::object::ObjectType;

    fn stores() -> (tempfile::TempDir, RefStore) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        (dir, RefStore::new(&home, LockOptions::default()))
    }

    #[test]
    fn names_parse_and_refuse() {
        let name: RefName = "events/api/mr-1".parse().unwrap();
        assert_eq!(name.to_string(), "events/api/mr-1");
        for bad in [
            "events/api",
            "nope/api/x",
            "events/../x",
            "events/a/b/c/d",
            "dlq/a/b/c",
            "events/a/b/../c",
            "events/api/x.lock",
            "",
        ] {
            assert!(bad.parse::<RefName>().is_err(), "{bad}");
        }
        // A writer's ref of a job's event log: under the job's directory, another key.
        let lane: RefName = "events/api/mr-1/w-1".parse().unwrap();
        assert_eq!(lane.to_string(), "events/api/mr-1/w-1");
        assert_eq!(lane.writer(), Some("w-1"));
        assert_eq!(lane.of_job(), name);
        assert_eq!(lane.key_path(), "events/api/mr-1!/w-1");
        assert_eq!(RefName::from_key_path(&lane.key_path()).unwrap(), lane);
        assert!(
            lane.dir(Path::new("/h"))
                .ends_with("events/api/mr-1/writers/w-1")
        );
    }

    #[test]
    fn compare_and_swap() {
        let (_dir, refs) = stores();
        let name: RefName = "state/api/j1".parse().unwrap();
        let a = refs.objects().write(ObjectType::Blob, b"a").unwrap();
        let b = refs.objects().write(ObjectType::Blob, b"b").unwrap();
        assert_eq!(
            refs.update(&name, a, Expect::Absent, "create").unwrap(),
            None
        );
        let err = refs.update(&name, b, Expect::Absent, "again").unwrap_err();
        assert!(matches!(err, RefError::Conflict { .. }), "{err}");
        let err = refs
            .update(&name, b, Expect::Value(b), "stale")
            .unwrap_err();
        assert!(matches!(err, RefError::Conflict { .. }));
        assert_eq!(refs.read(&name).unwrap(), Some(a));
        assert_eq!(
            refs.update(&name, b, Expect::Value(a), "move").unwrap(),
            Some(a)
        );
        let missing = ObjectId::hash(ObjectType::Blob, b"never written");
        assert!(matches!(
            refs.update(&name, missing, Expect::Any, "x"),
            Err(RefError::MissingTarget { .. })
        ));
        refs.delete(&name, Expect::Value(b), "gone").unwrap();
        assert_eq!(refs.read(&name).unwrap(), None);
        let log = refs.log(&name).unwrap();
        let pairs: Vec<_> = log.entries.iter().map(|e| (e.old, e.new)).collect();
        assert_eq!(
            pairs,
            vec![(ObjectId::ZERO, a), (a, b), (b, ObjectId::ZERO)]
        );
        assert_eq!(log.entries[1].message, "move");
    }

    #[test]
    fn list_filters_by_components() {
        let (_dir, refs) = stores();
        let a = refs.objects().write(ObjectType::Blob, b"a").unwrap();
        for name in [
            "events/api/j1",
            "events/api/j2",
            "events/apix/j1",
            "dlq/api/j1",
        ] {
            refs.update(&name.parse().unwrap(), a, Expect::Any, "")
                .unwrap();
        }
        let names = |p: Option<&str>| -> Vec<String> {
            refs.list(p)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n.to_string())
                .collect()
        };
        assert_eq!(names(None).len(), 4);
        assert_eq!(
            names(Some("events/api")),
            vec!["events/api/j1", "events/api/j2"]
        );
        assert_eq!(names(Some("dlq")), vec!["dlq/api/j1"]);
        assert!(names(Some("state")).is_empty());
    }

    #[test]
    fn garbage_and_symlinked_refs_are_refused() {
        let (dir, refs) = stores();
        let name: RefName = "events/api/j1".parse().unwrap();
        let refdir = name.dir(dir.path());
        fs::create_dir_all(&refdir).unwrap();
        fs::write(refdir.join("HEAD"), b"not a ref\n").unwrap();
        assert!(matches!(refs.read(&name), Err(RefError::Corrupt { .. })));
        fs::remove_file(refdir.join("HEAD")).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), refdir.join("HEAD")).unwrap();
        let err = refs.read(&name).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
    }
}
