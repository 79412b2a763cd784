//! The one lock helper: OS advisory file locks (`std::fs::File::lock`), released by the
//! kernel when the holder dies, taken with a deadline.
//!
//! An uncontended lock costs one `try_lock`. A contended one blocks in the kernel (no
//! polling with sleeps) on a helper thread, so that the caller can give up at its deadline;
//! if the caller has given up, the helper releases the lock as soon as it gets it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use crate::fsutil::{FsError, IoContext};

/// How long a lock is waited for when nothing else is said.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that overrides the lock timeout (`2s`, `500ms`, `1m`).
pub const LOCK_TIMEOUT_ENV: &str = "PRODIGY_LOCK_TIMEOUT";

/// Called once, before blocking, when a lock is held by someone else.
pub type WaitHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// How to wait for a lock.
#[derive(Clone)]
pub struct LockOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Told when the lock is busy, so a front end can say "waiting for lock on …".
    pub on_wait: Option<WaitHook>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            timeout: DEFAULT_LOCK_TIMEOUT,
            on_wait: None,
        }
    }
}

impl std::fmt::Debug for LockOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockOptions")
            .field("timeout", &self.timeout)
            .field("on_wait", &self.on_wait.is_some())
            .finish()
    }
}

impl LockOptions {
    /// `PRODIGY_LOCK_TIMEOUT`: `None` when unset, else the duration it gives or an error
    /// naming it. The front end refuses an error before any command runs.
    pub fn env_timeout() -> Result<Option<Duration>, String> {
        crate::env::duration(LOCK_TIMEOUT_ENV)
    }

    /// The defaults, with the timeout from `PRODIGY_LOCK_TIMEOUT` (see
    /// [`Self::env_timeout`]; one that does not parse gives the default).
    pub fn from_env() -> LockOptions {
        LockOptions {
            timeout: Self::env_timeout()
                .ok()
                .flatten()
                .unwrap_or(DEFAULT_LOCK_TIMEOUT),
            on_wait: None,
        }
    }
}

/// Exclusive (writers of one ref) or shared (many holders at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// One holder.
    Exclusive,
    /// Any number of shared holders, no exclusive one.
    Shared,
}

/// Failure to take a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened or locked.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Someone else held the lock past the deadline.
    #[error("timed out after {} waiting for lock on '{}' (another prodigy process holds it)", humantime::format_duration(std::time::Duration::from_millis(.waited.as_millis() as u64)), .path.display())]
    Timeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited: the time limit.
        waited: Duration,
    },
}

impl crate::hint::Hint for LockError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            LockError::Fs(e) => e.hint(),
            LockError::Timeout { .. } => Some(crate::hint::LOCK_HELD),
        }
    }
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

impl LockGuard {
    /// Writes `text` into the lock file (replacing what was there): who holds it, for
    /// others to read. Not durable, and not needed for the lock itself.
    pub fn record(&self, text: &str) {
        use std::os::unix::fs::FileExt;
        let _ = self._file.set_len(0);
        let _ = self._file.write_at(text.as_bytes(), 0);
    }
}

/// Whether someone holds the lock at `path` exclusively now (without taking it, nor making
/// the file): `Some` with what the holder wrote into it ([`LockGuard::record`]).
pub fn holder(path: &Path) -> Result<Option<String>, LockError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FsError::new("open lock file", path, e).into()),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => {
            Ok(Some(std::fs::read_to_string(path).unwrap_or_default()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(FsError::new("lock", path, e).into()),
    }
}

fn open_lock_file(path: &Path) -> Result<File, LockError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .at("open lock file", path)?)
}

fn attempt(file: &File, path: &Path, mode: LockMode) -> Result<bool, LockError> {
    let attempt = match mode {
        LockMode::Exclusive => file.try_lock(),
        LockMode::Shared => file.try_lock_shared(),
    };
    match attempt {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(FsError::new("lock", path, e).into()),
    }
}

/// Takes the lock on `path` if it is free, without waiting; `None` when someone holds it.
pub fn try_lock(path: &Path, mode: LockMode) -> Result<Option<LockGuard>, LockError> {
    let file = open_lock_file(path)?;
    Ok(attempt(&file, path, mode)?.then_some(LockGuard { _file: file }))
}

