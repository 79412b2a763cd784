//! `prodigy worktree ls|clean|merge`: the worktrees of a repository's jobs, under the
//! store's `worktrees/<repo>/`.

use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit, UsageError};
use crate::runner::cleanup::{self, CleanOptions, WorktreeInfo};

/// The worktrees of the repository's jobs and sessions: list them, clean those nothing
/// needs, merge a job's result into the current branch.
#[derive(Debug, clap::Subcommand)]
pub enum WorktreeCommand {
    /// List them: job, kind, item, state, size, path, branch.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove the worktrees of finished jobs, and of failed agents whose items are
    /// resolved (out of the dead-letter queue); never a running job's, nor a failed
    /// agent's while its item is in the queue (unless --all or --job).
    Clean(CleanArgs),
    /// Merge a job's result (its branch, prodigy/<job>) into the branch checked out here.
    Merge(MergeArgs),
}

/// `worktree ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `worktree clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only this job's worktrees (all of them, unless it runs).
    #[arg(long, alias = "job-id", value_name = "JOB", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: Option<String>,
    /// Every worktree of every job that does not run (interrupted ones too: `prodigy
    /// resume` makes them again; a failed agent's uncommitted work goes with it).
    #[arg(short, long)]
    pub all: bool,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask.
    #[arg(short = 'y', long, alias = "force", short_alias = 'f')]
    pub yes: bool,
}

/// `worktree merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The job (or session).
    #[arg(value_name = "JOB", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids())]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Merge a job that is not complete (what its branch holds so far).
    #[arg(long)]
    pub force: bool,
}

/// Runs a worktree subcommand.
pub fn exec(cmd: WorktreeCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    match cmd {
        WorktreeCommand::Ls(args) => ls(args, ctx),
        WorktreeCommand::Clean(args) => clean(args, ctx),
        WorktreeCommand::Merge(args) => merge(args, ctx),
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

fn row(w: &WorktreeInfo) -> String {
    format!(
        "{:<30} {:<8} {:<18} {:<14} {:>7}  {}{}",
        w.job,
        w.kind,
        w.item.as_deref().unwrap_or("-"),
        w.state,
        human(w.bytes),
        w.path.display(),
        w.branch
            .as_deref()
            .map(|b| format!("  ({b})"))
            .unwrap_or_default()
    )
}

fn ls(args: LsArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let list = cleanup::list(&ctx.home, &ctx.refs(), &repo)?;
    if args.json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(Exit::Success);
    }
    if list.is_empty() {
        ctx.diag.note(&format!("no job worktrees of repo {repo}"));
        return Ok(Exit::Success);
    }
    writeln!(
        ctx.out,
        "{:<30} {:<8} {:<18} {:<14} {:>7}  PATH",
        "JOB", "KIND", "ITEM", "STATE", "SIZE"
    )?;
    for w in &list {
        writeln!(ctx.out, "{}", row(w))?;
    }
    Ok(Exit::Success)
}

fn clean(args: CleanArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let mut opts = CleanOptions {
        job: args.job.clone(),
        all: args.all,
        dry_run: true,
    };
    let refs = ctx.refs();
    let plan = cleanup::clean(&ctx.home, &refs, &repo, &opts)?;
    for job in &plan.running {
        ctx.diag
            .note(&format!("job {job} runs now: its worktrees are left alone"));
    }
    if plan.removed.is_empty() {
        ctx.diag.note("no worktree to remove");
        return Ok(Exit::Success);
    }
    for w in &plan.removed {
        writeln!(ctx.out, "{}", row(w))?;
    }
    let total: u64 = plan.removed.iter().map(|w| w.bytes).sum();
    if args.dry_run {
        ctx.diag.note(&format!(
            "dry run: {} worktrees ({}) would be removed",
            plan.removed.len(),
            human(total)
        ));
        return Ok(Exit::Success);
    }
    if !args.yes {
        ctx.diag.note(&format!(
            "remove these {} worktrees ({})? [y/N]",
            plan.removed.len(),
            human(total)
        ));
        let answer = ctx.read_line()?.unwrap_or_default();
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(UsageError("nothing removed (answer y, or give -y)".into()).into());
        }
    }
    opts.dry_run = false;
    let done = cleanup::clean(&ctx.home, &refs, &repo, &opts)?;
    ctx.diag.note(&format!(
        "removed {} worktrees ({}); git worktree prune done",
        done.removed.len(),
        human(done.removed.iter().map(|w| w.bytes).sum())
    ));
    Ok(Exit::Success)
}

fn merge(args: MergeArgs, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let repo = args.repo.resolve(ctx)?;
    let dir = std::env::current_dir()?;
    let said = cleanup::merge_result(&ctx.refs(), &repo, &args.job, &dir, args.force)?;
    for line in said.lines() {
        ctx.diag.note(line);
    }
    ctx.diag.hint(&format!(
        "its worktrees can go now: `prodigy worktree clean --job {}`",
        args.job
    ));
    Ok(Exit::Success)
}
