//! Running one shell step: `sh -c` in its own process group, output to the agent's log
//! (and captured when asked), stopped with its whole group on a time-out or an interrupt:
//! SIGTERM, then SIGKILL after a grace period ([`KILL_GRACE_ENV`], 5 s by default, as
//! `timeout(1)` and CI runners do), so a step can clean up.
//!
//! A step survives a runner killed with SIGKILL unless something kills its group: the
//! kernel tells no one. So a runner's steps have a *supervisor*: one process per
//! [`Executor`] (the `prodigy` binary started as `prodigy __supervise GRACE_MS`, in a
//! process group of its own), whose standard input is a pipe only the runner holds open.
//! The runner writes each step's process group id into that pipe once the step is spawned,
//! and strikes the group off once the step has ended. When the runner dies, however it
//! dies, the kernel closes the pipe: the supervisor reads its end and stops every group
//! still registered whose leader is still running, SIGTERM, then SIGKILL after the grace.
//! A step spawned a moment before the runner died may not be registered yet: every step's
//! environment names its supervisor ([`SUPERVISOR_ENV`]), and the supervisor also stops
//! the group leaders in /proc that name it. The library runs steps without that guarantee
//! when no supervisor is given.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::workflow::env::Masker;

/// Captured output kept per step.
pub const MAX_CAPTURE: usize = 1 << 20;

/// How often a running step's wait looks at the interrupt flag.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

/// Standard error kept for messages.
pub const STDERR_TAIL: usize = 2048;

/// How much of the end of a step's standard output is kept whatever it captures: what a
/// failure handler's `${shell.output}` shows of a long report (its end, where a test
/// runner sums up).
pub const STDOUT_TAIL: usize = 32 * 1024;

/// How long a step's output is still read after the step ended (a process that escaped
/// its group may hold the pipes open).
const READER_GRACE: Duration = Duration::from_secs(2);

/// The exit code of a step killed for its time limit (as `timeout(1)` uses).
pub const TIMEOUT_EXIT: i32 = 124;

/// How long a step has between SIGTERM and SIGKILL: a duration (`5s`, `500ms`).
pub const KILL_GRACE_ENV: &str = "PRODIGY_KILL_GRACE";

/// The grace when [`KILL_GRACE_ENV`] is not set.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// The grace from [`KILL_GRACE_ENV`]; an error when it is not a duration.
pub fn kill_grace_from_env() -> Result<Duration, String> {
    Ok(crate::env::duration(KILL_GRACE_ENV)?.unwrap_or(DEFAULT_KILL_GRACE))
}

/// What the runner's steps share: the supervisor, the live process groups and the
/// interrupt flag.
#[derive(Debug, Clone)]
pub struct Executor {
    supervisor: Option<PathBuf>,
    /// The supervisor's process, started with the first step.
    watch: Arc<OnceLock<Result<Watch, String>>>,
    groups: Arc<Mutex<HashSet<i32>>>,
    interrupted: Arc<AtomicBool>,
    grace: Duration,
}

/// What a step runs.
#[derive(Debug, Clone, Copy)]
pub enum Program<'a> {
    /// `sh -c COMMAND`.
    Shell(&'a str),
    /// A program and its arguments, no shell between.
    Exec(&'a Path, &'a [String]),
}

/// Called with each line of a step's standard output (without its newline) as it comes.
pub type LineHook = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// One step to run.
pub struct StepSpec<'a> {
    /// What it runs.
    pub program: Program<'a>,
    /// Its working directory.
    pub cwd: &'a Path,
    /// Extra environment.
    pub env: &'a BTreeMap<String, String>,
    /// Kill it after this long.
    pub timeout: Option<Duration>,
    /// Keep its standard output, at most this many bytes.
    pub capture: Option<usize>,
    /// Where its output goes.
    pub log: &'a Arc<Mutex<File>>,
    /// Told of each line of standard output as it comes.
    pub lines: Option<LineHook>,
    /// Start from an empty environment (only `env` and `PATH`).
    pub clear_env: bool,
    /// Keep standard error whole (up to [`MAX_CAPTURE`]), not only its tail.
    pub keep_stderr: bool,
    /// Secrets' values replaced by `***` in everything read from the step, line by line,
    /// before the log, the capture or the line hook sees it.
    pub mask: Option<Arc<Masker>>,
    /// Told of every line of output (standard output and error, masked) as it comes: the
    /// terminal's copy.
    pub tee: Option<LineHook>,
}

