//! The event log (DESIGN.md §6): records, batches chained by `log` nodes, the logger, and
//! queries over a job's log.

pub mod calls;
pub mod job;
pub mod log;
pub mod logger;
pub mod query;
pub mod record;
pub mod retain;

pub use job::{EventLog, JobEvents, Totals, list_jobs};
pub use log::{Appended, Batch, Chain, EventError, LogNode, Summary, WriterSet};
pub use logger::{EventLogger, Thresholds};
pub use query::Filter;
pub use record::{EventRecord, MapReduceEvent, Metadata};
