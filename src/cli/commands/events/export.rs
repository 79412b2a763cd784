//! `prodigy events export`: a job's events as JSON Lines, JSON, CSV or Markdown.

use std::io::Write;
use std::path::PathBuf;

use super::open_existing;
use super::show::{FilterArgs, io_error};
use crate::cli::commands::RepoArg;
use crate::cli::output::{ExportTarget, csv_field, markdown_cell, markdown_code_cell};
use crate::cli::{Ctx, Exit};
use crate::events::EventRecord;
use crate::events::query::stream;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One record per line.
    Jsonl,
    /// One JSON array.
    Json,
    /// RFC 4180 CSV: id, timestamp, event_type, agent_id, item_id, correlation_id, writer,
    /// seq, event (the event as JSON). A cell a spreadsheet would read as a formula
    /// starts with `'`.
    Csv,
    /// A Markdown table, its cells' markup characters escaped.
    Markdown,
}

/// Export a job's events, oldest first, to standard output or a file (written atomically).
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
    /// The format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let log = open_existing(ctx, &repo, &args.job)?;
    let filter = args.filter.to_filter()?;
    let mut output = ExportTarget::new(args.output.as_ref())?;
    // A bar on a terminal while a large log is written to a file.
    let bar = args
        .output
        .as_ref()
        .and_then(|_| crate::cli::commands::progress::bar(ctx, false));
    if let Some(bar) = &bar {
        bar.set_message("exporting events");
        bar.set_length(log.totals()?.map_or(0, |t| t.total.count));
    }
    {
        let mut w = output.writer(&mut *ctx.out);
        match args.format {
            Format::Json => w.write_all(b"[")?,
            Format::Csv => writeln!(
                w,
                "id,timestamp,event_type,agent_id,item_id,correlation_id,writer,seq,event"
            )?,
            Format::Markdown => writeln!(
                w,
                "| time | type | agent | item | event |\n|---|---|---|---|---|"
            )?,
            Format::Jsonl => {}
        }
        let mut first = true;
        let parse = matches!(args.format, Format::Csv | Format::Markdown);
        stream(&log, &filter, false, parse, |line| {
            let result = match args.format {
                Format::Jsonl => w.write_all(line.json).and_then(|_| w.write_all(b"\n")),
                Format::Json => {
                    let sep: &[u8] = if first { b"\n" } else { b",\n" };
                    w.write_all(sep).and_then(|_| w.write_all(line.json))
                }
                Format::Csv => line
                    .record
                    .as_ref()
                    .map_or(Ok(()), |r| writeln!(w, "{}", csv_row(r))),
                Format::Markdown => line.record.as_ref().map_or(Ok(()), |r| {
                    writeln!(
                        w,
                        "| {} | {} | {} | {} | {} |",
                        markdown_cell(&r.timestamp),
                        markdown_cell(r.event_type()),
                        markdown_cell(r.agent_id().unwrap_or("")),
                        markdown_cell(r.item_id().unwrap_or("")),
                        markdown_code_cell(&r.event.to_string())
                    )
                }),
            };
            first = false;
            result.map_err(io_error)?;
            if let Some(bar) = &bar {
                bar.inc(1);
            }
            Ok(true)
        })?;
        if args.format == Format::Json {
            w.write_all(if first { b"]\n" } else { b"\n]\n" })?;
        }
        w.flush()?;
    }
    output.finish()?;
    Ok(Exit::Success)
}

fn csv_row(r: &EventRecord) -> String {
    [
        r.id.clone(),
        r.timestamp.clone(),
        r.event_type().to_owned(),
        r.agent_id().unwrap_or("").to_owned(),
        r.item_id().unwrap_or("").to_owned(),
        r.correlation_id.clone().unwrap_or_default(),
        r.writer.clone(),
        r.seq.to_string(),
        r.event.to_string(),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}