impl StepSpec<'_> {
    /// How the step's command reads in messages and the log.
    pub fn shown(&self) -> String {
        match self.program {
            Program::Shell(command) => command.to_owned(),
            Program::Exec(program, args) => {
                let mut shown = program.display().to_string();
                for a in args {
                    shown.push(' ');
                    shown.push_str(a);
                }
                shown
            }
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// Its exit code (128 + n when killed by signal n; [`TIMEOUT_EXIT`] on a time-out).
    pub exit_code: i32,
    /// True when it was killed for its time limit.
    pub timed_out: bool,
    /// True when it was killed because the runner was interrupted.
    pub interrupted: bool,
    /// Its standard output, when captured (at most [`MAX_CAPTURE`] bytes), as it wrote it.
    pub stdout: Vec<u8>,
    /// How many bytes it wrote to standard output, when captured (more than
    /// [`MAX_CAPTURE`] means `stdout` holds only the start).
    pub stdout_bytes: u64,
    /// The end of its standard output, captured or not: all of it up to [`STDOUT_TAIL`]
    /// bytes, else the last `STDOUT_TAIL + 1`.
    pub stdout_tail: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of its standard error.
    pub stderr_tail: String,
    /// Its standard error, when kept ([`StepSpec::keep_stderr`]; at most
    /// [`MAX_CAPTURE`] bytes).
    pub stderr: Vec<u8>,
    /// How long it ran.
    pub duration: Duration,
}

impl StepOutcome {
    /// The captured output as text, without its final newlines; an error naming the first
    /// byte that is not UTF-8 (a capture is the step's bytes or an error, never a guess).
    pub fn stdout_text(&self) -> Result<&str, String> {
        let text = std::str::from_utf8(&self.stdout).map_err(|e| {
            let at = e.valid_up_to();
            let start = at.saturating_sub(20);
            let end = (at + 20).min(self.stdout.len());
            format!(
                "the output is not UTF-8 at byte {at} (\"{}\"); write it to a file, or \
                 encode it (base64, iconv) before capturing it",
                self.stdout[start..end].escape_ascii()
            )
        })?;
        Ok(text.trim_end_matches('\n'))
    }

    /// True on exit code 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0 && !self.timed_out && !self.interrupted
    }
}

impl Executor {
    /// Steps are watched by a supervisor (`supervisor` is the `prodigy` binary to start
    /// it from, with the first step) when given; a stopped step has `grace` between
    /// SIGTERM and SIGKILL.
    pub fn new(
        supervisor: Option<PathBuf>,
        interrupted: Arc<AtomicBool>,
        grace: Duration,
    ) -> Executor {
        Executor {
            supervisor,
            watch: Arc::new(OnceLock::new()),
            groups: Arc::new(Mutex::new(HashSet::new())),
            interrupted,
            grace,
        }
    }

    /// The supervisor, started by the first step that needs it.
    fn watch(&self, exe: &Path) -> std::io::Result<&Watch> {
        let started = self
            .watch
            .get_or_init(|| Watch::start(exe, self.grace).map_err(|e| e.to_string()));
        started.as_ref().map_err(|e| {
            std::io::Error::other(format!(
                "cannot start the step supervisor {} __supervise: {e}",
                exe.display()
            ))
        })
    }

    /// True once the runner was asked to stop.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// The interrupt flag.
    pub fn interrupt_flag(&self) -> &Arc<AtomicBool> {
        &self.interrupted
    }

