//! Running one shell step: `sh -c` in its own process group, output to the agent's log
//! (and captured when asked), stopped with its whole group on a time-out or an interrupt:
//! SIGTERM, then SIGKILL after a grace period ([`KILL_GRACE_ENV`], 5 s by default, as
//! `timeout(1)` and CI runners do), so a step can clean up.
//!
//! A step survives a runner killed with SIGKILL unless something kills its group: the
//! kernel tells no one. So each step runs under a *supervisor* — the `prodigy` binary
//! started as `prodigy __supervise PARENT_PID GRACE_MS -- sh -c CMD` — which asks the
//! kernel for a signal when its parent dies (`PR_SET_PDEATHSIG`) and then stops its process
//! group the same way. The
//! library runs steps directly (without that guarantee) when no supervisor is given.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::workflow::env::Masker;

/// Captured output kept per step.
pub const MAX_CAPTURE: usize = 1 << 20;

/// Standard error kept for messages.
pub const STDERR_TAIL: usize = 2048;

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
    /// Steps run under `supervisor` (the `prodigy` binary) when given; a stopped step has
    /// `grace` between SIGTERM and SIGKILL.
    pub fn new(
        supervisor: Option<PathBuf>,
        interrupted: Arc<AtomicBool>,
        grace: Duration,
    ) -> Executor {
        Executor {
            supervisor,
            groups: Arc::new(Mutex::new(HashSet::new())),
            interrupted,
            grace,
        }
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
        let mut cmd = match &self.supervisor {
            Some(exe) => {
                let mut c = Command::new(exe);
                c.arg("__supervise")
                    .arg(std::process::id().to_string())
                    .arg(self.grace.as_millis().to_string())
                    .arg("--");
                c
            }
            None => match step.program {
                Program::Shell(_) => Command::new("sh"),
                Program::Exec(program, _) => Command::new(program),
            },
        };
        match step.program {
            Program::Shell(command) => {
                if self.supervisor.is_some() {
                    cmd.arg("sh");
                }
                cmd.arg("-c").arg(command);
            }
            Program::Exec(program, args) => {
                if self.supervisor.is_some() {
                    cmd.arg(program);
                }
                cmd.args(args);
            }
        }
        if step.clear_env {
            cmd.env_clear();
            if let Some(path) = std::env::var_os("PATH") {
                cmd.env("PATH", path);
            }
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
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let err_kept = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done_rx) = mpsc::channel::<()>();
        if let Some(mut r) = stdout {
            let (log, kept, done) = (Arc::clone(step.log), Arc::clone(&kept), done_tx.clone());
            let seen = Arc::clone(&seen);
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
                    if let Some(hook) = &hook {
                        partial.extend_from_slice(chunk);
                        let mut start = 0;
                        while let Some(n) = partial[start..].iter().position(|b| *b == b'\n') {
                            hook(&partial[start..start + n]);
                            start += n + 1;
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
                    let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                    tail.extend_from_slice(chunk);
                    if tail.len() > 2 * STDERR_TAIL {
                        let cut = tail.len() - STDERR_TAIL;
                        tail.drain(..cut);
                    }
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
        let mut timed_out = false;
        match step.timeout {
            Some(limit) => {
                if rx.recv_timeout(limit).is_err() {
                    timed_out = true;
                    // SIGTERM first: the step may clean up within the grace period.
                    signal_group(pid, Signal::TERM);
                    if rx.recv_timeout(self.grace).is_err() {
                        kill_group(pid);
                    }
                }
            }
            None => {
                let _ = rx.recv();
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
        let grace = Instant::now() + READER_GRACE;
        while done_rx
            .recv_timeout(grace.saturating_duration_since(Instant::now()))
            .is_ok()
        {}
        let stdout = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
        let mut stderr = std::mem::take(&mut *tail.lock().unwrap_or_else(|e| e.into_inner()));
        if stderr.len() > STDERR_TAIL {
            stderr.drain(..stderr.len() - STDERR_TAIL);
        }
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

/// The most of a line held back for masking: a longer line is masked in pieces (a secret
/// cut between two pieces would pass; no secret is that long a line).
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
    let mut out = |bytes: &[u8]| {
        let masked;
        let bytes = match mask {
            Some(m) => {
                masked = m.bytes(bytes);
                &masked[..]
            }
            None => bytes,
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
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if !lines => out(&buf[..n]),
            Ok(n) => {
                held.extend_from_slice(&buf[..n]);
                let cut = match held.iter().rposition(|b| *b == b'\n') {
                    Some(at) => at + 1,
                    None if held.len() > MASK_LINE => held.len(),
                    None => 0,
                };
                if cut > 0 {
                    out(&held[..cut]);
                    held.drain(..cut);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if !held.is_empty() {
        out(&held);
    }
}

/// The supervisor's body (`prodigy __supervise PARENT_PID GRACE_MS -- PROGRAM ARGS…`): dies
/// with its parent, stopping its whole process group (SIGTERM, then SIGKILL after the
/// grace); otherwise runs PROGRAM and exits with its status. Returns the exit code.
pub fn supervise(args: &[String]) -> i32 {
    let (Some(parent), Some(grace), Some("--"), Some(program)) = (
        args.first().and_then(|p| p.parse::<i32>().ok()),
        args.get(1).and_then(|g| g.parse::<u64>().ok()),
        args.get(2).map(String::as_str),
        args.get(3),
    ) else {
        return 2;
    };
    let grace = Duration::from_millis(grace);
    let group = rustix::process::getpgrp();
    let kill_all = move || {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    };
    let stopping = Arc::new(AtomicBool::new(false));
    // The parent's death arrives as SIGTERM; so do a time-out's and an interrupt's stops,
    // sent to the whole group. The group has the grace to end; then it is killed.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(_) => return 126,
    };
    let stop = Arc::clone(&stopping);
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            stop.store(true, Ordering::SeqCst);
            // A stop from the runner reached the whole group; the parent's death (and a
            // signal for this process alone) only this one: pass it on.
            let orphaned = rustix::process::getppid()
                .map(Pid::as_raw_nonzero)
                .map(|p| p.get())
                != Some(parent);
            if signal != signal_hook::consts::SIGTERM || orphaned {
                let _ = rustix::process::kill_process_group(group, Signal::TERM);
            }
            std::thread::sleep(grace);
            kill_all();
        }
    });
    if rustix::process::set_parent_process_death_signal(Some(Signal::TERM)).is_err() {
        return 126;
    }
    // The parent may have died before the request took effect.
    if rustix::process::getppid()
        .map(Pid::as_raw_nonzero)
        .map(|p| p.get())
        != Some(parent)
    {
        kill_all();
        return 1;
    }
    let status = Command::new(program).args(&args[4..]).status();
    // Stopped: what is left of the group (the step's own children) goes now; the step
    // itself had its chance to clean up.
    if stopping.load(Ordering::SeqCst) {
        kill_all();
    }
    match status {
        Ok(s) => code(s),
        Err(_) => 127,
    }
}
