//! `prodigy dlq export`: a job's items as JSON or CSV.

use std::io::Write;
use std::path::PathBuf;

use super::queue;
use crate::cli::commands::RepoArg;
use crate::cli::output::{ExportTarget, csv_field};
use crate::cli::{Ctx, Exit};

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON array of whole items, histories included.
    Json,
    /// RFC 4180 CSV, one row per item: item_id, error_type, failure_count, first_attempt,
    /// last_attempt, error_signature, reprocess_eligible, manual_review_required,
    /// last_error, item_data (JSON). A cell a spreadsheet would read as a formula starts
    /// with `'`.
    Csv,
}

/// Export JOB's dead-lettered items to standard output or a file (written atomically).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub job: super::JobArg,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// The format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let job = super::pick_job(ctx, &repo, args.job.get())?;
    let queue = queue(ctx, &repo, &job)?;
    let snapshot = queue.snapshot()?;
    let mut output = ExportTarget::new(args.output.as_ref())?;
    {
        let mut w = output.writer(&mut *ctx.out);
        match args.format {
            Format::Json => w.write_all(b"[")?,
            Format::Csv => writeln!(
                w,
                "item_id,error_type,failure_count,first_attempt,last_attempt,error_signature,reprocess_eligible,manual_review_required,last_error,item_data"
            )?,
        }
        for (n, summary) in snapshot.items.values().enumerate() {
            let item = queue.item(summary)?;
            match args.format {
                Format::Json => {
                    w.write_all(if n == 0 { b"\n" } else { b",\n" })?;
                    serde_json::to_writer_pretty(&mut w, &item)?;
                }
                Format::Csv => {
                    let last = item.failure_history.last();
                    let fields = [
                        item.item_id.clone(),
                        last.map(|f| f.error_type.to_string()).unwrap_or_default(),
                        item.failure_count.to_string(),
                        item.first_attempt.clone(),
                        item.last_attempt.clone(),
                        item.error_signature.clone(),
                        item.reprocess_eligible.to_string(),
                        item.manual_review_required.to_string(),
                        last.map(|f| f.error_message.clone()).unwrap_or_default(),
                        item.item_data.to_string(),
                    ];
                    let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                    writeln!(w, "{}", row.join(","))?;
                }
            }
        }
        if args.format == Format::Json {
            w.write_all(if snapshot.items.is_empty() {
                b"]\n"
            } else {
                b"\n]\n"
            })?;
        }
        w.flush()?;
    }
    output.finish()?;
    Ok(Exit::Success)
}
