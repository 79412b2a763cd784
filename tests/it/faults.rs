//! The torture suite (issue 8), syscall faults: strace's `inject=` fails one system call of
//! `prodigy events append` at a time — each fsync and fdatasync with EIO (and EINTR), each
//! rename with EXDEV and EIO, each write with ENOSPC — and every time the command gives one
//! clear error and a non-zero exit, the ref stays at its old value or moves whole to the new
//! one (only a fault after the ref's rename can leave it moved), a failed fsync is never
//! retried, fsync finds no error, and `gc --prune now` leaves no temp file behind. An EINTR
//! on a write is retried and the append succeeds.
//!
//! strace must be installed (`.ci/run` installs it); the test fails without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{Env, hex, noise, transcript};

const TRACED: &str = "fsync,fdatasync,syncfs,rename,renameat,renameat2,write,pwrite64";

/// Runs `prodigy events append` under strace with `inject` (or none); returns the output
/// and the trace.
fn traced_append(env: &Env, inject: Option<&str>, trace: &Path) -> Output {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"])
        .arg(trace)
        .args(["-e", &format!("trace={TRACED}")]);
    if let Some(inject) = inject {
        cmd.args(["-e", &format!("inject={inject}")]);
    }
    cmd.arg("--")
        .arg(env.std_cmd().get_program())
        .args(["events", "append", "--repo", "api", "--job", "j"]);
    pinned(env, &mut cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace is needed by the fault tests (apt-get install strace)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"event_type\":\"second\"}\n")
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The refs of job `j`'s event log (its writers'), with their values: what an append that
/// fails must leave as it was.
fn job_refs(env: &Env) -> String {
    env.ok(&["ref", "list", "events/api/j"], b"")
}

/// Appends the first event of job `j`; returns its refs.
fn first_event(env: &Env) -> String {
    env.ok(
        &["events", "append", "--repo", "api", "--job", "j"],
        b"{\"event_type\":\"first\"}\n",
    );
    job_refs(env).trim().to_owned()
}

/// Gives a wrapper command (strace, bash) the test's pinned environment and directory,
/// those of [`Env::std_cmd`].
fn pinned(env: &Env, cmd: &mut Command) {
    let std = env.std_cmd();
    cmd.env_clear();
    for (k, v) in std.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(env.scratch());
}

fn is_call(line: &str, syscall: &str) -> bool {
    line.split_once(' ')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{syscall}(")))
}

/// Every file under the home whose name says it is a temp file.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "tmp")
                || p.starts_with(dir.join("objects/tmp"))
            {
                out.push(p);
            }
        }
    }
    out
}

struct Case {
    inject: String,
    /// The errno's text in the error line (`None`: the call is retried and succeeds).
    message: Option<&'static str>,
    /// Check that no fsync-family call follows the failed one.
    fsync: bool,
}

#[test]
#[allow(clippy::print_stderr)] // the figure of a run
fn every_injected_syscall_fault_fails_cleanly() {
    let env = Env::new();
    let old = first_event(&env);
    let trace_path = env.dir.path().join("trace");
    let mut head = old.clone();
    let mut events = 1;
    let mut injected = 0;
    // Each kind of fault on its 1st, 2nd, 3rd… call until there is no such call: how many
    // calls an append makes varies a little (a new fan-out directory needs one more fsync),
    // so a call number that does not come up is tried three times before the kind ends.
    for (syscall, errno, message, fsync) in [
        ("fsync", "EIO", Some("Input/output error"), true),
        ("fdatasync", "EIO", Some("Input/output error"), true),
        ("fsync", "EINTR", None, false),
        (
            "renameat",
            "EXDEV",
            Some("Invalid cross-device link"),
            false,
        ),
        ("renameat", "EIO", Some("Input/output error"), false),
        ("write", "ENOSPC", Some("No space left on device"), false),
        ("write", "EINTR", None, false),
    ] {
        let mut when = 1;
        let mut misses = 0;
        while misses < 3 {
            let case = Case {
                inject: format!("{syscall}:error={errno}:when={when}"),
                message,
                fsync,
            };
            let fired = check_case(&env, &case, &trace_path, &mut head, &mut events);
            if fired {
                injected += 1;
                when += 1;
                misses = 0;
            } else {
                misses += 1;
            }
        }
        assert!(when > 1, "{syscall}: never injected");
    }
    eprintln!("{injected} faults injected");
    assert!(injected >= 30, "only {injected} faults injected");
}

