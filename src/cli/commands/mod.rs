//! One module per command, each with its clap `Args` and an `exec`.

pub mod cat_object;
pub mod checkpoints;
pub mod clean;
pub mod completions;
pub mod dlq;
pub mod events;
pub mod fsck;
pub mod gc;
pub mod hash_object;
pub mod jobs;
pub mod logs;
pub mod migrate_events;
pub mod progress;
pub mod refs;
pub mod repo_name;
pub mod resume;
pub mod run;
pub mod sessions;
pub mod store;
pub mod worktree;

use anyhow::Context;

use super::{Command, Ctx, Exit};

/// Runs one parsed command.
pub fn run(command: Command, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    match command {
        Command::HashObject(args) => hash_object::exec(args, ctx),
        Command::CatObject(args) => cat_object::exec(args, ctx),
        Command::Ref(cmd) => refs::exec(cmd, ctx),
        Command::Events(cmd) => events::exec(cmd, ctx),
        Command::Dlq(cmd) => dlq::exec(cmd, ctx),
        Command::Fsck(args) => fsck::exec(args, ctx),
        Command::Gc(args) => gc::exec(args, ctx),
        Command::Run(args) => run::exec(args, ctx),
        Command::Resume(args) => resume::exec(args, ctx),
        Command::Jobs(args) => jobs::exec(args, ctx),
        Command::Logs(args) => logs::exec(args, ctx),
        Command::MigrateEvents(args) => migrate_events::exec(args, ctx),
        Command::RepoName(args) => repo_name::exec(args, ctx),
        Command::Store(cmd) => store::exec(cmd, ctx),
        Command::Completions(args) => completions::exec(args, ctx),
        Command::Worktree(cmd) => worktree::exec(cmd, ctx),
        Command::Checkpoints(cmd) => checkpoints::exec(cmd, ctx),
        Command::Sessions(cmd) => sessions::exec(cmd, ctx),
        Command::Clean(cmd) => clean::exec(cmd, ctx),
    }
}

/// The `--repo` option shared by the `events` and `dlq` subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct RepoArg {
    /// The repo name (default: the repository of the current directory).
    #[arg(long, value_name = "NAME", value_parser = repo_name)]
    pub repo: Option<String>,
}

/// The warning of a listing that skips a job it cannot read (a broken ref, a missing
/// checkpoint), as git ignores a broken ref with a warning and lists the rest.
pub fn skipping_job(ctx: &Ctx<'_>, repo: &str, job: &str, e: &dyn std::fmt::Display) {
    ctx.diag.warning(&format!(
        "skipping job {job} of repo {repo}: {e}; `prodigy fsck` checks the store"
    ));
}

/// A repo name given on the command line, checked as clap parses it, as a job id is: a
/// hostile one is a usage error (exit 2; it was 1, unlike a bad job id).
pub fn repo_name(text: &str) -> Result<String, String> {
    crate::names::validate("repo name", text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

/// An object id argument that is not one (`zzzz`, three digits) is a usage error (exit
/// 2); one that is well formed but names nothing stays an ordinary error (exit 1).
pub fn id_arg(e: crate::store::object::ObjectError) -> anyhow::Error {
    match e {
        crate::store::object::ObjectError::BadId { .. } => {
            crate::cli::UsageError(e.to_string()).into()
        }
        e => e.into(),
    }
}

impl RepoArg {
    /// The repo name given, or the one the current directory maps to.
    pub fn resolve(&self, ctx: &Ctx<'_>) -> anyhow::Result<String> {
        match &self.repo {
            Some(name) => {
                crate::names::validate("repo name", name)?;
                Ok(name.clone())
            }
            None => {
                let cwd = std::env::current_dir().context("cannot read the current directory")?;
                // A home that does not exist yet holds nothing to find: the name is the
                // one the repository would be given, and nothing is created (a home in
                // the repository, `.prodigy/`, least of all) until something is written.
                if !ctx.home.root().exists() {
                    let location = crate::repo::locate(&cwd)?;
                    let name = location.base_name();
                    crate::names::validate("repo name", &name)?;
                    return Ok(name);
                }
                Ok(crate::repo::resolve_repo_name(&ctx.home, &cwd)?)
            }
        }
    }
}

/// A job id given on the command line, checked as clap parses it: a hostile one (`../x`,
/// `a/b`, a NUL, 200 characters) is a usage error (exit 2) naming the rule it breaks.
pub fn job_id(text: &str) -> Result<String, String> {
    crate::names::validate("job id", text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

/// Completion of a job argument (`prodigy jobs show <TAB>`): the jobs of the repository
/// of the current directory, in the home `PRODIGY_HOME` or `~/.prodigy` names, each with
/// its phase.
pub fn job_ids() -> clap_complete::engine::ArgValueCandidates {
    clap_complete::engine::ArgValueCandidates::new(|| {
        use clap_complete::engine::CompletionCandidate;
        let Ok(home) = crate::home::Home::from_env() else {
            return Vec::new();
        };
        let Ok(cwd) = std::env::current_dir() else {
            return Vec::new();
        };
        let Ok(repo) = crate::repo::locate(&cwd).map(|l| l.base_name()) else {
            return Vec::new();
        };
        let refs = crate::store::refs::RefStore::new(&home, crate::lock::LockOptions::default());
        let Ok(states) = crate::state::JobStateManager::new(refs, &repo) else {
            return Vec::new();
        };
        states
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|(job, _, c)| CompletionCandidate::new(job).help(Some(c.phase.as_str().into())))
            .collect()
    })
}
