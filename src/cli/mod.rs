//! The command line: clap definitions (their doc comments are the help and the man pages),
//! one module per command in `commands/`, and the one place that maps errors to exit codes
//! and `error:` / `hint:` lines.
//!
//! Nothing here touches the process's streams directly: the binary hands in an [`Io`].

pub mod commands;
pub mod manual;
pub mod output;

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand, ValueEnum};

pub use output::{Diag, Exit, UsageError};

use crate::home::Home;
use crate::lock::LockOptions;
use crate::store::refs::RefStore;

/// prodigy keeps the runtime data of MapReduce workflows (event logs, dead-letter queues,
/// job checkpoints) in one global, content-addressed store shared by every git worktree.
///
/// The store lives in PRODIGY_HOME, else ~/.prodigy. Objects are zstd frames named by the
/// BLAKE3 hash of their content; refs (events|dlq|state/<repo>/<job>) name the newest
/// object of each job and change only by compare-and-swap under a lock.
#[derive(Debug, Parser)]
#[command(name = "prodigy", version = VERSION, max_term_width = 100)]
pub struct Cli {
    /// Use DIR as the store's home (beats PRODIGY_HOME).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Keep objects and refs in a remote store, s3://bucket/prefix, reached with the AWS_*
    /// variables (default: PRODIGY_STORE, else `store` in config.json; "" means the home)
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,

    /// Print only results and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Say more about what is being done.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// When to colour diagnostics.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The version and the commit the binary was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PRODIGY_COMMIT"),
    ")"
);

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute object ids and optionally store the objects.
    HashObject(commands::hash_object::Args),
    /// Show an object's type, size or payload, or test that it exists.
    CatObject(commands::cat_object::Args),
    /// Read and change refs: show, list, log, update, delete.
    #[command(subcommand)]
    Ref(commands::refs::RefCommand),
    /// Append to and read jobs' event logs.
    #[command(subcommand)]
    Events(commands::events::EventsCommand),
    /// Dead-lettered items: list, inspect, analyze, stats, export, purge.
    #[command(subcommand)]
    Dlq(commands::dlq::DlqCommand),
    /// Run a MapReduce workflow as a new job; prints the job id.
    Run(commands::run::Args),
    /// Finish an interrupted job from its checkpoint.
    #[command(alias = "resume-job")]
    Resume(commands::resume::Args),
    /// List jobs with their phase, item counts and times; `jobs show JOB` for one.
    Jobs(commands::jobs::Args),
    /// Show the transcripts of a job's Claude calls, from the store.
    Logs(commands::logs::Args),
    /// Verify every object, ref, reflog and repo record.
    Fsck(commands::fsck::Args),
    /// Remove unreachable objects older than a grace period, and stale temp files.
    Gc(commands::gc::Args),
    /// Import the original tool's repo-local .prodigy/ into the store.
    MigrateEvents(commands::migrate_events::Args),
    /// Print the repo name that a path maps to.
    RepoName(commands::repo_name::Args),
    /// Copy a job between the local home and a remote store.
    #[command(subcommand)]
    Store(commands::store::StoreCommand),
    /// Print shell completions.
    Completions(commands::completions::Args),
    /// The worktrees of the repository's jobs: ls, clean, merge.
    #[command(subcommand)]
    Worktree(commands::worktree::WorktreeCommand),
    /// The original's checkpoint commands (`jobs`, `jobs show`, `jobs rm`).
    #[command(subcommand)]
    Checkpoints(commands::checkpoints::CheckpointsCommand),
    /// The original's session commands (`jobs --sessions`, `jobs show`, `jobs rm`).
    #[command(subcommand)]
    Sessions(commands::sessions::SessionsCommand),
    /// The original's clean commands (`worktree clean`, `events clean`, `dlq purge`,
    /// `jobs rm`).
    #[command(subcommand)]
    Clean(commands::clean::CleanCommand),
}

/// The process's streams, as handed in by the binary.
pub struct Io {
    /// Standard input, buffered.
    pub stdin: BufReader<Box<dyn Read + Send>>,
    /// True when standard input is the process's fd 0 (so it can be polled).
    pub stdin_is_fd0: bool,
    /// Standard output (results).
    pub stdout: Box<dyn Write + Send>,
    /// Standard error (diagnostics).
    pub stderr: Arc<Mutex<dyn Write + Send>>,
    /// True when standard error is a terminal (for colour and progress).
    pub stderr_is_terminal: bool,
}

/// What a command runs with.
pub struct Ctx<'a> {
    /// The store's home.
    pub home: Home,
    /// Input.
    pub stdin: &'a mut BufReader<Box<dyn Read + Send>>,
    stdin_is_fd0: bool,
    /// Results.
    pub out: &'a mut (dyn Write + Send),
    /// Diagnostics.
    pub diag: Diag,
    /// True when long work may draw a progress bar (stderr is a terminal, not `--quiet`).
    pub progress: bool,
}

