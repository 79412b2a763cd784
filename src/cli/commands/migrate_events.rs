//! `prodigy migrate-events`: import the original tool's repo-local `.prodigy/`.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};
use crate::migrate::{self, Options, Report};

/// Import the original tool's repo-local .prodigy/ (event logs, DLQ items, checkpoints)
/// into the store, under the repository's name, per job.
///
/// PATH is the repository (or worktree) whose .prodigy/ to read; default: the one holding
/// the current directory. Events keep their ids and timestamps (cut to microseconds);
/// d_l_q_* tags become dlq_*, [secs, nanos] durations become duration_ms. Every line that
/// cannot be imported is reported with its file, line and reason, and the rest is imported.
/// A second run imports nothing and writes nothing. Everything imported is read back from
/// the store before --remove-local deletes the files that were imported (or are empty);
/// files it does not know stay. Exits 1 when anything was refused.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository whose .prodigy/ to import (default: the current one).
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Read and report only: write nothing, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After a verified import, delete the local files that were imported (or are empty),
    /// then the directories left empty.
    #[arg(long)]
    pub remove_local: bool,
    /// With --remove-local: remove the imported files even when some were refused (those
    /// stay).
    #[arg(long, requires = "remove_local")]
    pub force: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let path = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = migrate::legacy_root(&path)?;
    let repo = match &args.repo.repo {
        Some(_) => args.repo.resolve(ctx)?,
        None => crate::repo::resolve_repo_name(&ctx.home, &root)?,
    };
    let opts = Options {
        dry_run: args.dry_run,
        remove_local: args.remove_local,
        force: args.force,
    };
    // Whoever runs this knows about the legacy data: no warning for it later.
    if !args.dry_run {
        migrate::first_warning(&ctx.home, &root);
    }
    let bar = crate::cli::commands::progress::bar(ctx, args.json);
    let show = |p: migrate::Progress| {
        if let Some(bar) = &bar {
            bar.set_message(p.phase);
            bar.set_length(p.total);
            bar.set_position(p.done);
        }
    };
    let report = migrate::migrate_with_progress(&ctx.refs(), &repo, &root, opts, &show)
        .with_context(|| format!("cannot migrate '{}'", root.join(".prodigy").display()))?;
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_report(&report, ctx)?;
    }
    if report.removal_refused {
        ctx.diag.error(&format!(
            "--remove-local refused: {} lines or files were not imported (listed above); nothing was removed",
            report.rejected_total()
        ));
        ctx.diag.hint(
            "fix or delete them and run again, or pass --force to remove only what was imported",
        );
        return Ok(Exit::Failure);
    }
    if report.rejected_total() > 0 {
        ctx.diag.warning(&format!(
            "{} lines or files were not imported (listed above); the rest was",
            report.rejected_total()
        ));
        return Ok(Exit::Failure);
    }
    Ok(Exit::Success)
}

fn print_report(r: &Report, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    let out = &mut *ctx.out;
    if r.is_empty() {
        writeln!(
            out,
            "nothing to migrate: no legacy data in '{}'",
            r.source.display()
        )?;
        return Ok(());
    }
    let verb = if r.dry_run {
        "would import"
    } else {
        "imported"
    };
    writeln!(out, "{} into repo {}", r.source.display(), r.repo)?;
    let e = &r.events;
    writeln!(
        out,
        "events: {verb} {}, already present {}, duplicates skipped {}, blank lines {}, refused {} ({} records in {} files)",
        e.imported,
        e.already_present,
        e.duplicates_skipped,
        e.blank_lines_skipped,
        e.rejected_total,
        e.records_read,
        e.files.len()
    )?;
    per_job(out, verb, &e.per_job)?;
    writeln!(
        out,
        "dlq items: {verb} {}, already present {}, refused {}",
        r.dlq.imported, r.dlq.already_present, r.dlq.rejected_total
    )?;
    per_job(out, verb, &r.dlq.per_job)?;
    writeln!(
        out,
        "checkpoints: {verb} {}, already present {}, refused {}",
        r.checkpoints.imported, r.checkpoints.already_present, r.checkpoints.rejected_total
    )?;
    for (job, versions) in &r.checkpoints.versions_per_job {
        let list: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
        writeln!(out, "  {job}: {}", list.join(", "))?;
    }
    if !r.rejected.is_empty() {
        writeln!(out, "refused:")?;
        for x in &r.rejected {
            match x.line {
                Some(line) => writeln!(
                    out,
                    "  {}:{line}: {}: {}",
                    x.path,
                    x.reason.as_str(),
                    x.detail
                )?,
                None => writeln!(out, "  {}: {}: {}", x.path, x.reason.as_str(), x.detail)?,
            }
        }
    }
    if !r.unknown.is_empty() {
        writeln!(out, "left alone (not legacy data this version knows):")?;
        for u in &r.unknown {
            writeln!(out, "  {u}")?;
        }
    }
    if r.verified {
        writeln!(
            out,
            "verified: everything imported reads back from the store"
        )?;
    }
    if !r.removed.is_empty() {
        let verb = if r.dry_run { "would remove" } else { "removed" };
        writeln!(
            out,
            "{verb} {} local files and directories:",
            r.removed.len()
        )?;
        for p in &r.removed {
            writeln!(out, "  {p}")?;
        }
    }
    Ok(())
}

fn per_job(
    out: &mut (dyn std::io::Write + Send),
    verb: &str,
    jobs: &std::collections::BTreeMap<String, migrate::JobCount>,
) -> std::io::Result<()> {
    for (job, c) in jobs {
        writeln!(
            out,
            "  {job}: {verb} {}, already present {}",
            c.imported, c.already_present
        )?;
    }
    Ok(())
}
