//! Diagnostics on stderr (`error:`, `warning:`, `hint:`, notes), exit codes, the one
//! place where an error becomes its lines and its exit code, and the export target shared
//! by the `export` commands.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use std::sync::{Arc, Mutex};

use crate::store::object::ObjectError;

/// The exit codes: 0 success, 1 failure, 2 usage error, 3 a job that finished with
/// failed items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Success = 0,
    /// The command ran and the answer is "no", or it failed.
    Failure = 1,
    /// The command line was wrong.
    Usage = 2,
    /// A job (`run`, `resume`, `dlq retry`) ran to its end, but items failed: they are in
    /// the dead-letter queue (or were skipped).
    Incomplete = 3,
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

    /// True with `-v`.
    pub fn is_verbose(&self) -> bool {
        self.verbose
    }

    /// True with `-q`.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// A line a step printed, `prefix` before it (hidden by `-q`); control characters are
    /// shown as escapes, as in every diagnostic.
    pub fn output(&self, prefix: &str, line: &[u8]) {
        if !self.quiet {
            // Bytes that are not UTF-8 are shown escaped, never replaced.
            let mut text = String::new();
            for chunk in line.utf8_chunks() {
                text.push_str(chunk.valid());
                for b in chunk.invalid() {
                    text.push_str(&format!("\\x{b:02x}"));
                }
            }
            self.line("", "", &format!("{prefix}{text}"));
        }
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

/// The most characters an `error:` line keeps; what an error quotes (a 100,000-character
/// pattern, a 5,000-digit id) is cut in its middle, saying how much went.
const MAX_ERROR_LINE: usize = 2000;

/// `line`, its middle left out past [`MAX_ERROR_LINE`] characters (its start says what
/// failed, its end what became of it: "nothing was appended").
pub(crate) fn within_a_line(line: &str) -> std::borrow::Cow<'_, str> {
    let count = line.chars().count();
    if count <= MAX_ERROR_LINE {
        return line.into();
    }
    let (head, tail) = (MAX_ERROR_LINE * 3 / 4, MAX_ERROR_LINE / 4);
    let start: String = line.chars().take(head).collect();
    let end: String = line.chars().skip(count - tail).collect();
    format!(
        "{start}… [{} characters left out] …{end}",
        count - head - tail
    )
    .into()
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
    diag.error(&within_a_line(&line));
    for hint in hints(e) {
        diag.hint(&hint);
    }
    if e.chain().any(|c| c.is::<UsageError>()) {
        Exit::Usage
    } else {
        Exit::Failure
    }
}

/// The hint of `cause`, one of the library's error types.
pub fn hint_of(cause: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    macro_rules! ask {
        ($($t:ty),* $(,)?) => {
            $(if let Some(e) = cause.downcast_ref::<$t>() {
                return crate::hint::Hint::hint(e);
            })*
        };
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        return crate::hint::of_io(io);
    }
    ask!(
        crate::runner::RunError,
        crate::runner::git::GitError,
        crate::state::StateError,
        crate::events::EventError,
        crate::dlq::DlqError,
        crate::dlq::filter::FilterError,
        crate::store::refs::RefError,
        crate::store::object::ObjectError,
        crate::store::RemoteError,
        crate::lock::LockError,
        crate::fsutil::FsError,
        crate::repo::RepoError,
        crate::storage::StorageError,
        crate::config::ConfigError,
        crate::workflow::WorkflowError,
        crate::sync::SyncError,
        crate::migrate::MigrateError,
        crate::gc::GcError,
        crate::fsck::FsckError,
    );
    None
}

/// What to do next: the hint of the outermost error in the chain that has one (each
/// library error says its own, [`crate::hint`], asked by [`hint_of`]), and for an ambiguous prefix the
/// candidates.
fn hints(e: &anyhow::Error) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(hint) = e.chain().find_map(hint_of) {
        out.push(hint.to_owned());
    }
    for cause in e.chain() {
        if let Some(ObjectError::Ambiguous { candidates, .. }) = cause.downcast_ref::<ObjectError>()
        {
            out.extend(candidates.iter().map(|c| format!("  {c}")));
        }
    }
    out
}

