//! `prodigy run`: run a workflow as a new job (MapReduce) or session (sequential).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::commands::progress;
use crate::cli::output::UsageError;
use crate::cli::{Ctx, Exit};

/// Run a workflow (the original tool's YAML) as a new job of the repository holding PATH.
///
/// A MapReduce workflow: setup runs in the job's own git worktree (under the store's
/// worktrees/<repo>/<job>/), one agent per work item runs in a worktree of its own, the
/// agents' commits are merged into the job's worktree, and reduce runs there. A sequential
/// workflow (a list of steps, or `commands:`) runs as a session: its steps one after another
/// in the session's worktree. Events, failures (the dead-letter queue) and a checkpoint
/// after every finished step or item go to the store, so `prodigy resume JOB` finishes an
/// interrupted one. Prints the job (or session) id.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workflow file.
    #[arg(value_name = "WORKFLOW")]
    pub workflow: PathBuf,
    /// A directory inside the repository to work on (default: the current directory).
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// The job id (default: mr-<date>-<time>-<random>, or prodigy-session-… for a
    /// sequential workflow).
    #[arg(value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), long, value_name = "ID")]
    pub job_id: Option<String>,
    /// Run the workflow once per VALUE, each a session of its own with `ARG` set to it
    /// (`$ARG` in shell steps and Claude commands); repeatable. A session that does not
    /// complete ends the run, and the values after it are named.
    #[arg(long = "args", value_name = "VALUE")]
    pub args: Vec<String>,
    /// Run a sequential workflow's steps N times over, in one session (a pass after which
    /// no step has made a commit is the last).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_iterations: u32,
    /// Yes to every question: the workflow's merge: steps run without asking; without
    /// them the result is merged into the branch you started on (when nothing there
    /// would be lost).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Resume this job or session instead of starting one (the original's spelling of
    /// `prodigy resume ID`).
    #[arg(long, value_name = "ID", value_parser = crate::cli::commands::job_id, add = crate::cli::commands::job_ids(), conflicts_with_all = ["args", "job_id", "dry_run"])]
    pub resume: Option<String>,
    /// Read the workflow, check every step and variable, print what would run, and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Agents at once (overrides map.max_parallel).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_parallel: Option<u32>,
    /// Set the workflow variable NAME (`$NAME` in Claude commands, an environment variable
    /// of every step); repeatable; recorded with the job, so `resume` sees it.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Read variables from a JSON or YAML mapping (each `--param` wins over it).
    #[arg(long, value_name = "FILE")]
    pub param_file: Option<PathBuf>,
    /// Use the workflow's profile NAME: its values go over the workflow's env.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Print one JSON summary object per job on stdout (job, status, counts, worktree,
    /// branch, exit_code) and nothing but errors on stderr.
    #[arg(long)]
    pub json: bool,
}

/// The variables `--param-file` and `--param` give, `--param` winning.
fn params(args: &Args) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(path) = &args.param_file {
        let text = crate::fsutil::read_text(path)
            .with_context(|| format!("cannot read --param-file '{}'", path.display()))?;
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => serde_saphyr::from_str(&text).map_err(|e| {
                UsageError(format!(
                    "--param-file '{}' is neither JSON nor YAML: {}",
                    path.display(),
                    e.without_snippet().to_string().lines().next().unwrap_or("")
                ))
            })?,
        };
        let serde_json::Value::Object(map) = value else {
            return Err(UsageError(format!(
                "--param-file '{}' must hold a mapping of names to values",
                path.display()
            ))
            .into());
        };
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            out.insert(param_name(&k)?, text);
        }
    }
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--param {p:?}: expected NAME=VALUE")))?;
        out.insert(param_name(k)?, v.to_owned());
    }
    Ok(out)
}

/// A parameter's name: an environment variable's (letters, digits, `_`, not first a
/// digit), not one the runner sets.
fn param_name(name: &str) -> anyhow::Result<String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(UsageError(format!(
            "parameter name {name:?} must be letters, digits and _ (an environment variable's \
             name)"
        ))
        .into());
    }
    if name.starts_with("PRODIGY_") || name == "ARG" {
        return Err(UsageError(format!(
            "parameter {name} is set by prodigy itself; choose another name"
        ))
        .into());
    }
    Ok(name.to_owned())
}