/// The longest line of input a command reads (16 MiB); a longer one is refused after
/// reading this much of it.
pub const MAX_INPUT_LINE: usize = 16 << 20;

/// Reads one line of at most [`MAX_INPUT_LINE`] bytes into `buf` (with its newline):
/// `None` at the end, `Some(false)` for a longer line (of which no more was read).
pub fn read_bounded_line(input: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    append_bounded_line(input, buf)
}

/// [`read_bounded_line`] appending the line to what `buf` holds.
pub fn append_bounded_line(input: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    let n = input
        .take(MAX_INPUT_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(n <= MAX_INPUT_LINE || buf.ends_with(b"\n")))
}

impl Ctx<'_> {
    /// The refs (and objects) of the home, with lock waits reported on stderr.
    pub fn refs(&self) -> RefStore {
        let mut opts = LockOptions::from_env();
        let diag = self.diag.clone();
        opts.on_wait = Some(Arc::new(move |path: &Path| {
            diag.note(&format!("waiting for lock on '{}'…", path.display()));
        }));
        RefStore::new(&self.home, opts)
    }

    /// True when reading a line from stdin now would block: no whole line is buffered
    /// (a part of one may be) and fd 0 has nothing ready. Batching commands make their
    /// writes durable and flush their output before they block, so a caller that waits
    /// for each answer never deadlocks.
    pub fn stdin_would_block(&self) -> bool {
        self.stdin_waits(std::time::Duration::ZERO)
    }

    /// [`Self::stdin_would_block`], fd 0 given `timeout` to become ready: true when the
    /// input has stalled for that long.
    pub fn stdin_waits(&self, timeout: std::time::Duration) -> bool {
        if memchr::memchr(b'\n', self.stdin.buffer()).is_some() || !self.stdin_is_fd0 {
            return false;
        }
        let stdin = rustix::stdio::stdin();
        let mut fds = [rustix::event::PollFd::new(
            &stdin,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        !matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
    }

    /// Reads a line of standard input, of at most [`MAX_INPUT_LINE`] bytes (a longer one
    /// is an error, after reading no more than that).
    pub fn read_line(&mut self) -> io::Result<Option<String>> {
        let mut bytes = Vec::new();
        match read_bounded_line(&mut self.stdin, &mut bytes)? {
            None => return Ok(None),
            Some(false) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a line is longer than {} MiB", MAX_INPUT_LINE >> 20),
                ));
            }
            Some(true) => {}
        }
        let mut line = String::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a line is not UTF-8"))?;
        let trimmed = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(trimmed);
        Ok(Some(line))
    }
}

/// clap's one line for a bad value that holds a line break or another control character,
/// written with the value escaped: its first line ended inside the value (`error: invalid
/// value 'a`), saying nothing of why.
fn escaped_value_error(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let value = text(ContextKind::InvalidValue)?;
    if !value.chars().any(char::is_control) {
        return None;
    }
    let arg = text(ContextKind::InvalidArg).unwrap_or_else(|| "the argument".to_owned());
    // Control characters as `\n`, `\u{1}`; the rest as it is.
    let escaped = |text: &str| -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        out
    };
    let reason = std::error::Error::source(e).map_or_else(
        || "not one of its values".to_owned(),
        |source| escaped(&source.to_string()),
    );
    Some(format!(
        "error: invalid value '{}' for '{arg}': {reason}\n",
        escaped(&value)
    ))
}

/// The home when `--home` is not given (see [`crate::storage::choose_home`]); says so when
/// it is the repo-local store.
fn choose_home(diag: &Diag) -> anyhow::Result<Home> {
    use crate::storage::{HomeSource, LOCAL_STORAGE_ENV, choose_home};
    let cwd =
        anyhow::Context::context(std::env::current_dir(), "cannot read the current directory")?;
    let chosen = choose_home(&cwd)?;
    let at = chosen.home.root().display();
    match &chosen.source {
        HomeSource::Local => diag.warning(&format!(
            "{LOCAL_STORAGE_ENV} is deprecated: using the repo-local store '{at}'; unset it to use the global store (PRODIGY_HOME or ~/.prodigy)"
        )),
        HomeSource::Fallback { reason, .. } => diag.warning(&format!(
            "the global store cannot be used ({reason}); using the repo-local store '{at}' (set PRODIGY_HOME to choose another)"
        )),
        HomeSource::Env | HomeSource::Default => {}
    }
    Ok(chosen.home)
}

/// Once per repository: the original tool's `.prodigy/` is still there, unimported.
fn warn_legacy(diag: &Diag, home: &Home) {
    let Ok(cwd) = std::env::current_dir() else {
        return;
    };
    let Ok(root) = crate::migrate::legacy_root(&cwd) else {
        return;
    };
    if crate::migrate::legacy_present(&root) && crate::migrate::first_warning(home, &root) {
        diag.warning(&format!(
            "'{}' holds event logs, DLQ items or checkpoints of the original prodigy; `prodigy migrate-events` imports them into the store, `--remove-local` then deletes them (shown once per repository)",
            root.join(crate::storage::LOCAL_DIR).display()
        ));
    }
}

