//! `prodigy events search`: a regular expression over records or one field.

use regex::Regex;
use serde_json::Value;

use super::list_jobs_warning;
use super::show::io_error;
use super::{human_line, open_existing};
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::events::query::stream;
use crate::events::{EventLog, Filter};

/// Search events with a regular expression: over each record's JSON, or over one field
/// given as a dotted path (`event.error`, `metadata.host`, `event_type`). Searches one job,
/// or every job of the repository. Like grep: exits 1 when nothing matches, 2 on an error
/// (an unknown job, a bad pattern).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The regular expression (Rust regex syntax).
    pub pattern: String,
    /// The job (default: every job of the repository).
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: Option<String>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Match only this field (a dotted path into the record).
    #[arg(long, value_name = "FIELD")]
    pub field: Option<String>,
    /// Print JSON Lines.
    #[arg(long)]
    pub json: bool,
}

/// The value at a dotted path; `event_type`-style short names also look inside `event`.
fn field<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    let walk = |root: &'a Value| path.split('.').try_fold(root, |v, key| v.get(key));
    walk(record).or_else(|| {
        record
            .get("event")
            .and_then(|e| path.split('.').try_fold(e, |v, key| v.get(key)))
    })
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let regex = Regex::new(&args.pattern).map_err(|e| {
        // The regex crate draws its errors over several lines; keep the verdict only.
        let text = e.to_string();
        let reason = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        crate::cli::UsageError(format!(
            "invalid pattern {:?}: {}",
            args.pattern,
            reason.trim_start_matches("error: ")
        ))
    })?;
    let repo = args.repo.resolve(ctx)?;
    let logs: Vec<EventLog> = match &args.job {
        // Like grep: an error (an unknown job) exits 2, no match 1.
        Some(job) => vec![
            open_existing(ctx, &repo, job)
                .map_err(|e| crate::cli::UsageError(crate::error_line(e.as_ref())))?,
        ],
        None => list_jobs_warning(ctx, Some(&repo))?
            .0
            .into_iter()
            .map(|j| EventLog::new(ctx.refs(), &j.repo, &j.job))
            .collect::<Result<_, _>>()?,
    };
    let many = logs.len() > 1;
    let mut found = 0u64;
    let out = &mut *ctx.out;
    for log in &logs {
        stream(log, &Filter::default(), false, true, |line| {
            let Some(record) = &line.record else {
                return Ok(true);
            };
            let hit = match &args.field {
                None => std::str::from_utf8(line.json).is_ok_and(|t| regex.is_match(t)),
                Some(path) => {
                    let value = serde_json::to_value(record)
                        .map_err(|e| crate::events::EventError::BadRecord(e.to_string()))?;
                    match field(&value, path) {
                        Some(Value::String(s)) => regex.is_match(s),
                        Some(other) => regex.is_match(&other.to_string()),
                        None => false,
                    }
                }
            };
            if hit {
                found += 1;
                let text = if args.json {
                    String::from_utf8_lossy(line.json).into_owned()
                } else if many {
                    format!("{}  {}", log.name().job(), human_line(record))
                } else {
                    human_line(record)
                };
                writeln!(out, "{text}").map_err(io_error)?;
            }
            Ok(true)
        })?;
    }
    if found == 0 {
        ctx.diag.note("no event matches");
        return Ok(Exit::Failure);
    }
    ctx.diag.verbose(&format!("{found} matching events"));
    Ok(Exit::Success)
}