    /// Stops every running step's process group (after an interrupt): SIGTERM now, SIGKILL
    /// to the groups still running after the grace period.
    pub fn kill_all(&self) {
        let running: Vec<i32> = {
            let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            groups.iter().copied().collect()
        };
        for pid in &running {
            signal_group(*pid, Signal::TERM);
        }
        let groups = Arc::clone(&self.groups);
        let grace = self.grace;
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            let groups = groups.lock().unwrap_or_else(|e| e.into_inner());
            // A group that ended was taken out of the set when its step returned.
            for pid in running.iter().filter(|p| groups.contains(p)) {
                signal_group(*pid, Signal::KILL);
            }
        });
    }

    /// Runs one step to its end.
    pub fn run(&self, step: &StepSpec<'_>) -> std::io::Result<StepOutcome> {
        let started = Instant::now();
        let mut cmd = match step.program {
            Program::Shell(command) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(command);
                c
            }
            Program::Exec(program, args) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        let watch = match &self.supervisor {
            Some(exe) => Some(self.watch(exe)?),
            None => None,
        };
        if step.clear_env {
            cmd.env_clear();
            if let Some(path) = std::env::var_os("PATH") {
                cmd.env("PATH", path);
            }
        }
        if let Some(watch) = watch {
            watch.mark(&mut cmd);
        }
        cmd.current_dir(step.cwd)
            .envs(step.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if self.interrupted() {
            return Ok(killed(started, false, true));
        }
        let mut child = cmd.spawn().map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::TOOBIG.raw_os_error() => too_big(step),
            _ => e,
        })?;
        let pid = child.id() as i32;
        if let Some(watch) = watch {
            watch.tell(REGISTER, pid);
        }
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid);
        // An interrupt between the check above and the insert would miss this group.
        if self.interrupted() {
            kill_group(pid);
        }
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // The readers hand over their bytes through shared buffers and say when they are
        // done; a process that left the step's group may keep the pipes open for ever, so
        // they are waited for only briefly once the step has ended.
        let kept = Arc::new(Mutex::new(Vec::new()));
        let out_tail = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let err_kept = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done_rx) = mpsc::channel::<()>();
        if let Some(mut r) = stdout {
            let (log, kept, done) = (Arc::clone(step.log), Arc::clone(&kept), done_tx.clone());
            let (seen, out_tail) = (Arc::clone(&seen), Arc::clone(&out_tail));
            let capture = step.capture.unwrap_or(0);
            let hook = step.lines.clone();
            let mask = step.mask.clone();
            let tee = step.tee.clone();
            std::thread::spawn(move || {
                let mut partial = Vec::new();
                pump(&mut r, &log, mask.as_deref(), tee.as_ref(), |chunk| {
                    seen.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() < capture {
                        let room = capture - kept.len();
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    drop(kept);
                    keep_tail(&out_tail, chunk, STDOUT_TAIL + 1);
                    if let Some(hook) = &hook {
                        // Only the new bytes are searched: a line of many chunks was
                        // searched again whole for each (50 MiB took 38 s).
                        let mut from = partial.len();
                        partial.extend_from_slice(chunk);
                        let mut start = 0;
                        while let Some(n) = memchr::memchr(b'\n', &partial[from..]) {
                            hook(&partial[start..from + n]);
                            start = from + n + 1;
                            from = start;
                        }
                        partial.drain(..start);
                    }
                });
                if let Some(hook) = &hook
                    && !partial.is_empty()
                {
                    hook(&partial);
                }
                let _ = done.send(());
            });
        }
        if let Some(mut r) = stderr {
            let (log, tail, done) = (Arc::clone(step.log), Arc::clone(&tail), done_tx.clone());
            let (mask, keep, err_kept) =
                (step.mask.clone(), step.keep_stderr, Arc::clone(&err_kept));
            let tee = step.tee.clone();
            std::thread::spawn(move || {
                pump(&mut r, &log, mask.as_deref(), tee.as_ref(), |chunk| {
                    if keep {
                        let mut kept = err_kept.lock().unwrap_or_else(|e| e.into_inner());
                        let room = MAX_CAPTURE.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    keep_tail(&tail, chunk, STDERR_TAIL);
                });
                let _ = done.send(());
            });
        }
        drop(done_tx);
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            status
        });
        // Until it ends, its time limit passes, or the runner is interrupted: the last two
        // stop its group, SIGTERM first (it may clean up within the grace period), then
        // SIGKILL. Every step is stopped so, wherever it runs (an interrupted session's
        // step ran on to its end).
        let mut timed_out = false;
        let deadline = step.timeout.map(|limit| Instant::now() + limit);
        loop {
            let slice = deadline.map_or(INTERRUPT_POLL, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(INTERRUPT_POLL)
            });
            match rx.recv_timeout(slice) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let past = deadline.is_some_and(|d| Instant::now() >= d);
            if past || self.interrupted() {
                timed_out = past;
                signal_group(pid, Signal::TERM);
                if rx.recv_timeout(self.grace).is_err() {
                    kill_group(pid);
                }
                break;
            }
        }
        let status = waiter
            .join()
            .map_err(|_| std::io::Error::other("step waiter panicked"))??;
        let duration = started.elapsed();
        // Whatever the shell left running in its group goes with it.
        kill_group(pid);
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        if let Some(watch) = watch {
            watch.tell(STRIKE_OFF, pid);
        }
        let grace = Instant::now() + READER_GRACE;
        while done_rx
            .recv_timeout(grace.saturating_duration_since(Instant::now()))
            .is_ok()
        {}
        let stdout = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
        let take_tail = |tail: &Mutex<Vec<u8>>, most: usize| {
            let mut tail = std::mem::take(&mut *tail.lock().unwrap_or_else(|e| e.into_inner()));
            tail.drain(..tail.len().saturating_sub(most));
            tail
        };
        let stderr = take_tail(&tail, STDERR_TAIL);
        // One byte more when there was more: a tail that long begins inside a line.
        let stdout_tail = take_tail(&out_tail, STDOUT_TAIL + 1);
        let interrupted = !timed_out && self.interrupted() && !status.success();
        Ok(StepOutcome {
            exit_code: if timed_out {
                TIMEOUT_EXIT
            } else {
                code(status)
            },
            timed_out,
            interrupted,
            stdout,
            stdout_tail,
            stdout_bytes: if step.capture.is_some() {
                seen.load(std::sync::atomic::Ordering::Relaxed)
            } else {
                0
            },
            stderr_tail: String::from_utf8_lossy(&stderr).into_owned(),
            stderr: std::mem::take(&mut *err_kept.lock().unwrap_or_else(|e| e.into_inner())),
            duration,
        })
    }
}

