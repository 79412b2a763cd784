//! `fsck` of a bucket ([`crate::store::bucket`]): every object key is fetched from the store itself (not the
//! cache) and verified, every ref and reflog entry must name a good object, and everything
//! a ref reaches must be present and good. Findings name the `s3://` address.

use std::collections::HashSet;
use std::time::SystemTime;

use super::{Checker, FsckError, FsckReport, Severity};
use crate::home::Home;
use crate::store::bucket::Bucket;
use crate::store::refs::{RefError, RefName, RefStore};

/// How many objects are fetched per round.
const CHUNK: usize = 256;

pub(super) fn fsck(
    home: &Home,
    refs: &RefStore,
    bucket: &Bucket<'_>,
) -> Result<FsckReport, FsckError> {
    let mut checker = Checker {
        home,
        report: FsckReport::default(),
        good: HashSet::new(),
        bad: HashSet::new(),
        links: Default::default(),
        heads: Vec::new(),
        named: Vec::new(),
        now: SystemTime::now(),
    };

    // Refs first: what they name was written before they moved (see `Checker::named`).
    let mut names = Vec::new();
    for listed in bucket.refs()? {
        match listed {
            Ok(name) => names.push(name),
            Err(address) => checker.find(
                Severity::Error,
                &address,
                "not a valid ref key (refs/<kind>/<repo>/<job>)",
            ),
        }
    }
    let mut logged: Vec<RefName> = bucket.logged()?;
    logged.retain(|n| !names.contains(n));
    for name in names.iter().chain(&logged) {
        let head_path = bucket.ref_address(name);
        let head = match refs.read(name) {
            Ok(head) => head,
            Err(RefError::Corrupt { reason, .. }) => {
                checker.find(
                    Severity::Error,
                    &head_path,
                    format!("ref {name} is corrupt: {reason}"),
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(id) = head {
            checker.report.refs += 1;
            checker.target(&head_path, &format!("ref {name}"), id);
            checker.heads.push((name.clone(), head_path.clone(), id));
        }
        let log_path = bucket.log_address(name);
        match refs.log(name) {
            Ok(log) => checker.check_log(name, &log_path, &log, head),
            Err(e) => checker.find(Severity::Error, &log_path, crate::error_line(&e)),
        }
    }

    // Objects.
    let mut ids = Vec::new();
    for stored in bucket.objects()? {
        match stored.id {
            Some(id) => ids.push(id),
            None => checker.find(
                Severity::Warning,
                &stored.address,
                "not an object key (unexpected name)",
            ),
        }
    }
    for chunk in ids.chunks(CHUNK) {
        for (id, (path, read)) in chunk.iter().zip(bucket.fetch(chunk)?) {
            // None: deleted since the listing (a gc running now).
            if let Some(read) = read {
                checker.checked(*id, read.map_err(|e| crate::error_line(&e)), &path, "");
            }
        }
    }
    checker.named();
    checker.reachability();
    let mut report = checker.report;
    report.findings.sort();
    Ok(report)
}
