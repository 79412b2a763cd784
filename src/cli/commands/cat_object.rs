//! `prodigy cat-object`: an object's type, size or payload, or whether it exists.

use anyhow::Context;

use crate::cli::{Ctx, Exit, UsageError};
use crate::store::object::ObjectError;

/// Show an object's type (-t), payload size (-s) or payload (-p), or exit 0/1 for
/// whether it exists and is valid (-e). Every read is verified: a corrupt object is an
/// error, never output.
///
/// OBJECT is a full id or a unique prefix of at least 4 hex digits. With --batch, ids or
/// prefixes are read from standard input, one per line, and each is answered like
/// `git cat-file --batch`: `<id> <type> <size>`, the payload and a newline, or
/// `<input> missing` / `<input> ambiguous`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("mode").required(true))]
pub struct Args {
    /// Print the object's type.
    #[arg(short = 't', group = "mode", requires = "object")]
    pub show_type: bool,

    /// Print the payload size in bytes.
    #[arg(short = 's', group = "mode", requires = "object")]
    pub size: bool,

    /// Print the payload.
    #[arg(short = 'p', group = "mode", requires = "object")]
    pub print: bool,

    /// Exit 0 if the object exists and is valid, 1 otherwise; print nothing.
    #[arg(short = 'e', group = "mode", requires = "object")]
    pub exists: bool,

    /// Answer ids read from standard input, one per line.
    #[arg(long, group = "mode", conflicts_with = "object")]
    pub batch: bool,

    /// The object: an id or a unique prefix (at least 4 hex digits).
    #[arg(value_name = "OBJECT")]
    pub object: Option<String>,
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    let refs = ctx.refs();
    let store = refs.objects();
    if args.batch {
        while let Some(line) = ctx.read_line().context("cannot read standard input")? {
            let text = line.trim();
            let found = store
                .resolve(text)
                .and_then(|id| Ok((id, store.read(&id)?)));
            let (id, object) = match found {
                Ok(found) => found,
                Err(
                    ObjectError::NotFound { .. }
                    | ObjectError::NoMatch { .. }
                    | ObjectError::BadId { .. },
                ) => {
                    writeln!(ctx.out, "{text} missing")?;
                    continue;
                }
                Err(ObjectError::Ambiguous { .. }) => {
                    writeln!(ctx.out, "{text} ambiguous")?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            writeln!(ctx.out, "{id} {} {}", object.kind, object.payload.len())?;
            ctx.out.write_all(&object.payload)?;
            ctx.out.write_all(b"\n")?;
            if ctx.stdin_would_block() {
                ctx.out.flush()?;
            }
        }
        return Ok(Exit::Success);
    }
    let text = args
        .object
        .ok_or_else(|| UsageError("give an OBJECT".into()))?;
    if args.exists {
        let found = store.resolve(&text).and_then(|id| store.read(&id));
        return Ok(match found {
            Ok(_) => Exit::Success,
            Err(ObjectError::NotFound { .. } | ObjectError::NoMatch { .. }) => Exit::Failure,
            Err(e) => return Err(super::id_arg(e)),
        });
    }
    let id = store.resolve(&text).map_err(super::id_arg)?;
    let object = store.read(&id)?;
    if args.show_type {
        writeln!(ctx.out, "{}", object.kind)?;
    } else if args.size {
        writeln!(ctx.out, "{}", object.payload.len())?;
    } else {
        ctx.out.write_all(&object.payload)?;
    }
    Ok(Exit::Success)
}