/// `value` as one shell word, for a command the user may paste.
fn word(value: &str) -> String {
    crate::workflow::shell::quote(value, &crate::workflow::shell::Slot::Word)
        .map_or_else(|_| format!("{value:?}"), |w| w.into_owned())
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let dir = match &args.path {
        Some(p) => p.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    if let Some(id) = &args.resume {
        crate::names::validate("job id", id)?;
        let repo = crate::repo::resolve_repo_name(&ctx.home, &dir)?;
        let mut opts = progress::options_for(ctx, args.json)?;
        opts.max_parallel = args.max_parallel.map(|n| n as usize);
        opts.yes = args.yes;
        let outcome = crate::runner::resume(&ctx.home, &repo, id, None, opts);
        return progress::finish(ctx, outcome, args.json, args.yes);
    }
    let params = params(&args)?;
    let mut inputs = crate::workflow::Inputs {
        env: params.clone(),
    };
    if let Some(first) = args.args.first() {
        inputs.env.insert("ARG".into(), first.clone());
    }
    if args.dry_run {
        let plan = crate::workflow::Plan::load_with(&args.workflow, &inputs)?;
        for warning in &plan.warnings {
            ctx.diag.warning(warning);
        }
        if let Some(profile) = &args.profile
            && !plan.environment.profiles.contains_key(profile)
        {
            return Err(UsageError(format!(
                "--profile {profile}: the workflow has no such profile"
            ))
            .into());
        }
        // The files it names, as they are now (setup may still make an input).
        if let Ok(location) = crate::repo::locate(&dir)
            && location.is_git
        {
            for file in plan.environment.missing_files(&location.root) {
                ctx.diag.warning(&format!(
                    "env_files: '{file}' is not in the repository (a run skips it)"
                ));
            }
            if let Some(map) = plan.map_spec() {
                let env = plan.env.clone();
                if let crate::workflow::input::Source::File(path) =
                    crate::workflow::input::source(map, &location.root, &env)
                    && !path.is_file()
                {
                    ctx.diag.warning(&format!(
                        "map.input '{}' is not in the repository now: setup must make it",
                        map.input.value
                    ));
                }
            }
        }
        for line in plan.outline() {
            writeln!(ctx.out, "{line}")?;
        }
        ctx.diag.note("dry run: nothing was run");
        return Ok(Exit::Success);
    }
    if args.max_iterations > 1
        && !crate::workflow::Plan::load_with(&args.workflow, &inputs)?.is_sequential()
    {
        return Err(UsageError(
            "-n repeats a sequential workflow's steps; a MapReduce workflow runs its items once"
                .into(),
        )
        .into());
    }
    if args.args.len() > 1 && args.job_id.is_some() {
        return Err(UsageError(
            "--job-id names one run, and --args asks for one per value: give one or the other"
                .into(),
        )
        .into());
    }
    let runs: Vec<Option<String>> = match args.args.is_empty() {
        true => vec![None],
        false => args.args.iter().cloned().map(Some).collect(),
    };
    if runs.len() > 1 && !args.json {
        ctx.diag.note(&format!(
            "{} values of --args: a session each, in turn; one that does not complete ends the run, and `resume` finishes only its own",
            runs.len()
        ));
    }
    let mut worst = Exit::Success;
    let values = runs.clone();
    for (i, arg) in runs.into_iter().enumerate() {
        // The values after one that did not complete are not run: said, with the command
        // that runs them (they were dropped without a word).
        let rest = |ctx: &mut Ctx<'_>| {
            let left: Vec<String> = values[i + 1..]
                .iter()
                .flatten()
                .map(|v| format!("--args {}", word(v)))
                .collect();
            if !left.is_empty() {
                ctx.diag.note(&format!(
                    "not run: {}; `prodigy run {} {}` runs them",
                    left.join(" "),
                    word(&args.workflow.display().to_string()),
                    left.join(" ")
                ));
            }
        };
        let mut opts = progress::options_for(ctx, args.json)?;
        opts.job_id = args.job_id.clone();
        opts.yes = args.yes;
        opts.max_parallel = args.max_parallel.map(|n| n as usize);
        opts.profile = args.profile.clone();
        opts.env.extend(params.clone());
        if let Some(arg) = arg {
            // The original's steps also read it as PRODIGY_ARG.
            opts.env.insert("PRODIGY_ARG".into(), arg.clone());
            opts.env.insert("ARG".into(), arg);
        }
        if args.max_iterations > 1 {
            opts.env.insert(
                crate::runner::ITERATIONS_ENV.into(),
                args.max_iterations.to_string(),
            );
        }
        let mut outcome = crate::runner::run(&ctx.home, &args.workflow, &dir, opts);
        if let Ok(o) = &outcome
            && o.merge_pending
            && ctx.progress
            && !args.json
            && std::io::IsTerminal::is_terminal(&std::io::stdin())
        {
            // Asked, as the original asks, before the session's own merge runs.
            ctx.diag.note(&format!(
                "session {}: run the workflow's merge: steps to merge {} now? [y/N]",
                o.job_id, o.branch
            ));
            let mut answer = String::new();
            std::io::BufRead::read_line(ctx.stdin, &mut answer)?;
            if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                let mut again = progress::options(ctx)?;
                again.yes = true;
                outcome = crate::runner::resume(
                    &ctx.home,
                    &o.repo.clone(),
                    &o.job_id.clone(),
                    None,
                    again,
                );
            }
        }
        let exit = match progress::finish(ctx, outcome, args.json, args.yes) {
            Ok(exit) => exit,
            Err(e) => {
                rest(ctx);
                return Err(e);
            }
        };
        if exit != Exit::Success {
            worst = exit;
            if exit != Exit::Incomplete {
                rest(ctx);
                break;
            }
        }
    }
    Ok(worst)
}
