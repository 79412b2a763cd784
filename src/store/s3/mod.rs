//! A store on S3-compatible object storage (`s3://bucket/prefix`): the client that
//! [`crate::store::object::ObjectStore`] and [`crate::store::refs::RefStore`] use when an S3
//! store is chosen (it moves bytes under keys and knows nothing of objects or refs), and
//! the run lease ([`lease`]).
//!
//! Where each thing lives under the prefix is [`crate::store::keys`].
//!
//! Objects are created with `If-None-Match: *` (an existing key is a no-op); refs and
//! leases move with `If-Match: <etag>`. Before its first conditional write a process checks
//! that the server honours both headers, and refuses to write when it does not: a server
//! that ignores them would let two writers overwrite each other silently.
//!
//! The client is `object_store`'s S3 client (endpoint, region and credentials from the
//! usual `AWS_*` variables), driven by a small tokio runtime of its own so that the rest
//! of the library stays synchronous. Throttling (503 SlowDown, 429) and server errors are
//! retried with exponential backoff, bounded by `PRODIGY_S3_RETRY_TIMEOUT`; each request is
//! bounded by `PRODIGY_S3_TIMEOUT`.

pub mod lease;

// The client: `object_store`'s S3 client with the `s3` feature (the default); without it,
// a `Remote` that cannot exist, so the library builds without tokio or object_store and
// an `s3://` store is refused by name.
#[cfg(feature = "s3")]
mod client;
#[cfg(feature = "s3")]
pub use client::{Remote, describe, shared};
#[cfg(not(feature = "s3"))]
mod stub;
#[cfg(not(feature = "s3"))]
pub use stub::{Remote, shared};

use std::fmt;
use std::time::SystemTime;

/// The variable that chooses a remote store (`s3://bucket/prefix`).
pub const STORE_ENV: &str = "PRODIGY_STORE";

/// How many requests run at once when many objects move.
pub const CONCURRENCY: usize = 32;

/// Failures of the remote store, each naming the key and what was being done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The store's address cannot be used.
    #[error("cannot use the store '{url}': {reason}")]
    Config {
        /// The address given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request failed (after the bounded retries).
    #[error("cannot {op} '{url}': {reason}")]
    Request {
        /// What was being done.
        op: &'static str,
        /// The key, as an `s3://` address.
        url: String,
        /// Why, in a line.
        reason: String,
        /// What kind of trouble it was.
        trouble: Trouble,
    },
    /// The server does not honour conditional writes: nothing is written.
    #[error(
        "the store '{url}' does not honour conditional writes ({reason}), so refs cannot move safely; nothing was written"
    )]
    NoConditionalWrites {
        /// The store.
        url: String,
        /// What the check saw.
        reason: String,
    },
    /// A ref stayed contended through every retry.
    #[error("cannot update '{url}': it kept changing under {attempts} attempts")]
    Contended {
        /// The ref's key.
        url: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// What kind of trouble a failed request met, decided where the request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// The endpoint could not be reached.
    Unreachable,
    /// The bucket does not exist.
    NoBucket,
    /// Anything else.
    Other,
}

impl crate::hint::Hint for RemoteError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            RemoteError::Request {
                trouble: Trouble::Unreachable,
                ..
            } => Some(crate::hint::REMOTE_UNREACHABLE),
            RemoteError::Request {
                trouble: Trouble::NoBucket,
                ..
            } => Some(crate::hint::REMOTE_NO_BUCKET),
            RemoteError::NoConditionalWrites { .. } => Some(
                "use a server with conditional writes (AWS S3, MinIO, R2, s3s-fs…), or the local store (--store \"\")",
            ),
            RemoteError::Contended { .. } => {
                Some("many writers are moving this ref at once; retry, nothing was changed")
            }
            RemoteError::Request { .. } | RemoteError::Config { .. } => None,
        }
    }
}

/// The version of a key, for a conditional replace: what the server said of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Its entity tag.
    pub e_tag: Option<String>,
    /// Its version id, on a versioned bucket.
    pub version: Option<String>,
}

/// What a key listing returns.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The key under the store's prefix (`objects/ab/…`).
    pub key: String,
    /// Its size.
    pub size: u64,
    /// When it was last written (the server's clock).
    pub modified: SystemTime,
}

/// How a put behaves when the key exists.
#[derive(Debug, Clone)]
pub enum Put {
    /// Only when the key does not exist (`If-None-Match: *`).
    Create,
    /// Only when the key holds this version (`If-Match`).
    Replace(Version),
}

/// What a conditional put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written; the key's new version.
    Written(Version),
    /// Not written: the key exists (`Create`) or holds another version (`Replace`).
    Conflict,
}

/// `s3://bucket/prefix`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The bucket.
    pub bucket: String,
    /// The prefix inside it, without slashes at either end (may be empty).
    pub prefix: String,
}

impl StoreUrl {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(text: &str) -> Result<StoreUrl, RemoteError> {
        let error = |reason: &str| RemoteError::Config {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(rest) = text.strip_prefix("s3://") else {
            return Err(error(
                "only s3:// addresses are supported (s3://bucket/prefix)",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(error(
                "the bucket name must be 3 to 63 lower-case letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        let prefix_ok = prefix.split('/').all(|part| {
            prefix.is_empty()
                || (!part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        });
        if !prefix_ok {
            return Err(error(
                "the prefix must be '/'-separated names of letters, digits, '-', '_' or '.'",
            ));
        }
        Ok(StoreUrl {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Eight hex digits that differ between processes and calls.
pub fn rand_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let hash = blake3::hash(
        format!(
            "{}:{nanos}:{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .as_bytes(),
    );
    hash.to_hex()[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_addresses_parse_strictly() {
        let url = StoreUrl::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!(
            (url.bucket.as_str(), url.prefix.as_str()),
            ("my-bucket", "a/b")
        );
        assert_eq!(url.to_string(), "s3://my-bucket/a/b");
        assert_eq!(StoreUrl::parse("s3://bkt").unwrap().to_string(), "s3://bkt");
        for bad in [
            "",
            "s3://",
            "s3:///x",
            "gs://b/x",
            "http://b/x",
            "s3://ab",
            "s3://Upper",
            "s3://b_b",
            "s3://bkt/../x",
            "s3://bkt/a//b",
            "s3://bkt/a b",
            "s3://bkt/a\0b",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad:?}");
        }
    }
}
