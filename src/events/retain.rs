//! Retention (DESIGN.md §10): keep the newest events of a job's log within a policy (max
//! age, max events, max size), exactly, and move the rest out — into the job's
//! `archive/<repo>/<job>` log, where they stay readable, or away.
//!
//! The live log is rebuilt under its ref's lock: the batches kept whole keep their objects
//! (only their nodes are written again, chained onto the new start), and the one batch the
//! limit falls inside is split in two new batch objects, its newer records kept, its older
//! ones archived. Removed batches are appended to the archive's chain as they are, never
//! re-compressed or copied. The archive ref moves before the live one (both under their
//! locks, always in that order), so a crash between the two leaves events in both logs,
//! never in neither.

use serde::Serialize;

use super::job::EventLog;
use super::log::{Batch, Chain, EventError, LogNode, Summary, WriterSet};
use super::record::{EventRecord, format_timestamp};
pub use crate::config::{Retention, parse_size};
use crate::store::object::{ObjectId, ObjectType};

/// What a clean did (or, with `dry_run`, would do) to one job's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanReport {
    /// The repo.
    pub repo: String,
    /// The job.
    pub job: String,
    /// Events before.
    pub events_before: u64,
    /// Events kept.
    pub events_kept: u64,
    /// Events removed from the live log.
    pub events_removed: u64,
    /// Bytes of JSON Lines removed.
    pub bytes_removed: u64,
    /// Oldest timestamp kept.
    pub oldest_kept: Option<String>,
    /// True when the removed events went to the archive.
    pub archived: bool,
    /// True when nothing was changed because of `dry_run`.
    pub dry_run: bool,
}

/// How much of the newest part of the log a policy allows.
struct Budget {
    cutoff: Option<String>,
    events: u64,
    bytes: u64,
}

impl Budget {
    /// Whether a record of `len` bytes stamped `ts` still fits; takes it if so.
    fn take(&mut self, ts: &str, len: u64) -> bool {
        let fresh = self.cutoff.as_deref().is_none_or(|c| ts >= c);
        if !fresh || self.events == 0 || self.bytes < len {
            return false;
        }
        self.events -= 1;
        self.bytes -= len;
        true
    }

    /// Whether a whole node fits; takes it if so.
    fn take_node(&mut self, s: &Summary) -> bool {
        let fresh = match (&self.cutoff, &s.first_ts) {
            (Some(c), Some(f)) => f >= c,
            _ => true,
        };
        if !fresh || s.count > self.events || s.bytes > self.bytes {
            return false;
        }
        self.events -= s.count;
        self.bytes -= s.bytes;
        true
    }
}

/// The plan for one log: nodes kept whole (oldest first), the split batch's kept and
/// removed parts, and nodes removed whole.
struct Cut {
    removed: Vec<(ObjectId, LogNode)>,
    split: Option<(Batch, Batch)>,
    kept: Vec<(ObjectId, LogNode)>,
}