/// Runs the command line `args` with `io`; returns the process exit code.
pub fn main(args: impl IntoIterator<Item = OsString>, mut io: Io) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    // The step supervisor (see `runner::exec`): not a command for people, so not in clap.
    if args.get(1).is_some_and(|a| a == "__supervise") {
        let rest: Vec<String> = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return crate::runner::exec::supervise(&rest);
    }
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let to_stdout = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            let code = if to_stdout { 0 } else { 2 };
            let styled = e.render();
            let mut text = if !no_color && io.stderr_is_terminal && !to_stdout {
                styled.ansi().to_string()
            } else {
                styled.to_string()
            };
            // A bad value (a hostile job id, a time that is none) is one `error:` line,
            // as every other error.
            if matches!(
                e.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue
            ) && let Some(first) = text.lines().next()
            {
                let line = match escaped_value_error(&e) {
                    Some(line) => line,
                    None => first.to_owned(),
                };
                text = format!("{}\n", output::within_a_line(line.trim_end()));
            }
            let _ = if to_stdout {
                io.stdout
                    .write_all(text.as_bytes())
                    .and_then(|_| io.stdout.flush())
            } else {
                let mut err = io.stderr.lock().unwrap_or_else(|p| p.into_inner());
                err.write_all(text.as_bytes())
            };
            return code;
        }
    };
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => io.stderr_is_terminal && !no_color,
    };
    let diag = Diag::new(io.stderr.clone(), color, cli.quiet, cli.verbose);
    let home = match &cli.home {
        Some(dir) => Home::at(dir).map_err(anyhow::Error::from),
        None => choose_home(&diag),
    }
    .and_then(|home| {
        start_logging(cli.verbose)?;
        crate::lock::LockOptions::env_timeout().map_err(output::UsageError)?;
        crate::runner::exec::kill_grace_from_env().map_err(output::UsageError)?;
        home.check_owner()?;
        Ok(crate::storage::attach_store(home, cli.store.clone())?)
    });
    if let Ok(home) = &home
        && !cli.quiet
        && !matches!(
            cli.command,
            Command::MigrateEvents(_) | Command::Completions(_)
        )
    {
        warn_legacy(&diag, home);
    }
    let result = home.and_then(|home| {
        let mut ctx = Ctx {
            home,
            stdin: &mut io.stdin,
            stdin_is_fd0: io.stdin_is_fd0,
            out: &mut *io.stdout,
            diag: diag.clone(),
            progress: io.stderr_is_terminal && !cli.quiet,
        };
        let exit = commands::run(cli.command, &mut ctx)?;
        ctx.out.flush()?;
        Ok(exit)
    });
    match result {
        Ok(exit) => exit as i32,
        Err(e) => {
            let code = output::report(&diag, &e) as i32;
            // A remote store nobody named on the command line or in the environment came
            // from the home's config.json: say so, or the user looks in the wrong place.
            let remote = e.chain().any(|c| {
                matches!(output::hint_of(c),
                    Some(h) if h == crate::hint::REMOTE_UNREACHABLE || h == crate::hint::REMOTE_NO_BUCKET)
            });
            if remote && cli.store.is_none() && std::env::var_os(crate::store::STORE_ENV).is_none()
            {
                diag.hint(&format!(
                    "the store was chosen by `store` in {}; `--store \"\"` uses the home instead",
                    home_config_path(cli.home.as_deref())
                ));
            }
            code
        }
    }
}

/// Where the config.json that may name a store is, as the user would look for it.
fn home_config_path(flag: Option<&Path>) -> String {
    match flag {
        Some(dir) => format!("'{}'", dir.join("config.json").display()),
        None => match Home::from_env() {
            Ok(home) => format!("'{}'", home.root().join("config.json").display()),
            Err(_) => "the home's config.json".to_owned(),
        },
    }
}

/// The variable that turns on diagnostic logging: a `tracing` filter (`debug`,
/// `prodigy=debug,object_store=info`).
pub const LOG_ENV: &str = "PRODIGY_LOG";

/// Diagnostic logging on standard error, off unless [`LOG_ENV`] gives a filter or `-v`
/// asks (`prodigy=debug,object_store=debug`): lock waits, compare-and-swap retries, the
/// durability barriers and gc's phases, object_store's retries. A filter that does not
/// parse is a usage error.
fn start_logging(verbose: bool) -> Result<(), output::UsageError> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(v.trim())
            .map_err(|e| output::UsageError(format!("{LOG_ENV}={v:?} is not a filter: {e}")))?,
        _ if verbose => tracing_subscriber::EnvFilter::new("prodigy=debug,object_store=debug"),
        _ => return Ok(()),
    };
    // Once per process (a second call in the same process keeps the first).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}
