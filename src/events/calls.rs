//! The Claude calls of a job, read from its event log (`claude_call_started` and
//! `claude_call_finished`), and their totals: tokens and cost per job, per agent and per
//! step. Only the batches whose nodes count these types are read.
//!
//! Costs are summed exactly: each call's `total_cost_usd` is taken as a whole number of
//! nano-dollars (the CLI gives at most a few decimals), so a total never drifts the way a
//! sum of floats does.

use std::collections::BTreeMap;

use serde::Serialize;

use super::query::typed_events;
use super::record::{ClaudeUsage, MapReduceEvent};
use super::{EventError, EventLog};
use crate::store::id::ObjectId;

/// One call, as its events tell it.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    /// When it ended (its finished event's timestamp).
    pub timestamp: String,
    /// The agent (or the phase, for job-level steps).
    pub agent_id: String,
    /// The work item, for an agent's call.
    pub item_id: Option<String>,
    /// `<phase>/<n>`, `<phase>/<n>/on_failure`, or `merge`.
    pub step: String,
    /// The agent's attempt.
    pub attempt: u32,
    /// The command, from the started event.
    pub command: Option<String>,
    /// claude's exit code.
    pub exit_code: i32,
    /// How long it ran.
    pub duration_ms: u64,
    /// Turns taken.
    pub num_turns: Option<u64>,
    /// True when the call failed.
    pub is_error: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// Its tokens.
    pub usage: ClaudeUsage,
    /// What it cost.
    pub total_cost_usd: Option<f64>,
    /// Its transcript.
    pub transcript: Option<ObjectId>,
}

impl Call {
    /// The step's number within its phase (`map/2` → 2).
    pub fn step_number(&self) -> Option<usize> {
        self.step.split('/').nth(1)?.parse().ok()
    }
}

/// Tokens and cost of some calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Calls.
    pub calls: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Their tokens.
    #[serde(flatten)]
    pub usage: ClaudeUsage,
    /// Their cost in nano-dollars.
    #[serde(skip)]
    pub cost_nanos: u64,
}

impl Totals {
    /// Adds a call.
    pub fn add(&mut self, call: &Call) {
        self.calls += 1;
        self.failed += u64::from(call.is_error);
        self.usage.add(&call.usage);
        self.cost_nanos += call.total_cost_usd.map_or(0, nanos);
    }

    /// The cost in dollars, exactly, as text (`0.0123`).
    pub fn cost_usd(&self) -> String {
        let whole = self.cost_nanos / 1_000_000_000;
        let frac = format!("{:09}", self.cost_nanos % 1_000_000_000);
        let frac = frac.trim_end_matches('0');
        match frac.is_empty() {
            true => format!("{whole}"),
            false => format!("{whole}.{frac}"),
        }
    }

    /// As JSON: the counts, the tokens and `total_cost_usd` as a number.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["total_cost_usd"] = self
            .cost_usd()
            .parse::<serde_json::Number>()
            .map(serde_json::Value::Number)
            .unwrap_or_default();
        v
    }
}

fn nanos(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as u64
    } else {
        0
    }
}

/// A job's calls and their totals.
#[derive(Debug, Default)]
pub struct Calls {
    /// Every call, oldest first.
    pub calls: Vec<Call>,
    /// All of them.
    pub job: Totals,
    /// Per agent.
    pub agents: BTreeMap<String, Totals>,
    /// Per step (`map/2`, `setup/1`, …).
    pub steps: BTreeMap<String, Totals>,
}

impl Calls {
    /// The totals as one JSON document.
    pub fn totals_json(&self) -> serde_json::Value {
        let map = |m: &BTreeMap<String, Totals>| -> serde_json::Map<String, serde_json::Value> {
            m.iter().map(|(k, t)| (k.clone(), t.to_json())).collect()
        };
        serde_json::json!({
            "job": self.job.to_json(),
            "agents": map(&self.agents),
            "steps": map(&self.steps),
        })
    }
}

