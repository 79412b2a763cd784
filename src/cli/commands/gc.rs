//! `prodigy gc`: expire old reflog entries, remove unreachable objects and stale temp
//! files, pack the rest.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::commands::fsck::parse_age;
use crate::cli::{Ctx, Exit};
use crate::config::{Config, parse_expiry};
use crate::gc::{self, GcOptions, GcProgress};
use crate::lock::LockOptions;

/// Drop reflog entries older than the expiry, remove loose objects that no ref or reflog
/// reaches and that are older than the grace period (and temp files as old), and pack the
/// reachable loose objects into objects/pack (merging packs once there are four). Safe
/// while writers run: each holds the home's gc lock shared from its first object write
/// until its ref moves, and gc waits for them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The grace period: unreachable objects younger than this stay, for a writer that
    /// has not referenced them yet (30m, 2h, 7d, or now).
    #[arg(long, value_name = "AGE", default_value = "1h", value_parser = parse_age)]
    pub prune: Duration,
    /// Drop reflog entries older than this first (90d, now, never), so that what only they
    /// name can go. Default: "gc": {"reflog_expire": …} in config.json, else 90d.
    #[arg(long, value_name = "AGE", value_parser = |t: &str| parse_expiry(t).map(Expiry))]
    pub reflog_expire: Option<Expiry>,
    /// Print what would go, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// A reflog expiry from the command line (`None`: never).
#[derive(Debug, Clone, Copy)]
pub struct Expiry(pub Option<Duration>);

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let mut opts = LockOptions::from_env();
    let diag = ctx.diag.clone();
    opts.on_wait = Some(Arc::new(move |_| {
        diag.note("waiting for writers to finish their changes…");
    }));
    let reflog_expire = match args.reflog_expire {
        Some(Expiry(expire)) => expire,
        None => Config::load(&ctx.home)?.gc.reflog_expire,
    };
    let bar = crate::cli::commands::progress::bar(ctx, args.json);
    let progress = bar.clone().map(|bar| {
        Arc::new(move |p: &GcProgress| {
            bar.set_message(p.phase.as_str());
            bar.set_length(p.total);
            bar.set_position(p.done);
        }) as gc::ProgressFn
    });
    let report = gc::gc(
        &ctx.home,
        &ctx.refs(),
        &opts,
        GcOptions {
            prune: args.prune,
            reflog_expire,
            dry_run: args.dry_run,
            progress,
        },
    );
    drop(bar);
    let report = report?;
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
        "{} objects, {} reachable; {verb} {} unreachable ({} bytes), {} temp files and {} reflog entries; kept {} younger than the grace period",
        report.objects_before,
        report.reachable,
        report.pruned,
        report.pruned_bytes,
        report.temp_removed,
        report.reflog_expired,
        report.kept_young
    )?;
    if report.repacked {
        writeln!(
            ctx.out,
            "packed {} objects; {} packs; {} bytes -> {} bytes",
            report.packed, report.packs, report.bytes_before, report.bytes_after
        )?;
    }
    Ok(Exit::Success)
}
