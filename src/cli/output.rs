//! Diagnostics on stderr (`error:`, `warning:`, `hint:`, notes), exit codes, the one
//! place where an error becomes its lines and its exit code, and the export target shared
//! by the `export` commands.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use std::sync::{Arc, Mutex};

use crate::object::ObjectError;

/// The exit codes: 0 success, 1 failure, 2 usage error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Success = 0,
    /// The command ran and the answer is "no", or it failed.
    Failure = 1,
    /// The command line was wrong.
    Usage = 2,
}

/// A command line that parses but makes no sense; exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Writes diagnostics to stderr, honouring `--quiet`, `--verbose` and colour.
#[derive(Clone)]
pub struct Diag {
    stderr: Arc<Mutex<dyn Write + Send>>,
    color: bool,
    quiet: bool,
    verbose: bool,
}

impl Diag {
    /// A writer of diagnostics to `stderr`.
    pub fn new(
        stderr: Arc<Mutex<dyn Write + Send>>,
        color: bool,
        quiet: bool,
        verbose: bool,
    ) -> Diag {
        Diag {
            stderr,
            color,
            quiet,
            verbose,
        }
    }

    /// One line of diagnostics. Control characters in `text` (an agent's stderr, a
    /// workflow's `name:`, an item) are shown as escapes, on a terminal or not: a
    /// diagnostic is one line for people (see [`Printable`]).
    fn line(&self, label: &str, ansi: &str, text: &str) {
        let mut escaped = Printable::new(Vec::with_capacity(text.len()));
        let _ = escaped.write_all(text.as_bytes());
        let _ = escaped.flush();
        let text = String::from_utf8_lossy(&escaped.inner);
        let mut err = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let _ = if label.is_empty() {
            writeln!(err, "{text}")
        } else if self.color {
            writeln!(err, "\x1b[{ansi}m{label}:\x1b[0m {text}")
        } else {
            writeln!(err, "{label}: {text}")
        };
    }

    /// `error: …` (always shown).
    pub fn error(&self, text: &str) {
        self.line("error", "1;31", text);
    }

    /// `warning: …` (hidden by `-q`).
    pub fn warning(&self, text: &str) {
        if !self.quiet {
            self.line("warning", "1;33", text);
        }
    }

    /// `hint: …` (hidden by `-q`).
    pub fn hint(&self, text: &str) {
        if !self.quiet {
            self.line("hint", "1;36", text);
        }
    }

    /// A plain progress note (hidden by `-q`).
    pub fn note(&self, text: &str) {
        if !self.quiet {
            self.line("", "", text);
        }
    }

    /// A note shown only with `-v`.
    pub fn verbose(&self, text: &str) {
        if self.verbose && !self.quiet {
            self.line("", "", text);
        }
    }
}

/// Reports `e` on stderr as one `error:` line (the error and its causes joined by `: `)
/// plus any hints, and returns the exit code. A closed stdout exits quietly with 0.
pub fn report(diag: &Diag, e: &anyhow::Error) -> Exit {
    if e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    }) {
        return Exit::Success;
    }
    let line = e
        .chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    diag.error(&line);
    let mut all = hints(e);
    for hint in line_hints(&line) {
        if !all.contains(&hint) {
            all.push(hint);
        }
    }
    for hint in all {
        diag.hint(&hint);
    }
    if e.chain().any(|c| c.is::<UsageError>()) {
        Exit::Usage
    } else {
        Exit::Failure
    }
}

