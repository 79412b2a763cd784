//! `store push` / `store pull`: copies one job — its refs (events, dlq, state, archive) and
//! every object they reach — from one store to another (the local home and a remote store,
//! either way). Idempotent: objects already at the destination are not copied again, and a
//! ref that already holds the value stays as it is.
//!
//! Objects go first, refs last, so a copy killed midway leaves the destination's refs
//! untouched. A destination ref moves only forward: when it is absent, or its value is
//! reachable from the source's (the source has everything it has, and more). Anything
//! else — both sides appended independently, or a log rewritten by retention — is refused
//! unless forced, like a non-fast-forward `git push`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::par;
use crate::store::object::{ObjectError, ObjectId, ObjectType};
use crate::store::refs::{RefError, RefKind, RefName, RefStore};

/// Objects read or checked at once.
const THREADS: usize = 16;

/// The most payload bytes the walk keeps for the copy (`PRODIGY_SYNC_KEEP_BYTES`
/// overrides); objects past it are read again when copied, [`AGAIN_AT_ONCE`] at a time (a
/// job's transcripts may come to gigabytes, which the copy held whole).
const KEEP_BYTES: usize = 256 << 20;

/// Objects read again at once for the copy.
const AGAIN_AT_ONCE: usize = 4;

/// Failures of a copy.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A ref-layer failure (either side).
    #[error(transparent)]
    Ref(#[from] RefError),
    /// An object-layer failure (either side).
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The job has no refs at the source.
    #[error("job '{job}' of repo '{repo}' has no refs in {from}")]
    NoJob {
        /// The repo.
        repo: String,
        /// The job.
        job: String,
        /// The source's name.
        from: String,
    },
    /// The destination's ref is not an ancestor of the source's.
    #[error(
        "ref {name} differs: the destination has {theirs}, which the source's {ours} does not contain; nothing was changed for it (--force replaces it)"
    )]
    Diverged {
        /// The ref.
        name: RefName,
        /// The source's value.
        ours: ObjectId,
        /// The destination's value.
        theirs: ObjectId,
    },
}

impl crate::hint::Hint for SyncError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            SyncError::Ref(e) => e.hint(),
            SyncError::Object(e) => e.hint(),
            SyncError::NoJob { .. } => Some(
                "`prodigy jobs --all-repos` lists the store's jobs (`--store \"\"` the local home's); pick one with --repo",
            ),
            SyncError::Diverged { .. } => None,
        }
    }
}

/// What happened to one ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefOutcome {
    /// The destination had it already.
    UpToDate,
    /// Created at the destination.
    Created,
    /// Moved forward.
    FastForward,
    /// Replaced (forced).
    Forced,
}

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Objects the job's refs reach.
    pub objects: u64,
    /// Of those, copied now.
    pub copied: u64,
    /// Each ref of the job at the source, with its value and what happened.
    pub refs: Vec<(String, ObjectId, RefOutcome)>,
}

/// Copies `repo`/`job` from `from` to `to`; `from_name` names the source in messages and
/// in the destination's reflog. `force` replaces destination refs that are not ancestors.
pub fn copy_job(
    from: &RefStore,
    to: &RefStore,
    from_name: &str,
    repo: &str,
    job: &str,
    force: bool,
) -> Result<SyncReport, SyncError> {
    // The home's gc guard from the start: it is the source of a push (whose objects past
    // the walk's budget are read again when copied, so gc must not prune them between)
    // and the destination of a pull.
    let _gc = to.write_guard()?;
    let mut heads = Vec::new();
    for kind in RefKind::ALL {
        let name = RefName::new(kind, repo, job)?;
        if let Some(id) = from.read(&name)? {
            heads.push((name, id));
        }
    }
    // The event log's writers' refs.
    heads.extend(
        from.list(Some(&format!("events/{repo}/{job}")))?
            .into_iter()
            .filter(|(name, _)| name.writer().is_some()),
    );
    if heads.is_empty() {
        return Err(SyncError::NoJob {
            repo: repo.to_owned(),
            job: job.to_owned(),
            from: from_name.to_owned(),
        });
    }

    // Everything the refs reach, read (and verified) at the source a level at a time.
    let mut seen: HashSet<ObjectId> = HashSet::new();
    let mut objects: Vec<(ObjectId, ObjectType, Option<Vec<u8>>)> = Vec::new();
    let keep_bytes = std::env::var("PRODIGY_SYNC_KEEP_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(KEEP_BYTES);
    let kept = AtomicUsize::new(0);
    let mut frontier: Vec<ObjectId> = heads.iter().map(|(_, id)| *id).collect();
    while !frontier.is_empty() {
        let todo: Vec<ObjectId> = frontier.drain(..).filter(|id| seen.insert(*id)).collect();
        for read in par::map(&todo, THREADS, |id| {
            from.objects().read(id).map(|o| {
                let links = crate::reach::links(&o);
                let len = o.payload.len();
                let keep = kept
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                        (k + len <= keep_bytes).then_some(k + len)
                    })
                    .is_ok();
                (*id, o.kind, links, keep.then_some(o.payload))
            })
        }) {
            let (id, kind, links, payload) = read?;
            frontier.extend(links);
            objects.push((id, kind, payload));
        }
    }
    let mut report = SyncReport {
        objects: objects.len() as u64,
        ..SyncReport::default()
    };

    // Objects first: only those the destination lacks, all made durable at once.
    let present = par::map(&objects, THREADS, |(id, _, _)| to.objects().contains(id));
    let mut batch = to.objects().batch();
    let mut again = Vec::new();
    for ((id, kind, payload), present) in objects.iter().zip(present) {
        if present? {
            continue;
        }
        match payload {
            Some(payload) => {
                batch.add_hashed(*id, *kind, payload)?;
            }
            None => again.push(*id),
        }
        report.copied += 1;
    }
    for slice in again.chunks(AGAIN_AT_ONCE) {
        for read in par::map(slice, AGAIN_AT_ONCE, |id| {
            from.objects().read(id).map(|o| (*id, o))
        }) {
            let (id, object) = read?;
            batch.add_hashed(id, object.kind, &object.payload)?;
        }
    }
    batch.commit()?;

    // Then the refs, each only forward unless forced.
    for (name, id) in heads {
        let mut outcome = RefOutcome::UpToDate;
        to.transact(&name, &format!("store: copied from {from_name}"), |old| {
            outcome = match old {
                None => RefOutcome::Created,
                Some(old) if old == id => RefOutcome::UpToDate,
                Some(old) if seen.contains(&old) => RefOutcome::FastForward,
                Some(_) if force => RefOutcome::Forced,
                Some(old) => {
                    return Err(RefError::Conflict {
                        name: name.clone(),
                        expected: format!("an ancestor of {id}"),
                        found: old.to_string(),
                    });
                }
            };
            Ok(Some(id))
        })
        .map_err(|e| match e {
            RefError::Conflict { name, found, .. } => SyncError::Diverged {
                name,
                ours: id,
                theirs: found.parse().unwrap_or(ObjectId::ZERO),
            },
            other => other.into(),
        })?;
        report.refs.push((name.to_string(), id, outcome));
    }
    Ok(report)
}