/// Runs one case; returns whether the fault was injected (else the append ran clean).
fn check_case(
    env: &Env,
    case: &Case,
    trace_path: &Path,
    head: &mut String,
    events: &mut usize,
) -> bool {
    {
        let out = traced_append(env, Some(&case.inject), trace_path);
        let trace = std::fs::read_to_string(trace_path).unwrap();
        let fired = trace.contains("(INJECTED)");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let now = job_refs(env).trim().to_owned();
        let shown = env
            .ok(&["events", "show", "j", "--repo", "api", "--json"], b"")
            .lines()
            .count();
        match case.message.filter(|_| fired) {
            None => {
                assert!(
                    out.status.success(),
                    "{}: {}",
                    case.inject,
                    transcript(&out)
                );
                assert_ne!(&now, head, "{}: the ref did not move", case.inject);
                *events += 1;
            }
            Some(message) => {
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "{}: {}",
                    case.inject,
                    transcript(&out)
                );
                let errors: Vec<&str> =
                    stderr.lines().filter(|l| l.starts_with("error:")).collect();
                assert_eq!(errors.len(), 1, "{}: {stderr}", case.inject);
                assert!(errors[0].contains(message), "{}: {stderr}", case.inject);
                // The ref is where it was, or moved whole (a fault after its rename).
                if &now != head {
                    *events += 1;
                }
                if case.fsync {
                    let after: Vec<&str> = trace
                        .lines()
                        .skip_while(|l| !l.contains("(INJECTED)"))
                        .skip(1)
                        .filter(|l| {
                            ["fsync", "fdatasync", "syncfs"]
                                .iter()
                                .any(|s| is_call(l, s))
                        })
                        .collect();
                    assert!(
                        after.is_empty(),
                        "{}: sync calls after the failed one: {after:?}",
                        case.inject
                    );
                }
            }
        }
        assert_eq!(shown, *events, "{}: {} events shown", case.inject, shown);
        *head = now;
        let fsck = env.run(&["fsck"], b"");
        assert_eq!(
            fsck.status.code(),
            Some(0),
            "{}: {}",
            case.inject,
            transcript(&fsck)
        );
        env.ok(&["gc", "--prune", "now"], b"");
        let temps = temp_files(&env.home());
        assert!(
            temps.is_empty(),
            "{}: temp files left after gc: {temps:?}",
            case.inject
        );
        fired
    }
}

/// `bash -c 'ulimit -f BLOCKS; exec prodigy ARGS…'` with the test's environment.
fn limited(env: &Env, blocks: u64, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &format!("ulimit -f {blocks}; exec \"$0\" \"$@\"")])
        .arg(env.std_cmd().get_program())
        .args(args);
    pinned(env, &mut cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// A file-size limit (`ulimit -f`): the write that crosses it fails with EFBIG (SIGXFSZ
/// does not kill the process), the command says so, the ref stays, no temp file is left;
/// what fits still works.
#[test]
fn a_file_size_limit_fails_writes_cleanly() {
    let env = Env::new();
    let old = first_event(&env);
    let out = limited(
        &env,
        64,
        &["hash-object", "-w", "--stdin"],
        &noise(0, 1 << 20),
    );
    let stderr = crate::common::assert_one_line_error(&out, 1);
    assert!(stderr.contains("File too large"), "{stderr}");
    // An append whose batch object does not fit: nothing appended.
    let big: String = (0..200)
        .map(|n| {
            format!(
                "{{\"event_type\":\"x\",\"n\":{n},\"blob\":\"{}\"}}\n",
                hex(&noise(n, 1024))
            )
        })
        .collect();
    // In one batch (stored by the append), then in two (the first stored by the thread
    // that stores sealed batches while the input is read).
    for batch_size in ["1000", "100"] {
        let out = limited(
            &env,
            64,
            &[
                "events",
                "append",
                "--repo",
                "api",
                "--job",
                "j",
                "--batch-size",
                batch_size,
            ],
            big.as_bytes(),
        );
        let stderr = crate::common::assert_one_line_error(&out, 1);
        assert!(stderr.contains("File too large"), "{stderr}");
        assert_eq!(job_refs(&env).trim(), old);
        assert!(
            temp_files(&env.home()).is_empty(),
            "{:?}",
            temp_files(&env.home())
        );
    }
    // What fits goes through under the same limit.
    let out = limited(
        &env,
        64,
        &["events", "append", "--repo", "api", "--job", "j"],
        b"{\"event_type\":\"small\"}\n",
    );
    assert!(out.status.success(), "{}", transcript(&out));
    assert_eq!(
        env.ok(&["events", "show", "j", "--repo", "api", "--json"], b"")
            .lines()
            .count(),
        2
    );
    env.ok(&["fsck"], b"");
}

/// A file system out of inodes (a tmpfs with few): writes fail with a clear error, the
/// store stays readable, and once gc frees inodes appends work again.
#[test]
fn running_out_of_inodes_fails_cleanly_and_recovers() {
    let env = Env::new();
    crate::common::on_tmpfs(&env.home(), "size=64m,nr_inodes=160", || {
        env.ok(
            &["events", "append", "--repo", "api", "--job", "j"],
            b"{\"event_type\":\"first\"}\n",
        );
        let old = job_refs(&env).trim().to_owned();
        // Unreachable blobs until the inodes run out.
        let mut n = 0;
        let stderr = loop {
            let out = env.run(
                &["hash-object", "-w", "--stdin"],
                format!("filler {n}").as_bytes(),
            );
            if !out.status.success() {
                break crate::common::assert_one_line_error(&out, 1);
            }
            n += 1;
            assert!(n < 1000, "the inodes never ran out");
        };
        assert!(stderr.contains("No space left on device"), "{stderr}");
        let out = env.run(
            &["events", "append", "--repo", "api", "--job", "j"],
            b"{\"event_type\":\"lost\"}\n",
        );
        assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
        assert_eq!(job_refs(&env).trim(), old);
        assert_eq!(
            env.ok(&["events", "show", "j", "--repo", "api", "--json"], b"")
                .lines()
                .count(),
            1
        );
        // gc frees the unreachable blobs' inodes; appends work again.
        env.ok(&["gc", "--prune", "now"], b"");
        env.ok(
            &["events", "append", "--repo", "api", "--job", "j"],
            b"{\"event_type\":\"after\"}\n",
        );
        assert_eq!(
            env.ok(&["events", "show", "j", "--repo", "api", "--json"], b"")
                .lines()
                .count(),
            2
        );
        env.ok(&["fsck"], b"");
    });
}
