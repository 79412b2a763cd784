//! What to do about an error, said by the error itself: each library error type tells its
//! hint by variant (as jj attaches hints where an error is made), and a wrapper asks what
//! it wraps. Rewording an error never loses its hint, since none is read off the words.
//! A leaf: it imports nothing of the crate; the command line asks each error type
//! (`cli::output::hint_of`).

/// An error that may say what to do next.
pub trait Hint {
    /// The hint of this error (or of the error it wraps), if it has one.
    fn hint(&self) -> Option<&'static str>;
}

/// Said of anything damaged in the store.
pub const DAMAGED: &str = "`prodigy fsck` lists everything damaged; `events show --best-effort` reads around a damaged log (docs/troubleshooting.md)";

/// Said of a lock held past the time-out.
pub const LOCK_HELD: &str =
    "retry once the other process is done, or wait longer with PRODIGY_LOCK_TIMEOUT=2m";

/// Said of a job whose lease or state moved under its runner.
pub const LEASE: &str = "another runner may have the job: `prodigy jobs show <job>` says; if none runs it, `prodigy resume <job>`";

/// Said of an expression that does not parse.
pub const FILTER: &str = "the filter language (fields, operators, 'quoted' text) is in docs/dlq.md";

/// Said of a remote store that cannot be reached.
pub const REMOTE_UNREACHABLE: &str = "check AWS_ENDPOINT_URL (and the AWS credentials) and that the server is up; nothing was changed";

/// A remote store's bucket does not exist.
pub const REMOTE_NO_BUCKET: &str =
    "create the bucket first, or fix the address in --store / PRODIGY_STORE";

/// Said of a workflow key this runner does not have.
pub const WORKFLOW_FORMAT: &str = "the workflow format prodigy reads is in docs/workflows.md";

/// The hint of an OS error: a home that cannot be written, a full disk.
pub fn of_io(e: &std::io::Error) -> Option<&'static str> {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            Some("the store's home must be writable; choose another with --home or PRODIGY_HOME")
        }
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            Some("free some space and retry; nothing was changed")
        }
        _ => None,
    }
}