/// How many of the newest records of each chain a policy keeps, decided on one look at
/// every chain: newest first across the chains in merged order (timestamp, writer, seq),
/// whole nodes while they are newer than every other chain's rest and fit, record by record
/// near the limit; the first record that does not fit ends it (the same rule as one chain
/// alone, where it keeps the newest records up to the first that does not fit).
fn plan(
    chains: &[(Chain, ObjectId)],
    policy: &Retention,
    now: jiff::Timestamp,
) -> Result<Vec<u64>, EventError> {
    let mut budget = Budget {
        cutoff: policy.max_age.and_then(|age| {
            let age = jiff::SignedDuration::try_from(age).ok()?;
            now.checked_sub(age).ok().map(format_timestamp)
        }),
        events: policy.max_events.unwrap_or(u64::MAX),
        bytes: policy.max_size.unwrap_or(u64::MAX),
    };
    struct Back {
        /// Nodes not yet looked at, oldest first.
        nodes: Vec<(ObjectId, LogNode)>,
        /// The records of the node opened last, oldest first: key and length.
        records: Vec<((String, String, u64), u64)>,
    }
    let mut backs = Vec::with_capacity(chains.len());
    for (chain, head) in chains {
        backs.push(Back {
            nodes: chain.nodes_between(Some(*head), None, false)?.0,
            records: Vec::new(),
        });
    }
    // The newest key a chain has left (a node's: its last timestamp, writer, seq).
    let newest = |b: &Back| -> Option<(String, String, u64)> {
        if let Some((key, _)) = b.records.last() {
            return Some(key.clone());
        }
        b.nodes.last().map(|(_, n)| {
            (
                n.summary.last_ts.clone().unwrap_or_default(),
                n.writer.clone(),
                n.seq_last,
            )
        })
    };
    let mut keep = vec![0u64; chains.len()];
    loop {
        let Some((c, _)) = backs
            .iter()
            .enumerate()
            .filter_map(|(i, b)| newest(b).map(|k| (i, k)))
            .max_by(|a, b| a.1.cmp(&b.1))
        else {
            return Ok(keep);
        };
        if let Some(((ts, _, _), len)) = backs[c].records.last() {
            if !budget.take(ts, *len) {
                return Ok(keep);
            }
            backs[c].records.pop();
            keep[c] += 1;
            continue;
        }
        let (_, node) = backs[c].nodes.last().expect("a node is left");
        // Whole, when every record of it is newer than what the other chains have left.
        let others = backs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != c)
            .filter_map(|(_, b)| newest(b))
            .map(|(ts, _, _)| ts)
            .max();
        let first = node.summary.first_ts.clone().unwrap_or_default();
        if others.is_none_or(|o| first > o) && budget.take_node(&node.summary) {
            keep[c] += node.summary.count;
            backs[c].nodes.pop();
            continue;
        }
        let (_, node) = backs[c].nodes.pop().expect("a node is left");
        let lines = chains[c].0.batch_lines(&node)?;
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record: EventRecord = serde_json::from_slice(line)
                .map_err(|e| EventError::BadRecord(format!("batch {}: {e}", node.batch)))?;
            backs[c].records.push((
                (record.timestamp, record.writer, record.seq),
                line.len() as u64 + 1,
            ));
        }
    }
}

impl EventLog {
    /// Applies `policy` to the job's live log: keeps the newest events it allows, exactly
    /// (counted over every chain of the job, [`plan`]), and removes (or, with
    /// `policy.archive`, archives) the rest, chain by chain, each under its own lock; a
    /// writer appending meanwhile keeps what it appended. With `dry_run`, says what would
    /// go and changes nothing.
    pub fn clean(
        &self,
        policy: &Retention,
        now: jiff::Timestamp,
        dry_run: bool,
    ) -> Result<CleanReport, EventError> {
        let mut report = CleanReport {
            repo: self.name().repo().to_owned(),
            job: self.name().job().to_owned(),
            archived: policy.archive,
            dry_run,
            ..CleanReport::default()
        };
        let chains = self.chains()?;
        let keep = plan(&chains, policy, now)?;
        let mut before = Summary::default();
        let mut kept = Summary::default();
        let _gc = if dry_run {
            None
        } else {
            Some(self.refs().write_guard()?)
        };
        let archive = self.archive()?;
        for ((chain, snapshot), keep) in chains.iter().zip(keep) {
            if dry_run {
                if let Some(cut) = chain.cut(Some(*snapshot), *snapshot, keep)? {
                    before.merge(&chain.node(snapshot)?.total);
                    kept.merge(&cut.kept_summary());
                }
                continue;
            }
            chain.refs().transact_with::<_, EventError, _>(
                chain.name(),
                "events clean",
                |old| {
                    let Some(head) = old else {
                        return Ok((old, ()));
                    };
                    // Rewritten meanwhile (another clean): left as it is.
                    let Some(cut) = chain.cut(old, *snapshot, keep)? else {
                        let total = chain.node(&head)?.total;
                        before.merge(&total);
                        kept.merge(&total);
                        return Ok((old, ()));
                    };
                    let total = chain.node(&head)?.total;
                    before.merge(&total);
                    kept.merge(&cut.kept_summary());
                    if cut.removed.is_empty() && cut.split.is_none() {
                        return Ok((old, ()));
                    }
                    if policy.archive {
                        archive.append_removed(&cut)?;
                    }
                    Ok((chain.rebuild(&cut)?, ()))
                },
            )?;
        }
        report.events_before = before.count;
        report.events_kept = kept.count;
        report.events_removed = before.count - kept.count.min(before.count);
        report.bytes_removed = before.bytes - kept.bytes.min(before.bytes);
        report.oldest_kept = kept.first_ts;
        Ok(report)
    }
}

