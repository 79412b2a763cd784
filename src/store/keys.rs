//! Where each thing lives in an S3 store: the one module that writes its key layout.
//! The keys under the store's prefix mirror the home:
//!
//! - `objects/ab/cdef…`: an object's file, the same zstd frame as a loose object;
//! - `refs/<kind>/<repo>/<job>`: a ref, `<64 hex>\n` (empty once deleted);
//! - `logs/<kind>/<repo>/<job>/<unix ms>-<old:12>-<new:12>`: one reflog entry, its line;
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

/// The key of a ref (`name` is `kind/repo/job`).
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

/// The `kind/repo/job` a listed ref key names, when it has exactly three components.
pub fn parse_ref(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(REFS)?;
    (rest.split('/').count() == 3).then_some(rest)
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

/// The `kind/repo/job` whose reflog a listed entry key belongs to.
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
        let entry = log_entry(&"dlq/api/mr-1", 17, &id, &id);
        assert!(entry.starts_with("logs/dlq/api/mr-1/0000000000017-abababababab-"));
        assert_eq!(parse_log_entry(&entry), Some("dlq/api/mr-1"));
    }
}