/// Adds `chunk` to a tail kept of a stream: at least its last `most` bytes (cut back
/// when twice that, so bytes are moved once per `most` written).
fn keep_tail(tail: &Mutex<Vec<u8>>, chunk: &[u8], most: usize) {
    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
    tail.extend_from_slice(chunk);
    if tail.len() > 2 * most {
        let cut = tail.len() - most;
        tail.drain(..cut);
    }
}

/// E2BIG, explained: what is too big, and what to do instead.
fn too_big(step: &StepSpec<'_>) -> std::io::Error {
    let command = step.shown().len();
    let total: usize = command
        + step
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    let (what, len) = step
        .env
        .iter()
        .map(|(k, v)| (format!("the variable {k}"), k.len() + v.len() + 1))
        .chain([("the command".to_owned(), command)])
        .max_by_key(|(_, len)| *len)
        .unwrap_or_default();
    std::io::Error::new(
        std::io::ErrorKind::ArgumentListTooLong,
        format!(
            "the step's command and environment are too big to start a program ({total} \
             bytes; Linux allows 128 KiB per string, about 2 MiB in all): the largest is \
             {what} ({len} bytes); pass big values in a file"
        ),
    )
}

fn killed(started: Instant, timed_out: bool, interrupted: bool) -> StepOutcome {
    StepOutcome {
        exit_code: 130,
        timed_out,
        interrupted,
        stdout: Vec::new(),
        stdout_bytes: 0,
        stdout_tail: Vec::new(),
        stderr_tail: String::new(),
        stderr: Vec::new(),
        duration: started.elapsed(),
    }
}

