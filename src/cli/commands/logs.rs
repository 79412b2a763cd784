//! `prodigy logs JOB`: the transcripts of a job's Claude calls, read from the store (so
//! they outlive the worktrees and travel with `store push/pull`).

use crate::cli::commands::RepoArg;
use crate::cli::commands::events::open_existing;
use crate::cli::output::UsageError;
use crate::cli::{Ctx, Exit};
use crate::events::calls::{self, Call};
use crate::runner::claude::assistant_text;

/// Show the transcripts of a job's Claude calls: the assistant's text by default, the raw
/// stream-json with --json. Each call is headed by its step, agent, item, exit, turns and
/// cost.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job id.
    #[arg(value_parser = crate::cli::commands::job_id, value_name = "JOB")]
    pub job: String,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only the calls of this work item's agent.
    #[arg(long, value_name = "ID")]
    pub item: Option<String>,
    /// Only the calls of this step: its number in its phase (`2`), or `PHASE/N`
    /// (`setup/1`, `map/2`, `reduce/1`, `session/3`), or `merge`.
    #[arg(long, value_name = "N")]
    pub step: Option<String>,
    /// Print the transcripts as claude wrote them (stream-json lines), nothing else.
    #[arg(long)]
    pub json: bool,
}

fn step_matches(want: &str, call: &Call) -> bool {
    match want.parse::<usize>() {
        Ok(n) => call.step_number() == Some(n) && !call.step.ends_with("/on_failure"),
        Err(_) => call.step == want,
    }
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    crate::names::validate("job id", &args.job)?;
    if let Some(step) = &args.step {
        let ok = step.parse::<usize>().is_ok_and(|n| n > 0)
            || step == "merge"
            || step.split_once('/').is_some_and(|(phase, rest)| {
                ["setup", "map", "reduce", "session"].contains(&phase)
                    && rest
                        .strip_suffix("/on_failure")
                        .unwrap_or(rest)
                        .parse::<usize>()
                        .is_ok_and(|n| n > 0)
            });
        if !ok {
            return Err(UsageError(format!(
                "--step {step:?}: give a step number (2), PHASE/N (setup/1, map/2, reduce/1, session/3) or merge"
            ))
            .into());
        }
    }
    let repo = args.repo.resolve(ctx)?;
    let log = open_existing(ctx, &repo, &args.job)?;
    let all = calls::read(&log)?;
    let chosen: Vec<&Call> = all
        .calls
        .iter()
        .filter(|c| {
            args.item
                .as_ref()
                .is_none_or(|i| c.item_id.as_ref() == Some(i))
        })
        .filter(|c| args.step.as_ref().is_none_or(|s| step_matches(s, c)))
        .collect();
    if chosen.is_empty() {
        ctx.diag.note(&format!(
            "job {} has no Claude calls{}",
            args.job,
            if args.item.is_some() || args.step.is_some() {
                " that match"
            } else {
                ""
            }
        ));
        return Ok(Exit::Success);
    }
    let objects = ctx.refs().objects().clone();
    for call in chosen {
        let transcript = match call.transcript {
            Some(id) => Some(objects.read(&id)?.payload),
            None => None,
        };
        if args.json {
            if let Some(bytes) = &transcript {
                ctx.out.write_all(bytes)?;
                if !bytes.ends_with(b"\n") && !bytes.is_empty() {
                    writeln!(ctx.out)?;
                }
            }
            continue;
        }
        let mut head = format!("== {} {}", call.step, call.agent_id);
        if let Some(item) = &call.item_id {
            head.push_str(&format!(" item {item}"));
        }
        head.push_str(&format!(
            " attempt {}: exit {}",
            call.attempt, call.exit_code
        ));
        if let Some(turns) = call.num_turns {
            head.push_str(&format!(", {turns} turns"));
        }
        if let Some(usd) = call.total_cost_usd {
            head.push_str(&format!(", ${usd}"));
        }
        head.push_str(&format!(
            ", {} in / {} out tokens, {} ms",
            call.usage.input_tokens, call.usage.output_tokens, call.duration_ms
        ));
        writeln!(ctx.out, "{head} ==")?;
        if let Some(command) = &call.command {
            writeln!(ctx.out, "$ claude {command}")?;
        }
        if let Some(error) = &call.error {
            writeln!(ctx.out, "error: {error}")?;
        }
        match &transcript {
            Some(bytes) => write!(ctx.out, "{}", assistant_text(bytes))?,
            None => writeln!(ctx.out, "(no transcript was kept)")?,
        }
    }
    Ok(Exit::Success)
}
