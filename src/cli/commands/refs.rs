//! `prodigy ref show|list|log|update|delete`: read refs and change them by compare-and-swap.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::anyhow;

use crate::cli::{Ctx, Exit};
use crate::store::object::{ObjectId, ObjectStore};
use crate::store::refs::{Deleted, Expect, RefName};

/// Read and change refs. A ref is named <kind>/<repo>/<job>, kind one of events, dlq,
/// state, archive; it holds the id of the newest object of that job.
#[derive(Debug, clap::Subcommand)]
pub enum RefCommand {
    /// Print the id a ref holds.
    Show {
        /// The ref, e.g. events/api/mr-1.
        name: String,
    },
    /// List refs (all, or those under PREFIX such as events or events/api) as
    /// `<id> <name>`, sorted by name.
    List {
        /// Only refs under this prefix (whole components).
        prefix: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Print a ref's reflog, oldest first: `<old> <new> <time> <pid> <host> <message>`.
    Log {
        /// The ref.
        name: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Set a ref to NEW, which must be a stored, valid object. With --old the update is a
    /// compare-and-swap: if the ref does not hold OLD, nothing changes and the exit code
    /// is 1.
    Update {
        /// The ref.
        name: String,
        /// The new value: an object id or unique prefix.
        new: String,
        /// The value the ref must hold now; 64 zeros or "" mean "must not exist".
        #[arg(long, value_name = "OLD")]
        old: Option<String>,
        /// The reflog message.
        #[arg(short, long, value_name = "MSG", default_value = "ref update")]
        message: String,
    },
    /// Delete a ref (its reflog keeps the deletion). With --old, only if it holds OLD.
    Delete {
        /// The ref.
        name: String,
        /// The value the ref must hold now.
        #[arg(long, value_name = "OLD")]
        old: Option<String>,
        /// The reflog message.
        #[arg(short, long, value_name = "MSG", default_value = "ref delete")]
        message: String,
    },
}

fn expect(store: &ObjectStore, old: Option<&str>) -> anyhow::Result<Expect> {
    Ok(match old {
        None => Expect::Any,
        Some(text) if text.is_empty() || (text.len() == 64 && text.bytes().all(|b| b == b'0')) => {
            Expect::Absent
        }
        Some(text) => match text.parse::<ObjectId>() {
            Ok(id) => Expect::Value(id),
            Err(_) => Expect::Value(store.resolve(text).map_err(super::id_arg)?),
        },
    })
}

fn time(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// Runs the command.
pub fn exec(cmd: RefCommand, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let refs = ctx.refs();
    match cmd {
        RefCommand::Show { name } => {
            let name: RefName = name.parse()?;
            let id = refs
                .read(&name)?
                .ok_or_else(|| anyhow!("ref {name} does not exist"))?;
            writeln!(ctx.out, "{id}")?;
        }
        RefCommand::List { prefix, json } => {
            let list = refs.list(prefix.as_deref())?;
            if json {
                let doc: Vec<_> = list
                    .iter()
                    .map(|(name, id)| serde_json::json!({"name": name.to_string(), "id": id}))
                    .collect();
                writeln!(ctx.out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                for (name, id) in list {
                    writeln!(ctx.out, "{id} {name}")?;
                }
            }
        }
        RefCommand::Log { name, json } => {
            let name: RefName = name.parse()?;
            let log = refs.log(&name)?;
            for (line, reason) in &log.bad_lines {
                ctx.diag
                    .warning(&format!("reflog of {name}, line {line}: {reason}"));
            }
            if json {
                writeln!(ctx.out, "{}", serde_json::to_string_pretty(&log.entries)?)?;
            } else {
                for e in &log.entries {
                    writeln!(
                        ctx.out,
                        "{} {} {} {} {} {}",
                        e.old,
                        e.new,
                        time(e.unix_ms),
                        e.pid,
                        e.host,
                        e.message
                    )?;
                }
            }
        }
        RefCommand::Update {
            name,
            new,
            old,
            message,
        } => {
            let name: RefName = name.parse()?;
            // Held until the ref names the object, so a gc cannot prune it in between.
            let _gc = refs.write_guard()?;
            let store = refs.objects();
            let new = store.resolve(&new).map_err(super::id_arg)?;
            // Verified, not just present: a ref never names a corrupt object either.
            store.read(&new)?;
            let expect = expect(store, old.as_deref())?;
            refs.update(&name, new, expect, &message)?;
            ctx.diag.verbose(&format!("{name} -> {new}"));
        }
        RefCommand::Delete { name, old, message } => {
            let name: RefName = name.parse()?;
            // Without --old the ref goes whatever it holds, a broken one too (which has no
            // value to compare), as git deletes a broken ref.
            let deleted = match old {
                None => refs.delete_any(&name, &message)?,
                Some(old) => {
                    let expect = expect(refs.objects(), Some(&old))?;
                    refs.delete(&name, expect, &message)?.map(Deleted::Value)
                }
            };
            match deleted {
                None => return Err(anyhow!("ref {name} does not exist")),
                Some(Deleted::Broken(reason)) => ctx
                    .diag
                    .warning(&format!("deleted broken ref {name} ({reason})")),
                Some(Deleted::Value(_)) => {}
            }
        }
    }
    Ok(Exit::Success)
}