fn kill_group(pid: i32) {
    signal_group(pid, Signal::KILL);
}

fn signal_group(pid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The most of a line held back for masking: a longer line is masked in pieces
/// (`Masker::piece`), each cut where every secret begun before the cut is whole in what is
/// held, a run of secrets across the cut masked with the piece before it. So is what
/// follows the start of a secret of several lines that has not ended within this much.
const MASK_LINE: usize = 1 << 20;

/// Copies what the step writes to the log and hands it to `each`; with a mask or a tee,
/// whole lines at a time, each masked first (and then told to the tee).
fn pump(
    r: &mut impl Read,
    log: &Arc<Mutex<File>>,
    mask: Option<&Masker>,
    tee: Option<&LineHook>,
    mut each: impl FnMut(&[u8]),
) {
    let mask = mask.filter(|m| !m.is_empty());
    let lines = mask.is_some() || tee.is_some();
    // How many bytes at the start of `held` belong to a run of secrets whose mask went
    // out with the piece before.
    let mut head = 0;
    let mut out = |held: &[u8], cut: usize| {
        let masked;
        let bytes = match mask {
            Some(m) => {
                (masked, head) = m.piece(held, head, cut);
                &masked[..]
            }
            None => &held[..cut],
        };
        each(bytes);
        if let Some(tee) = tee {
            for line in bytes.split_inclusive(|b| *b == b'\n') {
                tee(line.strip_suffix(b"\n").unwrap_or(line));
            }
        }
        let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(bytes);
    };
    let mut held = Vec::new();
    // Where a line end may be in `held`: only in the new bytes, unless some were held
    // back for a secret (searching all of a long line for each read was quadratic).
    let mut search_from = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if !lines => out(&buf[..n], n),
            Ok(n) => {
                held.extend_from_slice(&buf[..n]);
                let last_end =
                    memchr::memrchr(b'\n', &held[search_from..]).map(|at| search_from + at);
                let long = held.len() > MASK_LINE;
                // Too long to hold: cut where each secret begun before the cut is whole.
                let piece = |m: &Masker| held.len().saturating_sub(m.longest() - 1);
                let cut = match (last_end, mask) {
                    // A secret of several lines may have begun: held back until it is
                    // whole (or cannot be), so the mask finds it in one piece.
                    (Some(at), Some(m)) => match m.safe_cut(&held, at + 1) {
                        0 if long => piece(m),
                        cut => cut,
                    },
                    (Some(at), None) => at + 1,
                    (None, Some(m)) if long => piece(m),
                    (None, None) if long => held.len(),
                    (None, _) => 0,
                };
                if cut > 0 {
                    out(&held, cut);
                    held.drain(..cut);
                }
                search_from = if last_end.is_some_and(|at| at + 1 > cut) {
                    0
                } else {
                    held.len()
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if !held.is_empty() {
        out(&held, held.len());
    }
}

/// The variable naming a step's supervisor (its process id) in the step's environment.
pub const SUPERVISOR_ENV: &str = "PRODIGY_STEP_SUPERVISOR";

/// A step's process group starts to be watched.
const REGISTER: u8 = b'+';

/// A step's process group is no longer watched (the step ended).
const STRIKE_OFF: u8 = b'-';

/// One message to the supervisor: its kind and a process group's id; shorter than
/// `PIPE_BUF`, so writers never interleave.
fn message(kind: u8, group: i32) -> [u8; 5] {
    let [a, b, c, d] = group.to_le_bytes();
    [kind, a, b, c, d]
}

/// The supervisor's process and the pipe to it (see the module's documentation).
#[derive(Debug)]
struct Watch {
    /// The pipe's write end (close-on-exec: only the runner holds it).
    pipe: Option<std::io::PipeWriter>,
    child: Child,
}

impl Watch {
    fn start(exe: &Path, grace: Duration) -> std::io::Result<Watch> {
        let (reader, writer) = std::io::pipe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("__supervise")
            .arg(grace.as_millis().to_string())
            .stdin(reader)
            // It says nothing, and must not hold the runner's output open after its death.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Not in the runner's group: a kill of that group leaves it to stop the steps.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn()?;
        Ok(Watch {
            pipe: Some(writer),
            child,
        })
    }

    /// The variable each step's environment has: the supervisor's id, by which it finds a
    /// step that started but was not registered yet when the runner died.
    fn mark(&self, cmd: &mut Command) {
        cmd.env(SUPERVISOR_ENV, self.child.id().to_string());
    }

    /// Tells the supervisor that the step in group `pid` started ([`REGISTER`]) or ended
    /// ([`STRIKE_OFF`]: its group is no longer the supervisor's to stop).
    fn tell(&self, kind: u8, pid: i32) {
        if let Some(pipe) = &self.pipe {
            let _ = rustix::io::write(pipe.as_fd(), &message(kind, pid));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The end of the pipe ends the supervisor; no step is registered any more.
        self.pipe.take();
        let _ = self.child.wait();
    }
}

/// The supervisor's body (`prodigy __supervise GRACE_MS`, its standard input the pipe from
/// the runner): keeps the registered process groups until the pipe ends, then stops those
/// whose leader is still running — SIGTERM, then SIGKILL to what is left after the grace.
/// Returns the exit code.
pub fn supervise(args: &[String]) -> i32 {
    let (Some(grace), None) = (
        args.first().and_then(|g| g.parse::<u64>().ok()),
        args.get(1),
    ) else {
        return 2;
    };
    // A terminal's signals are the runner's to act on; this process ends with the pipe.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP] {
        let _ = signal_hook::flag::register(signal, Arc::new(AtomicBool::new(false)));
    }
    // Each group by its leader's pidfd: a group whose leader ended is not stopped (the
    // runner reaped the leader, and the id may be another's by now).
    let mut groups = std::collections::HashMap::new();
    let mut stdin = std::io::stdin().lock();
    let mut received = [0u8; 5];
    while stdin.read_exact(&mut received).is_ok() {
        let [kind, a, b, c, d] = received;
        let Some(pid) = Pid::from_raw(i32::from_le_bytes([a, b, c, d])) else {
            continue;
        };
        match kind {
            REGISTER => {
                // A leader already gone was reaped and struck off, or is the runner's to
                // reap: nothing to watch.
                if let Ok(fd) =
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                {
                    groups.insert(pid, fd);
                }
            }
            STRIKE_OFF => {
                groups.remove(&pid);
            }
            _ => return 2,
        }
    }
    let mut running: Vec<Pid> = groups
        .iter()
        .filter(|(_, leader)| !ended(leader))
        .map(|(pid, _)| *pid)
        .collect();
    for pid in &running {
        let _ = rustix::process::kill_process_group(*pid, Signal::TERM);
    }
    // A step started a moment before the runner died may not have been registered yet:
    // every group leader whose environment names this supervisor is a step's. The
    // registered groups have their SIGTERM already, and have their SIGKILL below even if
    // this search of /proc fails.
    let found = std::panic::catch_unwind(|| unregistered_steps(&groups)).unwrap_or_default();
    for pid in found {
        let _ = rustix::process::kill_process_group(pid, Signal::TERM);
        running.push(pid);
    }
    let until = Instant::now() + Duration::from_millis(grace);
    while !running.is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        running.retain(|pid| rustix::process::test_kill_process_group(*pid).is_ok());
    }
    for pid in &running {
        let _ = rustix::process::kill_process_group(*pid, Signal::KILL);
    }
    0
}

/// The group leaders (not in `known`) whose environment has [`SUPERVISOR_ENV`] naming this
/// process: steps that started but were not registered.
fn unregistered_steps<T>(known: &std::collections::HashMap<Pid, T>) -> Vec<Pid> {
    let me = format!("{SUPERVISOR_ENV}={}", std::process::id());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter(|pid| !known.contains_key(pid))
        .filter(|pid| leads_its_group(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{}/environ", pid.as_raw_nonzero()))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == me.as_bytes()))
        })
        .collect()
}

/// True when process `pid` leads its process group, as `/proc/<pid>/stat` says (kernel
/// threads, whose group is 0, do not).
fn leads_its_group(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) else {
        return false;
    };
    // `pid (comm) state ppid pgrp …`: the name may hold spaces and parentheses.
    let fields = stat.rfind(')').map(|end| &stat[end + 1..]);
    fields
        .and_then(|f| f.split_ascii_whitespace().nth(2))
        .and_then(|group| group.parse::<i32>().ok())
        == Some(pid.as_raw_nonzero().get())
}

/// True when the process behind `pidfd` has ended.
fn ended(pidfd: &std::os::fd::OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A line of several MiB, with no line break, carrying a secret across every 16 KiB
    /// boundary (where reads end) and more between: cut into pieces to mask, no piece ends
    /// inside a secret (before, the secret across the cut past 1 MiB went out in two
    /// pieces, each unmasked).
    #[test]
    fn a_long_line_is_never_cut_inside_a_secret() {
        let secret = "s3cr3t-VALUE-0123456789".to_owned();
        let mask = Masker::new([&secret]);
        let mut line = vec![b'x'; 3 * MASK_LINE];
        let mut n = 0;
        let mut at = 100;
        while at + secret.len() < line.len() {
            line[at..at + secret.len()].copy_from_slice(secret.as_bytes());
            n += 1;
            // Across the next read boundary, or 1,000 bytes on.
            let boundary = ((at + 40) / 16384 + 1) * 16384 - 10;
            at = boundary.min(at + 1000 + n % 41);
        }
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(File::create(dir.path().join("log")).unwrap()));
        let mut out = Vec::new();
        pump(&mut &line[..], &log, Some(&mask), None, |b| {
            out.extend_from_slice(b)
        });
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("s3cr3t"), "a secret went out unmasked");
        assert_eq!(text.matches(crate::workflow::env::MASK).count(), n);
        let logged = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(logged, text);
    }

    /// A line of secrets that overlap one another all the way (one secret repeated, or
    /// two that each begin where the other ends) goes out in pieces as it is read, its
    /// masks the same as the whole line's: before, every cut fell inside some secret, so
    /// the line was held whole however long it grew.
    #[test]
    fn a_line_of_overlapping_secrets_is_not_held_whole() {
        struct Counting<'a>(&'a [u8], Arc<AtomicUsize>);
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1.fetch_add(n, Ordering::SeqCst);
                Ok(n)
            }
        }
        let cases = [
            (vec!["zzzzzzzz".to_owned()], b"z".repeat(4 * MASK_LINE)),
            (
                vec!["pass1234".to_owned(), "1234pass".to_owned()],
                b"pass1234".repeat(MASK_LINE / 2),
            ),
        ];
        for (secrets, run) in cases {
            let mask = Masker::new(&secrets);
            let line = [&b"before "[..], &run, b" after\nend\n"].concat();
            let dir = tempfile::tempdir().unwrap();
            let log = Arc::new(Mutex::new(File::create(dir.path().join("log")).unwrap()));
            let read = Arc::new(AtomicUsize::new(0));
            // The most read between two pieces going out.
            let (mut last, mut most) = (0, 0);
            let mut out = Vec::new();
            pump(
                &mut Counting(&line, read.clone()),
                &log,
                Some(&mask),
                None,
                |b| {
                    let now = read.load(Ordering::SeqCst);
                    most = most.max(now - last);
                    last = now;
                    out.extend_from_slice(b)
                },
            );
            // What is held goes out once past MASK_LINE, a read (16 KiB) later at most.
            assert!(
                most <= MASK_LINE + 32 * 1024,
                "{secrets:?}: held {most} bytes"
            );
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text, "before *** after\nend\n", "{secrets:?}");
            assert_eq!(text.as_bytes(), mask.bytes(&line), "{secrets:?}");
        }
    }
}
