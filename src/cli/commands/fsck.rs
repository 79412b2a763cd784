//! `prodigy fsck`: verify the whole store.

use std::time::Duration;

use crate::cli::{Ctx, Exit};
use crate::fsck::{self, Severity};

/// Verify every object (decompress and re-hash), every ref (it must name a valid object),
/// every reflog and repo record. Each problem is printed as `error <path>: <what>` or
/// `warning <path>: <what>` (warnings are what a crash may leave, such as a reflog line
/// lost between a ref's rename and its reflog append). Temp files left by interrupted
/// writers are listed as `temp <path>`; --remove-temp removes those older than
/// --temp-age. Exits 1 when there is any error.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,

    /// Remove temp files older than --temp-age.
    #[arg(long)]
    pub remove_temp: bool,

    /// How old a temp file must be to be removed (younger ones may belong to a running
    /// writer): a duration such as 30m or 2h, or "now".
    #[arg(long, value_name = "AGE", default_value = "1h", value_parser = parse_age)]
    pub temp_age: Duration,
}

/// Parses a duration such as `30m`, or `now` (zero).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    if s == "now" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (try 30m, 2h, 7d or now)"))
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let refs = ctx.refs();
    let report = fsck::fsck(&ctx.home, &refs)?;
    let removed = if args.remove_temp {
        fsck::remove_temp_files(&ctx.home, &report, args.temp_age)?
    } else {
        Vec::new()
    };
    if args.json {
        let doc = serde_json::json!({
            "objects": report.objects,
            "refs": report.refs,
            "errors": report.errors(),
            "findings": report.findings,
            "temp_files": report.temp_files,
            "removed_temp_files": removed,
        });
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        for f in &report.findings {
            let label = match f.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            writeln!(ctx.out, "{label} {}: {}", f.path.display(), f.message)?;
        }
        for t in &report.temp_files {
            let gone = if removed.contains(&t.path) {
                ", removed"
            } else {
                ""
            };
            writeln!(
                ctx.out,
                "temp {} ({}s old{gone})",
                t.path.display(),
                t.age_secs
            )?;
        }
    }
    let warnings = report.findings.len() - report.errors();
    ctx.diag.note(&format!(
        "checked {} objects and {} refs: {} errors, {} warnings, {} temp files ({} removed)",
        report.objects,
        report.refs,
        report.errors(),
        warnings,
        report.temp_files.len(),
        removed.len()
    ));
    Ok(if report.errors() > 0 {
        Exit::Failure
    } else {
        Exit::Success
    })
}
