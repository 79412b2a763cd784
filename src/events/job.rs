//! A job's event log: the chains of its writers, each under a ref of its own
//! (`events/<repo>/<job>/<writer>`), and the job's own ref (`events/<repo>/<job>`), which
//! holds what was appended before writers had refs and is never appended to again. Every
//! writer — the runner's logger, an `events append` process, a migration — appends to its
//! own chain, so its compare-and-swap only ever competes with itself: no lock is shared
//! and no server's conditional put is trusted to order two writers. Readers merge the
//! chains ([`super::query::stream`]); totals add the chains' head nodes.

use std::borrow::{Borrow, Cow};

use serde::Serialize;

use super::log::{Appended, Batch, Chain, EventError, LogNode, Summary};
use crate::store::object::ObjectId;
use crate::store::refs::{RefKind, RefName, RefStore};

/// A job's event log: its chains read as one.
#[derive(Debug, Clone)]
pub struct EventLog {
    refs: RefStore,
    name: RefName,
}

/// The name of a writer's ref: the writer's id when it is a valid name (our writers'
/// UUIDs are), else `x` and 32 hex digits of its BLAKE3 hash (a writer of an imported
/// record may be any text).
pub fn lane_of(writer: &str) -> String {
    if crate::names::validate("writer", writer).is_ok() {
        writer.to_owned()
    } else {
        let hash = blake3::hash(writer.as_bytes()).to_hex();
        format!("x{}", &hash[..32])
    }
}

/// The totals of a job's log, from its chains' head nodes alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// The totals of every record.
    pub total: Summary,
    /// Batches, over every chain.
    pub batches: u64,
    /// Chains (the job's own and one per writer).
    pub chains: u64,
}

impl EventLog {
    /// The log of `job` in `repo` (names validated).
    pub fn new(refs: RefStore, repo: &str, job: &str) -> Result<EventLog, EventError> {
        let name = RefName::new(RefKind::Events, repo, job)?;
        Ok(EventLog { refs, name })
    }

    /// The job's ref name, `events/<repo>/<job>` (its writers' refs are under it).
    pub fn name(&self) -> &RefName {
        &self.name
    }

    /// The ref store underneath.
    pub fn refs(&self) -> &RefStore {
        &self.refs
    }

    /// The chain of the job's own ref (the layout before writers had refs).
    pub fn main(&self) -> Chain {
        Chain::new(self.refs.clone(), self.name.clone())
    }

    /// The chain `writer` appends to.
    pub fn lane(&self, writer: &str) -> Result<Chain, EventError> {
        let name = RefName::lane(self.name.repo(), self.name.job(), &lane_of(writer))?;
        Ok(Chain::new(self.refs.clone(), name))
    }

    /// The job's archive (events retention moved out of the live log).
    pub fn archive(&self) -> Result<Chain, EventError> {
        let name = RefName::new(RefKind::Archive, self.name.repo(), self.name.job())?;
        Ok(Chain::new(self.refs.clone(), name))
    }

    /// Every chain that has a head, with it: the job's own first, then the writers' by
    /// name.
    pub fn chains(&self) -> Result<Vec<(Chain, ObjectId)>, EventError> {
        Ok(self
            .refs
            .list(Some(&self.name.to_string()))?
            .into_iter()
            .filter(|(name, _)| name.of_job() == self.name)
            .map(|(name, head)| (Chain::new(self.refs.clone(), name), head))
            .collect())
    }

    /// True when the job has events.
    pub fn exists(&self) -> Result<bool, EventError> {
        Ok(!self.chains()?.is_empty())
    }

    /// The totals of the whole log, from one node per chain; `None` without events.
    pub fn totals(&self) -> Result<Option<Totals>, EventError> {
        totals_of(self.chains()?)
    }

    /// Appends batches, each to its writer's chain (in their order): all or nothing per
    /// writer — every batch object is durable before the writer's ref moves once. When
    /// this returns, every record is durable.
    pub fn append<B: Borrow<Batch>>(&self, batches: &[B]) -> Result<(), EventError> {
        for (writer, group) in by_writer(batches) {
            self.lane(writer)?.append(&group)?;
        }
        Ok(())
    }

