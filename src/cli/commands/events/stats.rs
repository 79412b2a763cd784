//! `prodigy events stats`: counts, outcomes and durations from log nodes, and a job's
//! Claude tokens and cost.

use std::collections::BTreeMap;

use serde::Serialize;

use super::list_jobs_warning;
use super::open_existing;
use crate::cli::commands::RepoArg;
use crate::cli::output::bar;
use crate::cli::{Ctx, Exit};
use crate::events::{JobEvents, Summary};

/// Cells of a count's bar.
const BAR: usize = 24;

/// How to group the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// By event type.
    #[value(alias = "event_type")]
    Type,
    /// By agent.
    #[value(alias = "agent_id")]
    Agent,
    /// By job.
    #[value(alias = "job_id")]
    Job,
}

/// Count the events of one job (or of every job of the repository): by type, agent or
/// job, with agent and job outcomes and the durations events reported. Reads the log
/// nodes' summaries only, and for one JOB with Claude calls the batches that hold them
/// (tokens and cost per job, agent and step).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job (default: every job of the repository).
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: Option<String>,
    /// The job, as the original spells it.
    #[arg(long = "job-id", value_name = "JOB", conflicts_with = "job", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job_id: Option<String>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Every repository (with no JOB).
    #[arg(long, conflicts_with_all = ["repo", "job"])]
    pub all_repos: bool,
    /// How to group the counts.
    #[arg(long, value_enum, default_value_t = GroupBy::Type)]
    pub group_by: GroupBy,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    jobs: usize,
    total: Summary,
    agents_completed: u64,
    agents_failed: u64,
    jobs_completed: u64,
    jobs_failed: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    by_agent: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    by_job: Vec<JobEvents>,
    /// One job's Claude calls: tokens and cost per job, agent and step.
    #[serde(skip_serializing_if = "Option::is_none")]
    claude: Option<serde_json::Value>,
}

fn count(s: &Summary, t: &str) -> u64 {
    s.types.get(t).copied().unwrap_or(0)
}

/// Runs the command.
pub fn exec(mut args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    args.job = args.job.or(args.job_id.take());
    let repo = if args.all_repos {
        None
    } else {
        Some(args.repo.resolve(ctx)?)
    };
    let mut exit = Exit::Success;
    let jobs: Vec<JobEvents> = match (&args.job, &repo) {
        (Some(job), Some(repo)) => {
            let log = open_existing(ctx, repo, job)?;
            let totals = log
                .totals()?
                .ok_or_else(|| crate::events::EventError::NoSuchJob {
                    repo: repo.clone(),
                    job: job.clone(),
                })?;
            vec![JobEvents {
                repo: repo.clone(),
                job: job.clone(),
                total: totals.total,
                batches: totals.batches,
            }]
        }
        _ => {
            let (jobs, skipped) = list_jobs_warning(ctx, repo.as_deref())?;
            exit = if skipped {
                Exit::Failure
            } else {
                Exit::Success
            };
            jobs
        }
    };
    let mut total = Summary::default();
    for j in &jobs {
        total.merge(&j.total);
    }
    let mut by_agent = BTreeMap::new();
    if args.group_by == GroupBy::Agent {
        for j in &jobs {
            let log = crate::events::EventLog::new(ctx.refs(), &j.repo, &j.job)?;
            for (chain, _) in log.chains()? {
                for (_, node) in chain.nodes()? {
                    for (agent, n) in node.agents {
                        *by_agent.entry(agent).or_default() += n;
                    }
                }
            }
        }
    }
    let calls = match (&args.job, &repo) {
        (Some(job), Some(repo)) => crate::cli::commands::jobs::claude_calls(ctx, repo, job)?,
        _ => None,
    };
    let report = Report {
        claude: calls.as_ref().map(|c| c.totals_json()),
        jobs: jobs.len(),
        agents_completed: count(&total, "agent_completed"),
        agents_failed: count(&total, "agent_failed"),
        jobs_completed: count(&total, "job_completed"),
        jobs_failed: count(&total, "job_failed"),
        total,
        by_agent,
        by_job: if args.group_by == GroupBy::Job {
            jobs
        } else {
            Vec::new()
        },
    };
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(exit);
    }
    let t = &report.total;
    let out = &mut *ctx.out;
    writeln!(
        out,
        "{} events in {} job{}, {} to {}",
        t.count,
        report.jobs,
        if report.jobs == 1 { "" } else { "s" },
        t.first_ts.as_deref().unwrap_or("-"),
        t.last_ts.as_deref().unwrap_or("-")
    )?;
    let finished = report.agents_completed + report.agents_failed;
    if finished > 0 {
        writeln!(
            out,
            "agents: {} completed, {} failed ({:.1}% succeeded)",
            report.agents_completed,
            report.agents_failed,
            100.0 * report.agents_completed as f64 / finished as f64
        )?;
    }
    if report.jobs_completed + report.jobs_failed > 0 {
        writeln!(
            out,
            "jobs: {} completed, {} failed",
            report.jobs_completed, report.jobs_failed
        )?;
    }
    match args.group_by {
        GroupBy::Type => {
            writeln!(out, "\n{:<26} {:>10}", "TYPE", "EVENTS")?;
            let mut types: Vec<_> = t.types.iter().collect();
            types.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let max = types.first().map_or(0, |(_, n)| **n);
            for (name, n) in types {
                writeln!(out, "{name:<26} {n:>10}  {}", bar(*n, max, BAR))?;
            }
        }
        GroupBy::Agent => {
            writeln!(out, "\n{:<26} {:>10}", "AGENT", "EVENTS")?;
            let max = report.by_agent.values().copied().max().unwrap_or(0);
            for (agent, n) in &report.by_agent {
                writeln!(out, "{agent:<26} {n:>10}  {}", bar(*n, max, BAR))?;
            }
        }
        GroupBy::Job => {
            writeln!(
                out,
                "\n{:<28} {:>10} {:>10} {:>10}",
                "JOB", "EVENTS", "COMPLETED", "FAILED"
            )?;
            for j in &report.by_job {
                writeln!(
                    out,
                    "{:<28} {:>10} {:>10} {:>10}",
                    j.job,
                    j.total.count,
                    count(&j.total, "agent_completed"),
                    count(&j.total, "agent_failed")
                )?;
            }
        }
    }
    if let Some(calls) = &calls {
        writeln!(out)?;
        crate::cli::commands::jobs::write_claude_totals(out, calls)?;
    }
    if !t.durations.is_empty() {
        writeln!(
            out,
            "\n{:<26} {:>8} {:>12} {:>12} {:>12}",
            "DURATIONS", "COUNT", "AVG", "MIN", "MAX"
        )?;
        for (name, d) in &t.durations {
            let avg = d.total_ms.checked_div(d.count).unwrap_or(0);
            writeln!(
                out,
                "{name:<26} {:>8} {:>12} {:>12} {:>12}",
                d.count,
                ms(avg),
                ms(d.min_ms),
                ms(d.max_ms)
            )?;
        }
    }
    Ok(exit)
}

fn ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}