/// What to do next, read off the error line (the typed `hints` keep only what needs the
/// error's data or an OS error kind): the errors of the lower layers reach the
/// command line under several transparent wrappers, and their words are what the user
/// sees, so the rules match those words. One hint at most.
fn line_hints(line: &str) -> Vec<String> {
    const RULES: &[(&[&str], &str)] = &[
        // Failures carrying a command's own output come first: that output may hold any
        // words.
        (
            &["': setup step at line", "': reduce step at line"],
            "the step's log is in the job's logs/ (`prodigy jobs show <job>`); `prodigy resume <job>` runs it again",
        ),
        (
            &["' stopped: "],
            "the agents' logs are in the job's logs/ (`prodigy jobs show <job>`); `prodigy resume <job>` runs the items left",
        ),
        (
            &[": map.input: "],
            "no item ran: fix the input, then start a new job with `prodigy run`",
        ),
        (
            &["Needed a single revision"],
            "the repository has no commit to start from: make one first (`git commit --allow-empty -m init`)",
        ),
        (
            &[
                "is already used by worktree at",
                "is already checked out at",
            ],
            "the job's branch is checked out there: switch that worktree to another branch, then retry",
        ),
        (
            &["does not honour conditional writes"],
            "use a server with conditional writes (AWS S3, MinIO, R2, s3s-fs…), or the local store (--store \"\")",
        ),
        (
            &["cannot reach http", "cannot reach the AWS endpoint"],
            "check AWS_ENDPOINT_URL (and the AWS credentials) and that the server is up; nothing was changed",
        ),
        (
            &["the bucket '"],
            "create the bucket first, or fix the address in --store / PRODIGY_STORE",
        ),
        (
            &["kept changing under"],
            "many writers are moving this ref at once; retry, nothing was changed",
        ),
        (
            &["lost its lease", "moved under the runner"],
            "another runner may have the job: `prodigy jobs show <job>` says; if none runs it, `prodigy resume <job>`",
        ),
        (
            &["waiting for lock on"],
            "retry once the other process is done, or wait longer with PRODIGY_LOCK_TIMEOUT=2m",
        ),
        (
            &["is running on host '"],
            "a host that died frees the job once its lease expires; then run `prodigy resume` again",
        ),
        (
            &["is running in another process"],
            "wait for it to finish (`prodigy jobs` shows how far it is); a killed runner's lock is released at once",
        ),
        (
            &["is corrupt", "is broken at"],
            "`prodigy fsck` lists everything damaged; `events show --best-effort` reads around a damaged log (docs/troubleshooting.md)",
        ),
        (
            &["no job '"],
            "`prodigy jobs` lists this repository's jobs (`--all-repos` every repository's)",
        ),
        (
            &["no events for job"],
            "`prodigy events ls` lists the jobs with events (`--all-repos` every repository's)",
        ),
        (
            &["in the dead-letter queue of job"],
            "`prodigy dlq list <job>` lists the ids of its dead-lettered items",
        ),
        (
            &["has no refs in"],
            "`prodigy jobs --all-repos` lists the store's jobs (`--store \"\"` the local home's); pick one with --repo",
        ),
        (
            &["changed: expected "],
            "`prodigy ref show <name>` prints its value now; retry with that as --old",
        ),
        (
            &["is not inside a git repository"],
            "run it inside a git repository, or name one with `prodigy run WORKFLOW -p DIR`",
        ),
        (
            &["no object matches the prefix"],
            "`prodigy ref log <name>` and `prodigy jobs show <job>` list ids; check that --home / --store name the right store",
        ),
        (
            &["cannot use config '"],
            "fix or remove the home's config.json (its format: docs/retention-and-gc.md)",
        ),
        (
            &["invalid filter"],
            "the filter language (fields, operators, 'quoted' text) is in docs/dlq.md",
        ),
        (
            &["unknown field", "unknown variant"],
            "the workflow format prodigy reads is in docs/workflows.md",
        ),
        (
            &["no such object in the store"],
            "store the object first (`prodigy hash-object -w`)",
        ),
    ];
    RULES
        .iter()
        .find(|(words, _)| words.iter().any(|w| line.contains(w)))
        .map(|(_, hint)| vec![(*hint).to_owned()])
        .unwrap_or_default()
}

fn hints(e: &anyhow::Error) -> Vec<String> {
    let mut out = Vec::new();
    for cause in e.chain() {
        if matches!(
            cause.downcast_ref::<ObjectError>(),
            Some(ObjectError::NotFound { .. })
        ) {
            out.push("check that --home / --store name the right store; `prodigy fsck` names the refs that reach missing objects".to_owned());
        }
        if let Some(ObjectError::Ambiguous { candidates, .. }) = cause.downcast_ref::<ObjectError>()
        {
            out.push("the candidates are:".to_owned());
            out.extend(candidates.iter().map(|c| format!("  {c}")));
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    out.push("the store's home must be writable; choose another with --home or PRODIGY_HOME".to_owned());
                }
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                    out.push("free some space and retry; nothing was changed".to_owned());
                }
                _ => {}
            }
        }
    }
    out.dedup();
    out
}