/// Where output goes: stdout, or a file written atomically (`-o FILE`).
///
/// A regular file (or a new one) is written as a temp file beside it, fsynced and
/// renamed over it, keeping the old file's permissions (a new one gets 0644). A symbolic
/// link is followed, so the file it names is the one written; a device, FIFO or socket
/// (`-o /dev/null`, `-o /dev/stdout`) is written in place. The rename replaced those:
/// a hostile sweep turned `/dev/full` into a file with `-o /dev/full`.
pub struct ExportTarget {
    file: Target,
}

enum Target {
    Stdout,
    Atomic(tempfile::NamedTempFile, PathBuf),
    InPlace(std::fs::File),
}

impl ExportTarget {
    /// Starts output to `path`, or to stdout when `None`.
    pub fn new(path: Option<&PathBuf>) -> anyhow::Result<ExportTarget> {
        use std::os::unix::fs::PermissionsExt;
        let Some(given) = path else {
            return Ok(ExportTarget {
                file: Target::Stdout,
            });
        };
        let is_link = std::fs::symlink_metadata(given).is_ok_and(|m| m.file_type().is_symlink());
        let path = if is_link {
            std::fs::canonicalize(given)
                .with_context(|| format!("'{}' is a symbolic link to nothing", given.display()))?
        } else {
            given.clone()
        };
        let existing = std::fs::metadata(&path).ok();
        if let Some(meta) = &existing {
            if meta.is_dir() {
                anyhow::bail!("cannot write '{}': it is a directory", path.display());
            }
            if !meta.is_file() {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("cannot write '{}'", path.display()))?;
                return Ok(ExportTarget {
                    file: Target::InPlace(file),
                });
            }
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let temp = tempfile::Builder::new()
            .prefix(".prodigy-export.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in '{}'", dir.display()))?;
        let mode = existing.map_or(0o644, |m| m.permissions().mode() & 0o7777);
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of '{}'", temp.path().display()))?;
        Ok(ExportTarget {
            file: Target::Atomic(temp, path),
        })
    }

    /// The writer to use.
    pub fn writer<'a>(
        &'a mut self,
        stdout: &'a mut (dyn std::io::Write + Send),
    ) -> Box<dyn std::io::Write + 'a> {
        match &mut self.file {
            Target::Atomic(temp, _) => Box::new(std::io::BufWriter::new(temp.as_file_mut())),
            Target::InPlace(file) => Box::new(std::io::BufWriter::new(file)),
            Target::Stdout => Box::new(stdout),
        }
    }

    /// Moves a finished file into place.
    pub fn finish(self) -> anyhow::Result<()> {
        if let Target::Atomic(temp, path) = self.file {
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

/// Quotes a CSV field when it needs it (RFC 4180; also for a `;` or a tab, which some
/// locales' spreadsheets split on). A field a spreadsheet would read as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab, a carriage return or a NUL, and not a plain
/// number) gets a leading `'`, as OWASP advises: an item's or a command's text is data,
/// and must not run as a formula when the export is opened.
pub fn csv_field(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r', '\0']) && !plain_number(s);
    let s: Cow<'_, str> = if formula {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    };
    if s.contains([',', '"', '\n', '\r', ';', '\t']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

/// A signed decimal number (`-5`, `+1.5e3`): digits, one sign, a point, an exponent.
fn plain_number(s: &str) -> bool {
    s.parse::<f64>().is_ok()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
}

/// Text for a cell of a Markdown table, shown as written: the characters that start
/// markup (HTML, links, images, emphasis, code, the table's own `|`) escaped with a
/// backslash, which CommonMark allows before any ASCII punctuation, and line breaks made
/// spaces. Data never becomes markup.
pub fn markdown_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '&' | '!' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A Markdown table cell holding `s` as a code span: inside one nothing is markup, so
/// only the span's own backtick (made `'`), the table's `|` and line breaks change.
pub fn markdown_code_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('`');
    for c in s.chars() {
        match c {
            '`' => out.push('\''),
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    use super::{bar, csv_field, markdown_cell, markdown_code_cell};

    #[test]
    fn csv_fields_never_start_a_formula() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_field("+1+cmd|' /C calc'!A0"), "'+1+cmd|' /C calc'!A0");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("-x"), "'-x");
        assert_eq!(csv_field("\t=1"), "\"'\t=1\"");
        assert_eq!(csv_field("-inf"), "'-inf");
        assert_eq!(csv_field("\0=1"), "'\0=1");
        // A separator some locales split on is quoted, so no cell starts after it.
        assert_eq!(csv_field("x;=HYPERLINK(1)"), "\"x;=HYPERLINK(1)\"");
        assert_eq!(csv_field("\r=1"), "\"'\r=1\"");
        // Numbers stay numbers; the rest as before.
        assert_eq!(csv_field("-5"), "-5");
        assert_eq!(csv_field("+1.5e3"), "+1.5e3");
        assert_eq!(csv_field("item-1"), "item-1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field(""), "");
    }

    #[test]
    fn markdown_cells_hold_no_markup() {
        assert_eq!(
            markdown_cell("<img src=x onerror=alert(1)>"),
            "\\<img src=x onerror=alert(1)\\>"
        );
        assert_eq!(
            markdown_cell("[a](javascript:x) ![i](u) *b* _c_ ~d~ `e` &amp; \\ |"),
            "\\[a\\](javascript:x) \\!\\[i\\](u) \\*b\\* \\_c\\_ \\~d\\~ \\`e\\` \\&amp; \\\\ \\|"
        );
        assert_eq!(markdown_cell("a\nb\rc"), "a b c");
        assert_eq!(markdown_cell("agent-1"), "agent-1");
        assert_eq!(
            markdown_code_cell("{\"a\":\"`<b>|x`\\n\"}\n"),
            "`{\"a\":\"'<b>\\|x'\\n\"} `"
        );
    }

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
    fn a_long_error_line_keeps_its_start_and_end() {
        assert_eq!(within_a_line("short"), "short");
        let long = format!("bad pattern {}: nothing was changed", "(".repeat(100_000));
        let kept = within_a_line(&long);
        assert!(kept.starts_with("bad pattern (((("), "{kept}");
        assert!(kept.ends_with("(((: nothing was changed"), "{kept}");
        let left_out = long.chars().count() - MAX_ERROR_LINE;
        assert!(
            kept.contains(&format!("… [{left_out} characters left out] …")),
            "{kept}"
        );
        assert!(kept.chars().count() < MAX_ERROR_LINE + 50);
    }

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

#[cfg(test)]
mod hint_tests {
    use super::*;
    use crate::hint::{FILTER, LOCK_HELD, WORKFLOW_FORMAT};

    /// Hints come from the error's type, through any wrapper, whatever its words.
    #[test]
    fn hints_follow_the_type_through_wrappers() {
        let no_job = crate::runner::RunError::State(crate::state::StateError::NoJob {
            repo: "r".into(),
            job: "j".into(),
        });
        assert!(hint_of(&no_job).unwrap().contains("`prodigy jobs` lists"));
        let held = crate::store::refs::RefError::Lock(crate::lock::LockError::Timeout {
            path: "/h/lock".into(),
            waited: std::time::Duration::from_secs(1),
        });
        assert_eq!(hint_of(&held), Some(LOCK_HELD));
        let full =
            crate::fsutil::FsError::new("write", "/h/x", std::io::Error::from_raw_os_error(28));
        assert!(hint_of(&full).unwrap().starts_with("free some space"));
        let git = crate::runner::git::GitError {
            op: "rev-parse".into(),
            dir: "/r".into(),
            message: "fatal: Needed a single revision".into(),
            conflict: false,
        };
        assert!(hint_of(&git).unwrap().contains("no commit to start from"));
        let unknown = crate::workflow::Plan::parse(
            std::path::Path::new("w.yml"),
            "name: x\nmap:\n  input: seq 1 2\n  max_paralel: 2\n  agent_template:\n    - shell: echo\n",
        )
        .unwrap_err();
        assert_eq!(hint_of(&unknown), Some(WORKFLOW_FORMAT));
        let filter = crate::dlq::filter::ItemFilter::parse("nope ==").unwrap_err();
        assert_eq!(hint_of(&filter), Some(FILTER));
        let io = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        assert!(hint_of(&io).unwrap().contains("must be writable"));
        assert_eq!(hint_of(&std::fmt::Error), None);
    }
}
