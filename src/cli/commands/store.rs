//! `prodigy store push JOB` / `store pull JOB`: copy a job — its refs and every object
//! they reach — between the local home and a remote store (`crate::sync`).

use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit, UsageError};
use crate::lock::LockOptions;
use crate::store::refs::RefStore;
use crate::sync::{self, RefOutcome};

/// The two directions.
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Copy a job from the local home to the remote store.
    Push(Args),
    /// Copy a job from the remote store to the local home.
    Pull(Args),
}

/// Options of both.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job id.
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), value_name = "JOB")]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Replace a destination ref that is not an ancestor of the source's (both sides
    /// changed, or a log was rewritten by retention).
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `store push` or `store pull`.
pub fn exec(cmd: StoreCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let (push, args) = match cmd {
        StoreCommand::Push(args) => (true, args),
        StoreCommand::Pull(args) => (false, args),
    };
    crate::names::validate("job id", &args.job)?;
    let Some(url) = ctx.home.store().map(str::to_owned) else {
        return Err(UsageError(
            "no remote store is chosen: give --store s3://bucket/prefix, or set PRODIGY_STORE"
                .into(),
        )
        .into());
    };
    let repo = args.repo.resolve(ctx)?;
    let local = RefStore::new(&ctx.home.clone().with_store(None), LockOptions::from_env());
    let remote = ctx.refs();
    let local_name = format!("the local home '{}'", ctx.home.root().display());
    let (from, to, from_name) = if push {
        (&local, &remote, local_name.as_str())
    } else {
        (&remote, &local, url.as_str())
    };
    let report = sync::copy_job(from, to, from_name, &repo, &args.job, args.force)?;
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(Exit::Success);
    }
    for (name, id, outcome) in &report.refs {
        let what = match outcome {
            RefOutcome::UpToDate => "up to date",
            RefOutcome::Created => "created",
            RefOutcome::FastForward => "fast-forward",
            RefOutcome::Forced => "forced",
        };
        writeln!(ctx.out, "{name} {id} {what}")?;
    }
    writeln!(
        ctx.out,
        "{} {} objects of {}, {} already there",
        if push { "pushed" } else { "pulled" },
        report.copied,
        report.objects,
        report.objects - report.copied
    )?;
    Ok(Exit::Success)
}
