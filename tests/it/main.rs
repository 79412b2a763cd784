//! The integration tests: one binary, real processes, a temp `PRODIGY_HOME` each.

mod claude;
mod common;
mod concurrency;
mod corruption;
mod crash;
mod dlq;
mod dlq_concurrency;
mod docs;
mod errors;
mod events;
mod events_concurrency;
mod examples;
mod faults;
mod gc;
mod hostile;
mod house;
mod language;
mod lifecycle;
mod migrate;
mod plumbing;
mod powercut;
mod progress;
mod props;
mod quoting;
#[cfg(feature = "s3")]
mod remote;
mod repo_name;
mod retention;
mod runner;
#[cfg(feature = "s3")]
mod s3;
mod sessions;
mod torture;
mod worker;