/// Takes the lock on `path` (creating the file, never through a symlink), waiting at most
/// `opts.timeout`.
pub fn lock(path: &Path, mode: LockMode, opts: &LockOptions) -> Result<LockGuard, LockError> {
    let file = open_lock_file(path)?;
    if attempt(&file, path, mode)? {
        return Ok(LockGuard { _file: file });
    }
    if let Some(hook) = &opts.on_wait {
        hook(path);
    }
    tracing::debug!(path = %path.display(), ?mode, "lock busy, waiting");
    let waiting = std::time::Instant::now();
    let helper_file = file.try_clone().at("duplicate lock file handle", path)?;
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let result = match mode {
            LockMode::Exclusive => helper_file.lock(),
            LockMode::Shared => helper_file.lock_shared(),
        };
        // The lock belongs to the open file description, shared with the caller's handle.
        // If the caller has already given up, release it at once.
        if tx.send(result).is_err() {
            let _ = helper_file.unlock();
        }
    });
    match rx.recv_timeout(opts.timeout) {
        Ok(Ok(())) => {
            tracing::debug!(path = %path.display(), waited_ms = waiting.elapsed().as_millis() as u64, "lock taken after waiting");
            Ok(LockGuard { _file: file })
        }
        Ok(Err(e)) => Err(FsError::new("lock", path, e).into()),
        Err(_) => Err(LockError::Timeout {
            path: path.to_path_buf(),
            // The limit given, not the clock read after it (a busy machine adds a few ms).
            waited: opts.timeout,
        }),
    }
}

/// A writer's hold on the home's gc lock (DESIGN.md §10): taken shared from before the
/// first object a change writes until the ref that names them has moved, so that `gc`
/// (which takes it exclusively) never sees an object written but not yet referenced.
///
/// Writers first pass through `gc.intent` (shared, released at once): `gc` holds it
/// exclusively while it waits, so a stream of writers cannot starve it. Within a thread
/// the guard is re-entrant (a nested change reuses the held one), since taking it anew
/// while gc waits would deadlock the thread against itself. Dropping the last clone
/// releases the lock; a guard may be moved to another thread (the event logger's stages).
#[derive(Debug, Clone)]
pub struct WriteGuard {
    _held: Arc<LockGuard>,
}

thread_local! {
    static HELD: std::cell::RefCell<std::collections::HashMap<PathBuf, std::sync::Weak<LockGuard>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The file gc and writers lock, in `home`.
pub fn gc_lock_path(home: &Path) -> PathBuf {
    home.join("gc.lock")
}

/// The turnstile gc takes while it waits, in `home`.
pub fn gc_intent_path(home: &Path) -> PathBuf {
    home.join("gc.intent")
}

/// How long a writer waits for a gc to finish, at least: gc holds its lock for its whole
/// run, which on a big home takes much longer than any ref lock is held.
pub const GC_WAIT: Duration = Duration::from_secs(600);

/// Takes (or re-enters) the home's gc lock as a writer.
pub fn write_guard(home: &Path, opts: &LockOptions) -> Result<WriteGuard, LockError> {
    let key = home.to_path_buf();
    if let Some(held) = HELD.with(|h| h.borrow().get(&key).and_then(|w| w.upgrade())) {
        return Ok(WriteGuard { _held: held });
    }
    let opts = &LockOptions {
        timeout: opts.timeout.max(GC_WAIT),
        on_wait: opts.on_wait.clone(),
    };
    // The home may not exist yet before its first write.
    let _ = std::fs::create_dir_all(home);
    let turnstile = lock(&gc_intent_path(home), LockMode::Shared, opts)?;
    let held = Arc::new(lock(&gc_lock_path(home), LockMode::Shared, opts)?);
    drop(turnstile);
    HELD.with(|h| h.borrow_mut().insert(key, Arc::downgrade(&held)));
    Ok(WriteGuard { _held: held })
}

/// Takes the home's gc lock exclusively (gc's side): the turnstile first, then the lock,
/// which every writer's change in progress delays.
pub fn gc_guard(home: &Path, opts: &LockOptions) -> Result<(LockGuard, LockGuard), LockError> {
    let _ = std::fs::create_dir_all(home);
    let turnstile = lock(&gc_intent_path(home), LockMode::Exclusive, opts)?;
    let held = lock(&gc_lock_path(home), LockMode::Exclusive, opts)?;
    Ok((turnstile, held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn times_out_and_tells_the_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = lock(&path, LockMode::Exclusive, &LockOptions::default()).unwrap();
        let told = Arc::new(AtomicUsize::new(0));
        let told2 = told.clone();
        let opts = LockOptions {
            timeout: Duration::from_millis(100),
            on_wait: Some(Arc::new(move |_| {
                told2.fetch_add(1, Ordering::SeqCst);
            })),
        };
        let err = lock(&path, LockMode::Exclusive, &opts).unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        assert_eq!(told.load(Ordering::SeqCst), 1);
        drop(held);
        // The abandoned helper must not keep the lock once it got it.
        let again = lock(
            &path,
            LockMode::Exclusive,
            &LockOptions {
                timeout: Duration::from_secs(5),
                on_wait: None,
            },
        );
        assert!(again.is_ok());
    }

    #[test]
    fn shared_locks_coexist_and_exclude_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gc.lock");
        let opts = LockOptions {
            timeout: Duration::from_millis(50),
            on_wait: None,
        };
        let a = lock(&path, LockMode::Shared, &opts).unwrap();
        let b = lock(&path, LockMode::Shared, &opts).unwrap();
        assert!(lock(&path, LockMode::Exclusive, &opts).is_err());
        drop((a, b));
        assert!(lock(&path, LockMode::Exclusive, &opts).is_ok());
    }
}
