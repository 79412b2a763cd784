//! The run lease: what the per-job run lock becomes on a remote store. A lease is a key
//! (`leases/<repo>/<job>`) holding its owner and an expiry; it is taken by a conditional
//! create (or, once expired or released, a conditional replace), renewed by a thread every
//! third of its time to live, and released by a conditional replace that marks it so. A
//! host that dies without releasing blocks the job only until the expiry. Expiry is judged
//! by the clocks of the hosts, which must agree to well within the time to live
//! (`PRODIGY_LEASE_TTL`, default 30 s).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Outcome, Put, Remote, RemoteError, Version};

/// The default time to live.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// What a lease key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// A name unique to the holder (host, pid, random).
    pub owner: String,
    /// The holder's host name.
    pub host: String,
    /// The holder's process id.
    pub pid: u32,
    /// Unix milliseconds after which the lease is free.
    pub expires_ms: u64,
    /// True once the holder let go.
    #[serde(default)]
    pub released: bool,
}

impl LeaseRecord {
    /// Milliseconds until it expires (0 when expired or released).
    pub fn remaining_ms(&self) -> u64 {
        if self.released {
            0
        } else {
            self.expires_ms.saturating_sub(now_ms())
        }
    }
}

/// The time to live from `PRODIGY_LEASE_TTL` (e.g. `30s`), else [`DEFAULT_TTL`].
pub fn ttl_from_env() -> Duration {
    std::env::var("PRODIGY_LEASE_TTL")
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .filter(|d| *d >= Duration::from_millis(300))
        .unwrap_or(DEFAULT_TTL)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    version: Version,
    record: LeaseRecord,
    stop: bool,
    lost: Option<String>,
}

/// A held lease; renewed until dropped, released on drop.
pub struct Lease {
    remote: Arc<Remote>,
    key: String,
    shared: Arc<Shared>,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish()
    }
}

/// The result of [`acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// The lease is ours.
    Held(Lease),
    /// Someone else holds it.
    Busy(LeaseRecord),
}

/// Takes the lease at `key`, waiting up to `wait` for a holder to let go or expire.
pub fn acquire(
    remote: &Arc<Remote>,
    key: &str,
    host: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<Acquired, RemoteError> {
    remote.check_conditional()?;
    let deadline = Instant::now() + wait;
    let owner = format!("{host}:{}:{}", std::process::id(), super::rand_suffix());
    let record = |ttl: Duration| LeaseRecord {
        owner: owner.clone(),
        host: host.to_owned(),
        pid: std::process::id(),
        expires_ms: now_ms() + ttl.as_millis() as u64,
        released: false,
    };
    loop {
        let current = remote.get(key)?;
        let (mode, holder) = match current {
            None => (Put::Create, None),
            Some((bytes, version)) => match serde_json::from_slice::<LeaseRecord>(&bytes) {
                // A damaged lease blocks nobody: it is replaced like an expired one.
                Err(_) => (Put::Replace(version), None),
                Ok(held) if held.remaining_ms() == 0 => (Put::Replace(version), None),
                Ok(held) => (Put::Replace(version), Some(held)),
            },
        };
        if let Some(held) = holder {
            if Instant::now() >= deadline {
                return Ok(Acquired::Busy(held));
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mine = record(ttl);
        let body = serde_json::to_vec(&mine).unwrap_or_default();
        match remote.put(key, body, mode)? {
            Outcome::Written(version) => {
                return Ok(Acquired::Held(Lease::start(
                    remote, key, version, mine, ttl,
                )));
            }
            // Someone else moved first: look again.
            Outcome::Conflict => continue,
        }
    }
}

impl Lease {
    fn start(
        remote: &Arc<Remote>,
        key: &str,
        version: Version,
        record: LeaseRecord,
        ttl: Duration,
    ) -> Lease {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                version,
                record,
                stop: false,
                lost: None,
            }),
            wake: Condvar::new(),
        });
        let renewer = {
            let shared = shared.clone();
            let remote = remote.clone();
            let key = key.to_owned();
            std::thread::Builder::new()
                .name("prodigy-lease".into())
                .spawn(move || renew(&remote, &key, &shared, ttl))
                .ok()
        };
        Lease {
            remote: remote.clone(),
            key: key.to_owned(),
            shared,
            renewer,
        }
    }

    /// Why the lease was lost (taken over after it expired, or not renewed in time), if it
    /// was.
    pub fn lost(&self) -> Option<String> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lost
            .clone()
    }

    /// The key's address.
    pub fn address(&self) -> String {
        self.remote.address(&self.key)
    }
}

fn renew(remote: &Remote, key: &str, shared: &Shared, ttl: Duration) {
    let period = ttl / 3;
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (next, _) = shared
            .wake
            .wait_timeout_while(state, period, |s| !s.stop)
            .unwrap_or_else(|p| p.into_inner());
        state = next;
        if state.stop || state.lost.is_some() {
            return;
        }
        let mut record = state.record.clone();
        record.expires_ms = now_ms() + ttl.as_millis() as u64;
        let version = state.version.clone();
        drop(state);
        let body = serde_json::to_vec(&record).unwrap_or_default();
        let result = remote.put(key, body, Put::Replace(version));
        state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(Outcome::Written(version)) => {
                state.version = version;
                state.record = record;
            }
            Ok(Outcome::Conflict) => {
                state.lost = Some("another process took the lease over".into());
            }
            // A failed renewal is tried again next period, until the lease has expired.
            Err(e) if state.record.remaining_ms() == 0 => {
                state.lost = Some(format!(
                    "the lease expired before it could be renewed ({e})"
                ));
            }
            Err(_) => {}
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            state.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(handle) = self.renewer.take() {
            let _ = handle.join();
        }
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.lost.is_some() {
            return;
        }
        let mut record = state.record.clone();
        record.released = true;
        record.expires_ms = 0;
        let body = serde_json::to_vec(&record).unwrap_or_default();
        // Best effort: a lease that cannot be released expires.
        let _ = self
            .remote
            .put(&self.key, body, Put::Replace(state.version.clone()));
    }
}
