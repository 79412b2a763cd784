//! gc of a bucket ([`crate::store::bucket`]): the same rules as the local one without the packing. Reflog
//! entries past the expiry are deleted; the roots are every ref and every surviving
//! reflog entry; marking walks their links (reading through the local cache, many objects
//! at once); unreachable object keys older than the grace period (by the server's
//! last-modified time) are deleted, as are probe keys left by killed processes.
//!
//! The refs are read before the objects are listed, so an object written after the
//! listing (by a writer running now) is never considered, and one written before a ref
//! named it is reachable. There is no lock shared with writers on other hosts: the grace
//! period is what protects an object written but not yet named by a ref.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use super::{GcError, GcOptions, GcPhase, GcReport, Ticker, reflog_cutoff};
use crate::par;
use crate::store::bucket::Bucket;
use crate::store::object::{ObjectError, ObjectId};
use crate::store::refs::RefStore;

/// Objects read at once while marking.
const READERS: usize = 16;

pub(super) fn gc(
    refs: &RefStore,
    bucket: &Bucket<'_>,
    opts: &GcOptions,
) -> Result<GcReport, GcError> {
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let store = refs.objects();

    // Roots: refs, then reflogs (expired entries deleted first).
    let mut roots: Vec<ObjectId> = refs.list(None)?.into_iter().map(|(_, id)| id).collect();
    let cutoff = reflog_cutoff(opts);
    for name in bucket.logged()? {
        let log = match cutoff {
            Some(cutoff) => {
                let (log, expired) = bucket.expire_reflog(&name, cutoff, opts.dry_run)?;
                report.reflog_expired += expired as u64;
                log
            }
            None => refs.log(&name)?,
        };
        for e in log.entries {
            roots.extend([e.old, e.new].into_iter().filter(|id| !id.is_zero()));
        }
    }

    // Everything stored, after the roots were read.
    let mut listed: HashMap<ObjectId, (u64, SystemTime)> = HashMap::new();
    for stored in bucket.objects()? {
        if let Some(id) = stored.id {
            listed.insert(id, (stored.size, stored.modified));
        }
    }
    report.objects_before = listed.len() as u64;
    report.bytes_before = listed.values().map(|(size, _)| size).sum();

    // Mark, a level of the graph at a time, many reads at once.
    let ticker = Ticker::new(opts, GcPhase::Scan, listed.len() as u64);
    let mut marked: HashSet<ObjectId> = HashSet::new();
    let mut frontier = roots;
    while !frontier.is_empty() {
        let mut todo: Vec<ObjectId> = Vec::new();
        for id in frontier.drain(..) {
            if !marked.insert(id) {
                continue;
            }
            if listed.contains_key(&id) {
                todo.push(id);
            } else {
                // What it links to is unknown: going on would sweep it as unreachable.
                return Err(GcError::Unreadable {
                    id,
                    source: ObjectError::NotFound { id },
                });
            }
        }
        let read = par::map(&todo, READERS, |id| {
            let links = store.read(id).map(|object| crate::reach::links(&object));
            ticker.add(1);
            (*id, links)
        });
        for (id, links) in read {
            match links {
                Ok(links) => frontier.extend(links),
                Err(source @ (ObjectError::Corrupt { .. } | ObjectError::NotFound { .. })) => {
                    return Err(GcError::Unreadable { id, source });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    report.reachable = marked.len() as u64;

    // Sweep.
    let now = SystemTime::now();
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
    let mut doomed = Vec::new();
    for (id, (size, modified)) in listed {
        if marked.contains(&id) {
            continue;
        }
        if age(modified) < opts.prune {
            report.kept_young += 1;
        } else {
            report.pruned += 1;
            report.pruned_bytes += size;
            doomed.push(id);
        }
    }
    let probes = bucket.stale_probes(opts.prune.max(std::time::Duration::from_secs(60)))?;
    report.temp_removed = probes.len() as u64;
    report.bytes_after = report.bytes_before - report.pruned_bytes;
    if !opts.dry_run {
        let ticker = Ticker::new(opts, GcPhase::Prune, doomed.len() as u64);
        bucket.remove(&doomed, probes)?;
        ticker.add(doomed.len() as u64);
    }
    Ok(report)
}
