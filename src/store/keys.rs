//! Where each thing lives in an S3 store: the one module that writes its key layout.
//! The keys under the store's prefix mirror the home:
//!
//! - `objects/ab/cdef…`: an object's file, the same zstd frame as a loose object;
//! - `refs/<kind>/<repo>/<job>`: a ref, `<64 hex>\n` (empty once deleted);
//! - `refs/events/<repo>/<job>!/<writer>`: one writer's event log (`!` is in no name and
//!   among S3's safe characters, which object_store does not escape; `…/<job>/<writer>`
//!   would make `…/<job>` a key and a prefix at once, which some servers refuse);
//! - `logs/<ref path>/<unix ms>-<old:12>-<new:12>`: one reflog entry, its line;
//! - `leases/<repo>/<job>`: the run lease of a job (JSON);
//! - `probe/…`: short-lived keys of the conditional-write check.
//!
//! Names arrive already checked (a ref's name is `kind/repo/job` of safe components), so
//! nothing here validates them; what is parsed back from a listing is checked by a round
//! trip.

use std::fmt::Display;

use super::id::ObjectId;

/// The prefix of every object key.
pub const OBJECTS: &str = "objects/";
/// The prefix of every ref key.
pub const REFS: &str = "refs/";
/// The prefix of every reflog entry key.
pub const LOGS: &str = "logs/";
/// The prefix of the conditional-write check's keys.
pub const PROBES: &str = "probe/";

/// The key of an object.
pub fn object(id: &ObjectId) -> String {
    let hex = id.to_string();
    format!("{OBJECTS}{}/{}", &hex[..2], &hex[2..])
}

/// The prefix of the objects whose hex starts with `fanout` (two digits).
pub fn objects_in(fanout: &str) -> String {
    format!("{OBJECTS}{fanout}/")
}

/// The object a listed key names, when it is exactly an object's key.
pub fn parse_object(key: &str) -> Option<ObjectId> {
    let hex: String = key.strip_prefix(OBJECTS)?.replace('/', "");
    let id = hex.parse().ok()?;
    (object(&id) == key).then_some(id)
}

/// The path of a ref in keys: `kind/repo/job`, or `kind/repo/job!/writer`.
pub fn ref_path(kind: &str, repo: &str, job: &str, writer: Option<&str>) -> String {
    match writer {
        Some(w) => format!("{kind}/{repo}/{job}{LANE}/{w}"),
        None => format!("{kind}/{repo}/{job}"),
    }
}

/// What marks the prefix of a job's writers' refs.
const LANE: &str = "!";

/// The parts of a ref path ([`ref_path`]), when it is one.
pub fn parse_ref_path(path: &str) -> Option<(&str, &str, &str, Option<&str>)> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [kind, repo, job] => Some((kind, repo, job, None)),
        [kind, repo, job, writer] => Some((kind, repo, job.strip_suffix(LANE)?, Some(writer))),
        _ => None,
    }
}

/// The key of a ref (`name` is its [`ref_path`]).
pub fn ref_key(name: &impl Display) -> String {
    format!("{REFS}{name}")
}

/// The prefix of the refs of one kind, or of every ref.
pub fn refs_of(kind: Option<&str>) -> String {
    match kind {
        Some(kind) => format!("{REFS}{kind}/"),
        None => REFS.to_owned(),
    }
}

/// The ref path a listed ref key names, when it is one ([`parse_ref_path`]).
pub fn parse_ref(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(REFS)?;
    parse_ref_path(rest).map(|_| rest)
}

/// The prefix of a ref's reflog entries (without the final `/`).
pub fn log_dir(name: &impl Display) -> String {
    format!("{LOGS}{name}")
}

/// The key of one reflog entry: time first, so a listing is in order; the ids' first
/// digits keep two updates in one millisecond apart (the entry holds them whole). Short,
/// as some servers keep a key's metadata in a file named after the key.
pub fn log_entry(name: &impl Display, unix_ms: u64, old: &ObjectId, new: &ObjectId) -> String {
    format!(
        "{}/{unix_ms:013}-{}-{}",
        log_dir(name),
        &old.to_string()[..12],
        &new.to_string()[..12]
    )
}

/// The ref path whose reflog a listed entry key belongs to.
pub fn parse_log_entry(key: &str) -> Option<&str> {
    let (name, _) = key.strip_prefix(LOGS)?.rsplit_once('/')?;
    Some(name)
}

/// The key of a job's run lease.
pub fn lease(repo: &str, job: &str) -> String {
    format!("leases/{repo}/{job}")
}

/// A fresh probe key, unique to this process and moment (`unique`).
pub fn probe(unique: &str) -> String {
    format!("{PROBES}{unique}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_to_what_they_name() {
        let id: ObjectId = "ab".repeat(32).parse().unwrap();
        assert_eq!(parse_object(&object(&id)), Some(id));
        assert_eq!(parse_object("objects/abab/x"), None);
        assert_eq!(
            parse_object(&object(&id).replace("objects/ab/", "objects/a/b")),
            None
        );
        assert_eq!(
            parse_ref(&ref_key(&"events/api/mr-1")),
            Some("events/api/mr-1")
        );
        assert_eq!(parse_ref("refs/events/api"), None);
        let lane = ref_path("events", "api", "mr-1", Some("w1"));
        assert_eq!(lane, "events/api/mr-1!/w1");
        assert_eq!(parse_ref(&ref_key(&lane)), Some(lane.as_str()));
        assert_eq!(
            parse_ref_path(&lane),
            Some(("events", "api", "mr-1", Some("w1")))
        );
        assert_eq!(parse_ref("refs/events/api/mr-1/w1"), None);
        let entry = log_entry(&lane, 17, &id, &id);
        assert_eq!(parse_log_entry(&entry), Some(lane.as_str()));
        let entry = log_entry(&"dlq/api/mr-1", 17, &id, &id);
        assert!(entry.starts_with("logs/dlq/api/mr-1/0000000000017-abababababab-"));
        assert_eq!(parse_log_entry(&entry), Some("dlq/api/mr-1"));
    }
}
