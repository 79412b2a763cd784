//! `fsck` of a remote store: every object key is fetched from the store itself (not the
//! cache) and verified, every ref and reflog entry must name a good object, and everything
//! a ref reaches must be present and good. Findings name the `s3://` address.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Checker, FsckError, FsckReport, Severity};
use crate::home::Home;
use crate::object::{ObjectId, ObjectStore, decode};
use crate::refs::{RefError, RefName, RefStore, remote_log_dir, remote_ref_key};
use crate::remote::Remote;

/// How many object keys are fetched per round.
const CHUNK: usize = 256;

pub(super) fn fsck(
    home: &Home,
    refs: &RefStore,
    remote: &Arc<Remote>,
) -> Result<FsckReport, FsckError> {
    let mut checker = Checker {
        home,
        report: FsckReport::default(),
        good: HashSet::new(),
        bad: HashSet::new(),
        links: Default::default(),
        heads: Vec::new(),
        now: SystemTime::now(),
    };
    let address = |key: &str| PathBuf::from(remote.address(key));

    // Objects.
    let mut ids = Vec::new();
    for listed in remote.list("objects/")? {
        let hex: String = listed
            .key
            .strip_prefix("objects/")
            .unwrap_or_default()
            .replace('/', "");
        match hex.parse::<ObjectId>() {
            Ok(id) if ObjectStore::remote_key(&id) == listed.key => ids.push(id),
            _ => checker.find(
                Severity::Warning,
                &address(&listed.key),
                "not an object key (unexpected name)",
            ),
        }
    }
    for chunk in ids.chunks(CHUNK) {
        let keys: Vec<String> = chunk.iter().map(ObjectStore::remote_key).collect();
        for ((id, key), body) in chunk.iter().zip(&keys).zip(remote.get_many(&keys)?) {
            let path = address(key);
            let result = match body {
                Some(bytes) => decode(id, &path, &bytes).map_err(|e| crate::error_line(&e)),
                // Deleted since the listing (a gc running now).
                None => continue,
            };
            checker.checked(*id, result, &path, "");
        }
    }

    // Refs.
    let mut names = Vec::new();
    for listed in remote.list("refs/")? {
        let rest = listed.key.strip_prefix("refs/").unwrap_or_default();
        match rest.parse::<RefName>() {
            Ok(name) if rest.split('/').count() == 3 => names.push(name),
            _ => checker.find(
                Severity::Error,
                &address(&listed.key),
                "not a valid ref key (refs/<kind>/<repo>/<job>)",
            ),
        }
    }
    let mut logged: Vec<RefName> = refs.remote_logged_names()?;
    logged.retain(|n| !names.contains(n));
    for name in names.iter().chain(&logged) {
        let head_path = address(&remote_ref_key(name));
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
        let log_path = address(&remote_log_dir(name));
        match refs.log(name) {
            Ok(log) => checker.check_log(name, &log_path, &log, head),
            Err(e) => checker.find(Severity::Error, &log_path, crate::error_line(&e)),
        }
    }
    checker.reachability();
    let mut report = checker.report;
    report.findings.sort();
    Ok(report)
}
