//! `prodigy gc`: remove unreachable objects and stale temp files.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::commands::fsck::parse_age;
use crate::cli::{Ctx, Exit};
use crate::gc::{self, GcOptions};
use crate::lock::LockOptions;

/// Remove loose objects that no ref or reflog reaches and that are older than the grace
/// period, and temp files as old. Safe while writers run: each holds the home's gc lock
/// shared from its first object write until its ref moves, and gc waits for them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The grace period: unreachable objects younger than this stay, for a writer that
    /// has not referenced them yet (30m, 2h, 7d, or now).
    #[arg(long, value_name = "AGE", default_value = "1h", value_parser = parse_age)]
    pub prune: Duration,
    /// Print what would go, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let mut opts = LockOptions::from_env();
    let diag = ctx.diag.clone();
    opts.on_wait = Some(Arc::new(move |_| {
        diag.note("waiting for writers to finish their changes…");
    }));
    let report = gc::gc(
        &ctx.home,
        &ctx.refs(),
        &opts,
        GcOptions {
            prune: args.prune,
            dry_run: args.dry_run,
        },
    )?;
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(Exit::Success);
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    writeln!(
        ctx.out,
        "{} objects, {} reachable; {verb} {} unreachable ({} bytes) and {} temp files; kept {} younger than the grace period",
        report.objects_before,
        report.reachable,
        report.pruned,
        report.pruned_bytes,
        report.temp_removed,
        report.kept_young
    )?;
    if report.missing > 0 {
        ctx.diag.warning(&format!(
            "{} objects named by refs or reflogs are missing; run `prodigy fsck`",
            report.missing
        ));
    }
    Ok(Exit::Success)
}