    /// Appends records whose identity the caller was given, idempotent by identity
    /// (writer and seq, [`Chain::append_idempotent`]), each writer's into its chain. A
    /// record the job's own ref already holds (appended before writers had refs) counts as
    /// stored too. Batches whose writer is `fresh` (an id made for this call) are not
    /// checked. Every writer's records are checked before any is appended, so a record that
    /// differs from its stored copy leaves the log as it was.
    pub fn append_idempotent<B: Borrow<Batch>>(
        &self,
        batches: &[B],
        fresh: &str,
    ) -> Result<Appended, EventError> {
        let main = self.main();
        let old = main.refs().read(main.name())?;
        let mut done = Appended::default();
        let mut groups = Vec::new();
        for (writer, group) in by_writer(batches) {
            let lane = self.lane(writer)?;
            let group: Vec<Cow<'_, Batch>> = match old {
                Some(head) if writer != fresh => {
                    let (rest, skipped) = main.unstored(head, &group, fresh)?;
                    done.skipped += skipped;
                    rest
                }
                _ => group.into_iter().map(Cow::Borrowed).collect(),
            };
            if writer != fresh
                && let Some(head) = lane.refs().read(lane.name())?
            {
                lane.unstored(head, &borrowed(&group), fresh)?;
            }
            groups.push((lane, group));
        }
        // Checked again under each chain's lock, against what a writer appended meanwhile.
        for (lane, group) in groups {
            let appended = lane.append_idempotent(&group, fresh)?;
            done.added += appended.added;
            done.skipped += appended.skipped;
        }
        Ok(done)
    }
}

/// Totals of chains from their head nodes.
pub(crate) fn totals_of(chains: Vec<(Chain, ObjectId)>) -> Result<Option<Totals>, EventError> {
    let mut totals: Option<Totals> = None;
    for (chain, head) in chains {
        let node: LogNode = chain
            .node(&head)
            .map_err(|e| chain.broken("log node", head, e))?;
        let t = totals.get_or_insert_with(Totals::default);
        t.total.merge(&node.total);
        t.batches += node.depth;
        t.chains += 1;
    }
    Ok(totals)
}

fn borrowed<'b>(batches: &'b [Cow<'_, Batch>]) -> Vec<&'b Batch> {
    batches.iter().map(AsRef::as_ref).collect()
}

/// Batches grouped by writer, in the order each writer first appears; each group keeps
/// its batches' order. Empty batches are dropped.
fn by_writer<B: Borrow<Batch>>(batches: &[B]) -> Vec<(&str, Vec<&Batch>)> {
    let mut groups: Vec<(&str, Vec<&Batch>)> = Vec::new();
    for batch in batches.iter().map(Borrow::borrow).filter(|b| !b.is_empty()) {
        let writer = batch.writer().unwrap_or_default();
        match groups.iter_mut().find(|(w, _)| *w == writer) {
            Some((_, group)) => group.push(batch),
            None => groups.push((writer, vec![batch])),
        }
    }
    groups
}

/// One job with events, as listed from its chains' head nodes only.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvents {
    /// The repo name.
    pub repo: String,
    /// The job id.
    pub job: String,
    /// Totals of the whole log.
    pub total: Summary,
    /// Number of batches.
    pub batches: u64,
}

/// Every job with an event log in `repo` (or in every repo), sorted by repo and job,
/// reading one node per chain. A job whose head cannot be read does not hide the others:
/// it is returned among the errors.
pub fn list_jobs(
    refs: &RefStore,
    repo: Option<&str>,
) -> Result<(Vec<JobEvents>, Vec<EventError>), EventError> {
    let prefix = match repo {
        Some(repo) => format!("events/{repo}"),
        None => "events".to_owned(),
    };
    let mut by_job: Vec<(RefName, Vec<(Chain, ObjectId)>)> = Vec::new();
    for (name, head) in refs.list(Some(&prefix))? {
        let job = name.of_job();
        let chain = (Chain::new(refs.clone(), name), head);
        match by_job.last_mut() {
            Some((last, chains)) if *last == job => chains.push(chain),
            _ => by_job.push((job, vec![chain])),
        }
    }
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (name, chains) in by_job {
        match totals_of(chains) {
            Ok(Some(t)) => jobs.push(JobEvents {
                repo: name.repo().to_owned(),
                job: name.job().to_owned(),
                total: t.total,
                batches: t.batches,
            }),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    Ok((jobs, errors))
}
