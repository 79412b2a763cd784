//! `prodigy hash-object`: print the id of each input; `-w` also stores it.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::{Ctx, Exit, UsageError};
use crate::store::object::{self, ObjectId, ObjectType};

/// Most objects one durability barrier covers before ids are printed.
const MAX_BATCH: usize = 65_536;

/// Print the id of each input (BLAKE3 of `<type> <len>\0<payload>`), in order.
///
/// With -w the objects are also stored, durably before the first id is printed: when many
/// objects are written in one call (several FILEs, or --stdin-paths), one durability
/// barrier covers them all, and 100 or more new ones are written as one pack. With
/// --stdin-paths and --batch ids are printed whenever standard input has nothing more
/// ready, so a caller may wait for each answer.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store the objects as well as printing their ids.
    #[arg(short = 'w')]
    pub write: bool,

    /// The object type: blob, batch, log, dlq, item, checkpoint or items.
    #[arg(short = 't', value_name = "TYPE", default_value = "blob", value_parser = parse_type)]
    pub kind: ObjectType,

    /// Read the object from standard input.
    #[arg(long, conflicts_with_all = ["stdin_paths", "files", "batch"])]
    pub stdin: bool,

    /// Read file paths from standard input, one per line.
    #[arg(long, conflicts_with_all = ["files", "batch"])]
    pub stdin_paths: bool,

    /// Read objects from standard input, each a header line `[<id>] <type> <size>` then
    /// <size> bytes of payload and a newline: the output of `cat-object --batch`. A given
    /// id must match the content; the header's type overrides -t.
    #[arg(long, conflicts_with = "files")]
    pub batch: bool,

    /// Store the payload even if it is not valid for its type (JSON for log, dlq, item,
    /// checkpoint, items; JSON Lines for batch).
    #[arg(long)]
    pub literally: bool,

    /// Files to hash.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

fn parse_type(s: &str) -> Result<ObjectType, String> {
    s.parse().map_err(|e: object::IdError| e.to_string())
}

/// Collects the ids of one group of inputs, printing them only once they are durable.
struct Writer<'s> {
    batch: Option<object::ObjectBatch<'s>>,
    ids: Vec<ObjectId>,
}

impl Writer<'_> {
    fn add(&mut self, args: &Args, kind: ObjectType, payload: &[u8]) -> anyhow::Result<ObjectId> {
        if !args.literally {
            object::check_payload(kind, payload)?;
        }
        let id = match &mut self.batch {
            Some(batch) => batch.add(kind, payload)?,
            None => ObjectId::hash(kind, payload),
        };
        self.ids.push(id);
        Ok(id)
    }
}

/// Runs the command.
pub fn exec(args: Args, ctx: &mut Ctx<'_>) -> anyhow::Result<Exit> {
    if !args.stdin && !args.stdin_paths && !args.batch && args.files.is_empty() {
        return Err(UsageError("give FILEs, --stdin, --stdin-paths or --batch".into()).into());
    }
    let refs = ctx.refs();
    let store = refs.objects();
    if args.stdin {
        let mut payload = Vec::new();
        crate::fsutil::read_to_end_limited(&mut ctx.stdin, object::MAX_OBJECT_SIZE, &mut payload)
            .context("cannot read standard input")?;
        if !args.literally {
            object::check_payload(args.kind, &payload)?;
        }
        let id = if args.write {
            store.write(args.kind, &payload)?
        } else {
            ObjectId::hash(args.kind, &payload)
        };
        writeln!(ctx.out, "{id}")?;
        return Ok(Exit::Success);
    }
    let new_writer = || Writer {
        batch: args.write.then(|| store.batch().packed()),
        ids: Vec::new(),
    };
    let mut writer = new_writer();
    let flush = |writer: Writer<'_>, ctx: &mut Ctx<'_>| -> anyhow::Result<()> {
        if let Some(batch) = writer.batch {
            batch.commit()?;
        }
        for id in writer.ids {
            writeln!(ctx.out, "{id}")?;
        }
        ctx.out.flush()?;
        Ok(())
    };
    if args.batch {
        let mut number = 0u64;
        while let Some(header) = ctx.read_line().context("cannot read standard input")? {
            number += 1;
            let (given, kind, size) = parse_batch_header(&header).map_err(|reason| {
                anyhow::anyhow!("object {number}: {reason} in header {header:?}")
            })?;
            if size > object::MAX_OBJECT_SIZE {
                return Err(object::ObjectError::TooLarge { size }.into());
            }
            let mut payload = vec![0; size as usize];
            ctx.stdin.read_exact(&mut payload).with_context(|| {
                format!("object {number}: the input ends inside its {size} bytes")
            })?;
            let mut newline = [0u8; 1];
            let ends = ctx
                .stdin
                .read(&mut newline)
                .context("cannot read standard input")?;
            if ends == 1 && newline[0] != b'\n' {
                return Err(anyhow::anyhow!(
                    "object {number}: expected a newline after its {size} bytes"
                ));
            }
            let id = writer.add(&args, kind, &payload)?;
            if let Some(given) = given
                && given != id
            {
                return Err(anyhow::anyhow!(
                    "object {number}: its header names {given} but its content hashes to {id}"
                ));
            }
            if writer.ids.len() >= MAX_BATCH || ctx.stdin_would_block() {
                flush(std::mem::replace(&mut writer, new_writer()), ctx)?;
            }
        }
    } else if args.stdin_paths {
        let mut payload = Vec::new();
        while let Some(line) = ctx.read_line().context("cannot read standard input")? {
            let path = PathBuf::from(line);
            read_whole(&path, &mut payload)
                .with_context(|| format!("cannot read '{}'", path.display()))?;
            writer.add(&args, args.kind, &payload)?;
            if writer.ids.len() >= MAX_BATCH || ctx.stdin_would_block() {
                flush(std::mem::replace(&mut writer, new_writer()), ctx)?;
            }
        }
    } else {
        for path in &args.files {
            let payload = crate::fsutil::read_limited(path, object::MAX_OBJECT_SIZE)
                .with_context(|| format!("cannot read '{}'", path.display()))?;
            writer.add(&args, args.kind, &payload)?;
            if writer.ids.len() >= MAX_BATCH {
                flush(std::mem::replace(&mut writer, new_writer()), ctx)?;
            }
        }
    }
    flush(writer, ctx)?;
    Ok(Exit::Success)
}

/// Parses `[<id>] <type> <size>`.
fn parse_batch_header(header: &str) -> Result<(Option<ObjectId>, ObjectType, u64), String> {
    let fields: Vec<&str> = header.split(' ').collect();
    let (id, kind, size) = match fields.as_slice() {
        [kind, size] => (None, kind, size),
        [id, kind, size] => (
            Some(id.parse::<ObjectId>().map_err(|e| e.to_string())?),
            kind,
            size,
        ),
        _ => return Err("expected [<id>] <type> <size>".into()),
    };
    let kind = kind.parse::<ObjectType>().map_err(|e| e.to_string())?;
    let size = size
        .parse::<u64>()
        .map_err(|_| format!("bad size {size:?}"))?;
    Ok((id, kind, size))
}

/// Reads the file at `path` into `buf` (emptied first): `open`, `read`s to the end and
/// `close`, without the `statx` that sizes `std::fs::read`'s buffer — one system call in
/// six per object of `--stdin-paths`.
fn read_whole(path: &std::path::Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    let file = std::fs::File::open(path)?;
    crate::fsutil::read_to_end_limited(file, object::MAX_OBJECT_SIZE, buf)
}
