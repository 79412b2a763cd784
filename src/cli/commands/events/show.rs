//! `prodigy events show`: a job's events, oldest first, streamed.

use std::collections::VecDeque;

use super::{human_line, open_existing};
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::events::Filter;
use crate::events::query::{parse_time_bound, stream_chains};

/// Show a job's events, oldest first: every writer's events merged by time (each writer's
/// in the order it logged them). Filters combine with AND; --type may be repeated.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Show only the newest N matching events.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print JSON Lines (one record per line).
    #[arg(long)]
    pub json: bool,
    /// Print what can be read of a damaged log, naming what cannot, instead of failing.
    #[arg(long)]
    pub best_effort: bool,
    /// Also the events `events clean --archive` moved to the job's archive (first: they
    /// are older).
    #[arg(long)]
    pub archived: bool,
}

/// Record filters shared by show, search and export.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only events of this agent.
    #[arg(long, value_name = "AGENT")]
    pub agent: Option<String>,
    /// Only events at or after this time: RFC 3339, or a duration ago (10m, 2h, 3d).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub since: Option<String>,
    /// Only events at or before this time: RFC 3339, or a duration ago.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub until: Option<String>,
    /// Only events with this correlation id.
    #[arg(long, value_name = "ID")]
    pub correlation: Option<String>,
}

/// A time bound checked as the command line is read (a bad one is a usage error, exit 2).
fn time_arg(text: &str) -> Result<String, String> {
    parse_time_bound(text).map(|_| text.to_owned())
}

impl FilterArgs {
    /// The library filter, with times parsed.
    pub fn to_filter(&self) -> anyhow::Result<Filter> {
        let time = |t: &Option<String>| {
            t.as_deref()
                .map(parse_time_bound)
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        Ok(Filter {
            types: self.types.clone(),
            agent: self.agent.clone(),
            since: time(&self.since)?,
            until: time(&self.until)?,
            correlation: self.correlation.clone(),
            item: None,
        })
    }
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    // Each part read as one: the archive (with --archived), then the live log's chains.
    let live = open_existing(ctx, &repo, &args.job).or_else(|e| {
        let log = crate::events::EventLog::new(ctx.refs(), &repo, &args.job)?;
        match args.archived && log.refs().read(log.archive()?.name())?.is_some() {
            true => Ok(log),
            false => Err(e),
        }
    })?;
    let mut parts = Vec::new();
    if args.archived {
        let archive = live.archive()?;
        if let Some(head) = archive.refs().read(archive.name())? {
            parts.push(vec![(archive, Some(head), None)]);
        }
    }
    parts.push(
        live.chains()?
            .into_iter()
            .map(|(chain, head)| (chain, Some(head), None))
            .collect(),
    );
    let filter = args.filter.to_filter()?;
    let mut newest: VecDeque<Vec<u8>> = VecDeque::new();
    let out = &mut *ctx.out;
    let mut skipped = Vec::new();
    for chains in parts {
        skipped.extend(stream_chains(
            chains,
            &filter,
            args.best_effort,
            !args.json,
            |line| {
                if args.limit.is_none() && line.record.is_none() {
                    // Copied as stored, no allocation per line.
                    return out
                        .write_all(line.json)
                        .and_then(|_| out.write_all(b"\n"))
                        .map(|_| true)
                        .map_err(io_error);
                }
                let text = match &line.record {
                    Some(r) if !args.json => human_line(r).into_bytes(),
                    _ => line.json.to_vec(),
                };
                match args.limit {
                    Some(limit) => {
                        if newest.len() == limit {
                            newest.pop_front();
                        }
                        if limit > 0 {
                            newest.push_back(text);
                        }
                    }
                    None => {
                        out.write_all(&text)
                            .and_then(|_| out.write_all(b"\n"))
                            .map_err(io_error)?;
                    }
                }
                Ok(true)
            },
        )?);
    }
    for text in newest {
        out.write_all(&text)?;
        out.write_all(b"\n")?;
    }
    for e in &skipped {
        ctx.diag.warning(&crate::error_line(e));
    }
    Ok(if skipped.is_empty() {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// Carries an output error through the event reader.
pub fn io_error(e: std::io::Error) -> crate::events::EventError {
    crate::events::EventError::Output(e)
}