/// Reads the calls of `log`.
pub fn read(log: &EventLog) -> Result<Calls, EventError> {
    let mut commands: BTreeMap<(String, String, u32), String> = BTreeMap::new();
    let mut out = Calls::default();
    let types = ["claude_call_started", "claude_call_finished"];
    typed_events(log, &types, false, |timestamp, event| match event {
        MapReduceEvent::ClaudeCallStarted {
            agent_id,
            step,
            command,
            attempt,
            ..
        } => {
            commands.insert((agent_id, step, attempt), command);
        }
        MapReduceEvent::ClaudeCallFinished {
            agent_id,
            item_id,
            step,
            attempt,
            exit_code,
            duration_ms,
            num_turns,
            is_error,
            error,
            usage,
            total_cost_usd,
            transcript,
            ..
        } => {
            let command = commands.remove(&(agent_id.clone(), step.clone(), attempt));
            out.calls.push(Call {
                timestamp,
                agent_id,
                item_id,
                step,
                attempt,
                command,
                exit_code,
                duration_ms,
                num_turns,
                is_error,
                error,
                usage,
                total_cost_usd,
                transcript,
            });
        }
        _ => {}
    })?;
    for call in &out.calls {
        out.job.add(call);
        out.agents
            .entry(call.agent_id.clone())
            .or_default()
            .add(call);
        out.steps.entry(call.step.clone()).or_default().add(call);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_add_up_exactly() {
        let mut t = Totals::default();
        let call = |usd| Call {
            timestamp: String::new(),
            agent_id: "a".into(),
            item_id: None,
            step: "map/1".into(),
            attempt: 1,
            command: None,
            exit_code: 0,
            duration_ms: 0,
            num_turns: None,
            is_error: false,
            error: None,
            usage: ClaudeUsage::default(),
            total_cost_usd: Some(usd),
            transcript: None,
        };
        // 0.1 + 0.2 is 0.30000000000000004 in floats.
        t.add(&call(0.1));
        t.add(&call(0.2));
        assert_eq!(t.cost_usd(), "0.3");
        t.add(&call(1.0000001));
        assert_eq!(t.cost_usd(), "1.3000001");
        assert_eq!(t.to_json()["total_cost_usd"], serde_json::json!(1.3000001));
        assert_eq!(call(0.0).step_number(), Some(1));
    }
}

/// One validation of a step (`step_validated`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Validation {
    /// When.
    pub timestamp: String,
    /// The agent, or the phase of a job-level step.
    pub agent_id: String,
    /// The item, for an agent.
    pub item_id: Option<String>,
    /// The step (`map/2`, `session/3`).
    pub step: String,
    /// 1 for the first validation, then one more per `on_incomplete` round.
    pub attempt: u32,
    /// The result's completion percentage.
    pub completion: f64,
    /// The step's threshold.
    pub threshold: f64,
    /// The result's status.
    pub status: String,
    /// Whether it passed.
    pub passed: bool,
}

/// The validations of `log`, oldest first (read from the batches that hold them only).
pub fn validations(log: &EventLog) -> Result<Vec<Validation>, EventError> {
    let mut out = Vec::new();
    typed_events(log, &["step_validated"], false, |timestamp, event| {
        if let MapReduceEvent::StepValidated {
            agent_id,
            item_id,
            step,
            attempt,
            completion,
            threshold,
            status,
            passed,
            ..
        } = event
        {
            out.push(Validation {
                timestamp,
                agent_id,
                item_id,
                step,
                attempt,
                completion,
                threshold,
                status,
                passed,
            });
        }
    })?;
    Ok(out)
}

/// One step's output kept in the store (`step_output`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepLog {
    /// When the step ended.
    pub timestamp: String,
    /// The agent, or the phase of a job-level step.
    pub agent_id: String,
    /// The item, for an agent.
    pub item_id: Option<String>,
    /// The step (`map/2`, `session/3`).
    pub step: String,
    /// The agent's attempt (a session's iteration).
    pub attempt: u32,
    /// 0 unless it failed.
    pub exit_code: i32,
    /// Its size.
    pub bytes: u64,
    /// The object holding it.
    pub log: ObjectId,
}

/// The step outputs of `log`, oldest first (read from the batches that hold them only).
pub fn step_logs(log: &EventLog) -> Result<Vec<StepLog>, EventError> {
    let mut out = Vec::new();
    typed_events(log, &["step_output"], false, |timestamp, event| {
        if let MapReduceEvent::StepOutput {
            agent_id,
            item_id,
            step,
            attempt,
            exit_code,
            bytes,
            log,
            ..
        } = event
        {
            out.push(StepLog {
                timestamp,
                agent_id,
                item_id,
                step,
                attempt,
                exit_code,
                bytes,
                log,
            });
        }
    })?;
    Ok(out)
}
