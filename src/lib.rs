//! prodigy keeps the runtime data of MapReduce workflows — event logs, dead-letter queues,
//! job checkpoints — in one global, content-addressed store shared by every git worktree.
//!
//! The layers, lowest first (a lower layer never imports a higher one, and no module
//! imports one that imports it back): [`names`], [`hint`] and [`home`] → [`fsutil`] and
//! [`lock`] → [`store`] (ids, objects, packs, refs, and the only code that knows the S3
//! backend) → [`repo`], [`config`], [`storage`] → [`events`], [`dlq`], [`state`] → [`reach`]
//! → [`gc`], [`fsck`], [`sync`], [`migrate`] → [`workflow`] → [`runner`] → [`cli`]. The
//! library never prints; the command line writes to the streams its caller hands in.

pub mod cli;
pub mod config;
pub mod dlq;
pub mod env;
pub mod events;
pub mod fsck;
pub mod fsutil;
pub mod gc;
pub mod hint;
pub mod home;
pub mod lock;
pub mod migrate;
pub mod names;
pub mod par;
pub mod reach;
pub mod repo;
pub mod runner;
pub mod state;
pub mod storage;
pub mod store;
pub mod sync;
pub mod workflow;

pub use home::Home;
pub use repo::{extract_repo_name, resolve_repo_name};
pub use store::object::{Object, ObjectError, ObjectId, ObjectStore, ObjectType};
pub use store::refs::{Expect, RefError, RefKind, RefName, RefStore};

/// An error and its causes on one line, joined by `: `.
pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