/// Where output goes: stdout, or a file written atomically (`-o FILE`).
pub struct ExportTarget {
    file: Option<(tempfile::NamedTempFile, PathBuf)>,
}

impl ExportTarget {
    /// Starts output to `path`, or to stdout when `None`.
    pub fn new(path: Option<&PathBuf>) -> anyhow::Result<ExportTarget> {
        let file = match path {
            Some(path) => {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                let temp = tempfile::Builder::new()
                    .prefix(".prodigy-export.")
                    .suffix(".tmp")
                    .tempfile_in(dir)
                    .with_context(|| format!("cannot create a file in '{}'", dir.display()))?;
                Some((temp, path.clone()))
            }
            None => None,
        };
        Ok(ExportTarget { file })
    }

    /// The writer to use.
    pub fn writer<'a>(
        &'a mut self,
        stdout: &'a mut (dyn std::io::Write + Send),
    ) -> Box<dyn std::io::Write + 'a> {
        match &mut self.file {
            Some((temp, _)) => Box::new(std::io::BufWriter::new(temp.as_file_mut())),
            None => Box::new(stdout),
        }
    }

    /// Moves a finished file into place.
    pub fn finish(self) -> anyhow::Result<()> {
        if let Some((temp, path)) = self.file {
            temp.as_file()
                .sync_all()
                .context("cannot fsync the export")?;
            temp.persist(&path)
                .with_context(|| format!("cannot write '{}'", path.display()))?;
        }
        Ok(())
    }
}

/// A bar of `n` against `max` in at most `width` cells, in eighths of a cell (`█▌`), for
/// the small charts of `events stats` and `dlq analyze`; at least a sliver for any n > 0.
pub fn bar(n: u64, max: u64, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    if n == 0 || max == 0 {
        return String::new();
    }
    let eighths = ((n as u128 * width as u128 * 8).div_ceil(max as u128)).max(1) as usize;
    let mut out = "█".repeat(eighths / 8);
    out.push_str(PARTS[eighths % 8]);
    out
}

/// Quotes a CSV field when it needs it (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::bar;

    #[test]
    fn bars_scale_to_the_largest_count() {
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(5, 10, 4), "██");
        assert_eq!(bar(1, 16, 2), "▏");
        assert_eq!(bar(1, 1000, 20), "▏");
        assert_eq!(bar(0, 10, 4), "");
        assert_eq!(bar(3, 8, 1), "▍");
    }
}

/// A writer for a terminal that shows control characters as escapes (`\x1b`, `\x07`,
/// `\u{9b}`) instead of sending them: text from items, agents and workflow files (an
/// agent's stderr, a `name:`) cannot retitle the window, clear the screen or move the
/// cursor. Newlines and tabs pass. As git and ripgrep, only on a terminal; JSON output
/// escapes them itself.
pub struct Printable<W: Write> {
    inner: W,
    /// A UTF-8 lead byte `0xc2` at the end of the last write (C1 controls are `c2 80..9f`).
    lead: bool,
}

impl<W: Write> Printable<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Printable<W> {
        Printable { inner, lead: false }
    }
}

impl<W: Write> Write for Printable<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len());
        for &b in buf {
            if self.lead {
                self.lead = false;
                if (0x80..=0x9f).contains(&b) {
                    out.extend_from_slice(format!("\\u{{{b:x}}}").as_bytes());
                    continue;
                }
                out.push(0xc2);
            }
            match b {
                b'\n' | b'\t' => out.push(b),
                0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                0xc2 => self.lead = true,
                _ => out.push(b),
            }
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.lead) {
            self.inner.write_all(&[0xc2])?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod printable_tests {
    use super::*;

    #[test]
    fn controls_become_escapes_and_text_stays() {
        let mut p = Printable::new(Vec::new());
        // Split inside a C1 control and inside a two-byte letter.
        p.write_all(b"a\x1b]0;TITLE\x07\x1b[2J\tb\n\xc2").unwrap();
        p.write_all(b"\x9b c\xc3\xa9 \xc2").unwrap();
        p.write_all(b"\xa0\x7f").unwrap();
        p.flush().unwrap();
        assert_eq!(
            String::from_utf8(p.inner).unwrap(),
            "a\\x1b]0;TITLE\\x07\\x1b[2J\tb\n\\u{9b} c\u{e9} \u{a0}\\x7f"
        );
    }
}
