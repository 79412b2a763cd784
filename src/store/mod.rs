//! The store: the one place that knows backends.
//!
//! - [`id`]: object ids and types (a leaf: imports nothing of the crate);
//! - [`object`]: objects, framed by one codec, kept as loose files and [`pack`]s in the
//!   home or as keys of an S3 store (the home's objects directory is then its cache); a
//!   pack's frames may share a zstd [`dict`]ionary;
//! - [`refs`]: refs and reflogs, moved under a flock in the home or by conditional puts
//!   under a lease in S3; [`refs::RefStore::job_lock`] returns one lock type either way;
//! - [`s3`]: the S3 client (it knows nothing of objects or refs) and the run lease;
//!   [`keys`]: where each thing lives in a bucket.
//!
//! The backend is chosen once, when the store opens, from the home's store address
//! ([`crate::storage`]). Nothing outside this module names the S3 client or asks which
//! backend is in use: gc and fsck, whose work differs by backend, reach it through
//! [`bucket::Collection`].

pub mod bucket;
pub mod dict;
pub mod id;
pub mod keys;
pub mod object;
pub mod pack;
pub mod refs;
pub mod s3;

pub use s3::{RemoteError, STORE_ENV};
