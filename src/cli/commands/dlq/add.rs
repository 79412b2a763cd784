//! `prodigy dlq add`: record a failure of an item.

use super::queue;
use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit, UsageError};
use crate::dlq::Failure;

/// Record a failure of ITEM in JOB's dead-letter queue. A second failure of the same item
/// appends to its history. The error type is classified from the message and exit code
/// unless --type gives it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), long, value_name = "JOB")]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// The item's id.
    #[arg(long, value_name = "ID")]
    pub item: String,
    /// The item's data, as JSON.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// The error message.
    #[arg(long, value_name = "MESSAGE")]
    pub error: String,
    /// The failing command's exit code.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub exit_code: Option<i32>,
    /// The agent that ran it.
    #[arg(long, value_name = "AGENT")]
    pub agent: Option<String>,
    /// The step that failed.
    #[arg(long, value_name = "STEP")]
    pub step: Option<String>,
    /// How long the attempt ran, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub duration_ms: Option<u64>,
    /// Where the attempt's logs are.
    #[arg(long, value_name = "PATH")]
    pub log: Option<String>,
    /// Print the item as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let data = match &args.data {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| UsageError(format!("--data is not JSON: {e}")))?,
        None => serde_json::Value::Null,
    };
    let failure = Failure {
        error_message: args.error,
        exit_code: args.exit_code,
        agent_id: args.agent,
        step: args.step,
        duration_ms: args.duration_ms,
        log_location: args.log,
        ..Failure::default()
    };
    let item = queue(ctx, &repo, &args.job)?.add(&args.item, data, failure)?;
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&item)?)?;
    } else {
        let last = item
            .failure_history
            .last()
            .map(|f| f.error_type.to_string())
            .unwrap_or_default();
        writeln!(
            ctx.out,
            "{}: failure {} ({last}): {}",
            item.item_id, item.failure_count, item.error_signature
        )?;
    }
    Ok(Exit::Success)
}
