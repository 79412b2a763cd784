//! `prodigy clean worktrees|logs|events|dlq|state`: the original's spellings for cleaning
//! the store, each the command of ours that does it.

use std::time::Duration;

use crate::cli::commands::RepoArg;
use crate::cli::{Ctx, Exit};

/// Clean what the store keeps, by kind: the original's `clean` commands, each one of
/// ours (`worktree clean`, `events clean`, `dlq purge`, `jobs rm`).
#[derive(Debug, clap::Subcommand)]
pub enum CleanCommand {
    /// `prodigy worktree clean` (finished jobs' worktrees, failed agents' once resolved).
    Worktrees(Common),
    /// The step logs of finished jobs' worktree directories (what the store keeps stays).
    Logs(Common),
    /// `prodigy events clean --older-than AGE` on every job (default 30d).
    Events(Common),
    /// `prodigy dlq purge --older-than AGE` on every job (default 30d).
    Dlq(Common),
    /// Delete complete jobs (`prodigy jobs rm`): their state, events and worktrees.
    State(Common),
}

/// What every `clean` subcommand takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only what is older than this (events, dlq; default 30d).
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Say what would go; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask.
    #[arg(short = 'f', long = "force", alias = "yes")]
    pub yes: bool,
}

/// Runs a clean subcommand.
pub fn exec(cmd: CleanCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let month = Duration::from_secs(30 * 86_400);
    match cmd {
        CleanCommand::Worktrees(c) => crate::cli::commands::worktree::exec(
            crate::cli::commands::worktree::WorktreeCommand::Clean(
                crate::cli::commands::worktree::CleanArgs {
                    repo: c.repo,
                    job: None,
                    all: false,
                    dry_run: c.dry_run,
                    yes: c.yes,
                },
            ),
            ctx,
        ),
        CleanCommand::Logs(c) => logs(ctx, &c),
        CleanCommand::Events(c) => {
            let age = humantime::format_duration(c.older_than.unwrap_or(month)).to_string();
            let mut args = vec!["prodigy", "events", "clean", "--all-jobs", "--older-than"];
            args.push(&age);
            if c.dry_run {
                args.push("--dry-run");
            }
            let repo;
            if let Some(r) = &c.repo.repo {
                repo = r.clone();
                args.extend(["--repo", &repo]);
            }
            let parsed = <crate::cli::Cli as clap::Parser>::try_parse_from(args)?;
            crate::cli::commands::run(parsed.command, ctx)
        }
        CleanCommand::Dlq(c) => crate::cli::commands::dlq::purge::exec(
            crate::cli::commands::dlq::purge::Args {
                older_than: c.older_than.unwrap_or(month),
                job: None,
                repo: c.repo,
                yes: c.yes,
                dry_run: c.dry_run,
            },
            ctx,
        ),
        CleanCommand::State(c) => {
            crate::cli::commands::checkpoints::remove_complete(ctx, &c.repo, c.yes, false)
        }
    }
}

/// Removes the `logs/` of complete jobs' worktree directories (the store keeps each
/// step's output with the job's events).
fn logs(ctx: &mut Ctx<'_>, c: &Common) -> anyhow::Result<Exit> {
    let repo = c.repo.resolve(ctx)?;
    let states = crate::state::JobStateManager::new(ctx.refs(), &repo)?;
    let mut found = Vec::new();
    let jobs = states.list_readable(|job, e| {
        super::skipping_job(ctx, &repo, job, &crate::error_line(&e));
    })?;
    for (job, _, head) in jobs {
        let dir = ctx
            .home
            .root()
            .join("worktrees")
            .join(&repo)
            .join(&job)
            .join("logs");
        if head.phase == crate::state::Phase::Complete && dir.is_dir() {
            found.push(dir);
        }
    }
    for d in &found {
        writeln!(ctx.out, "{}", d.display())?;
    }
    if c.dry_run || found.is_empty() {
        ctx.diag.note(&format!(
            "{} log directories of complete jobs{}",
            found.len(),
            if c.dry_run { " would go" } else { "" }
        ));
        return Ok(Exit::Success);
    }
    if !c.yes {
        ctx.diag.note(&format!(
            "remove these {} log directories? [y/N]",
            found.len()
        ));
        let answer = ctx.read_line()?.unwrap_or_default();
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(
                crate::cli::UsageError("nothing removed (answer y, or give -f)".into()).into(),
            );
        }
    }
    for d in &found {
        std::fs::remove_dir_all(d).map_err(|e| crate::fsutil::FsError::new("remove", d, e))?;
    }
    Ok(Exit::Success)
}