impl Cut {
    /// The totals of what the cut keeps.
    fn kept_summary(&self) -> Summary {
        let mut kept = Summary::default();
        if let Some((newer, _)) = &self.split {
            kept.merge(newer.summary());
        }
        for (_, n) in &self.kept {
            kept.merge(&n.summary);
        }
        kept
    }
}

impl Chain {
    /// The cut that keeps the nodes after `snapshot` (appended since the plan) and the
    /// newest `keep` records from `snapshot` back; `None` when `snapshot` is not in the
    /// chain from `head` (it was rewritten since).
    fn cut(
        &self,
        head: Option<ObjectId>,
        snapshot: ObjectId,
        keep: u64,
    ) -> Result<Option<Cut>, EventError> {
        let mut nodes = self.nodes_between(head, None, false)?.0;
        let Some(at) = nodes.iter().position(|(id, _)| *id == snapshot) else {
            return Ok(None);
        };
        let mut kept: Vec<(ObjectId, LogNode)> = nodes.split_off(at + 1);
        kept.reverse();
        let mut budget = Budget {
            cutoff: None,
            events: keep,
            bytes: u64::MAX,
        };
        while let Some((id, node)) = nodes.pop() {
            if budget.take_node(&node.summary) {
                kept.push((id, node));
                continue;
            }
            // The limit falls inside this batch: keep its newest records that fit.
            let lines = self.batch_lines(&node)?;
            let records: Vec<&[u8]> = lines
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            let keep_from = records.len() - (budget.events as usize).min(records.len());
            let mut older = Batch::new();
            let mut newer = Batch::new();
            for (i, line) in records.iter().enumerate() {
                let record: EventRecord = serde_json::from_slice(line)
                    .map_err(|e| EventError::BadRecord(format!("batch {}: {e}", node.batch)))?;
                let target = if i < keep_from {
                    &mut older
                } else {
                    &mut newer
                };
                target.push_encoded(line, &record.info())?;
            }
            kept.reverse();
            let split = if newer.is_empty() {
                nodes.push((id, node));
                None
            } else {
                Some((newer, older))
            };
            return Ok(Some(Cut {
                removed: nodes,
                split,
                kept,
            }));
        }
        kept.reverse();
        Ok(Some(Cut {
            removed: Vec::new(),
            split: None,
            kept,
        }))
    }

    /// Appends what a cut removes (whole batches as they are, then the split batch's older
    /// part) to this (archive) log.
    fn append_removed(&self, cut: &Cut) -> Result<(), EventError> {
        let older = cut.split.as_ref().map(|(_, older)| older);
        let stored = match older {
            Some(b) if !b.is_empty() => Some(self.write_batch(b)?),
            _ => None,
        };
        self.refs()
            .transact_with::<_, EventError, _>(self.name(), "archive", |old| {
                let mut head = old;
                for (_, node) in &cut.removed {
                    head = Some(self.rechain(head, node)?);
                }
                if let (Some(b), Some(id)) = (older, stored) {
                    head = self.chain_after(head, &[b], &[id])?;
                }
                Ok((head, ()))
            })?;
        Ok(())
    }

    /// The live chain after a cut: the split batch's newer part, then the kept nodes.
    fn rebuild(&self, cut: &Cut) -> Result<Option<ObjectId>, EventError> {
        let mut head = None;
        if let Some((newer, _)) = &cut.split {
            let id = self.write_batch(newer)?;
            head = self.chain_after(None, &[newer], &[id])?;
        }
        for (_, node) in &cut.kept {
            head = Some(self.rechain(head, node)?);
        }
        Ok(head)
    }

    /// Writes `node` again on top of `parent`, its batch unchanged, its totals recomputed.
    fn rechain(&self, parent: Option<ObjectId>, node: &LogNode) -> Result<ObjectId, EventError> {
        let (mut total, depth, mut writers) = match parent {
            Some(p) => {
                let n = self.node(&p)?;
                (n.total, n.depth, n.writers)
            }
            None => (Summary::default(), 0, Some(WriterSet::new())),
        };
        total.merge(&node.summary);
        if let Some(set) = &mut writers {
            set.insert(&node.writer);
        }
        let new = LogNode {
            parent,
            total,
            depth: depth + 1,
            writers,
            ..node.clone()
        };
        let json = serde_json::to_vec(&new).map_err(|e| EventError::BadRecord(e.to_string()))?;
        Ok(self.refs().objects().write(ObjectType::Log, &json)?)
    }
}
