//! A workflow's environment beyond plain values: `.env` files, values computed when the
//! job starts (`{command: …}`, `{condition: …}`), profiles, and secrets — and the
//! [`Masker`] that keeps secrets out of everything a job writes.
//!
//! When a job starts ([`EnvPlan::resolve`]), in this order, later ones winning: the
//! `env_files` (relative to the repository), the plain `env` values, the chosen profile's
//! values, then the computed values (commands run in the repository with the environment
//! so far; conditions read it). All of it is recorded with the job, so `resume` sees the
//! same values. Secrets are not: they are read from their source at every start (`run`
//! and `resume`), given to steps as environment variables, and their values are replaced
//! by `***` in step logs, captures, events, transcripts and messages. A secret's value is
//! never in the store.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::file::SecretSource;
use crate::dlq::filter::ItemFilter;

/// What replaces a secret's value.
pub const MASK: &str = "***";

/// A value computed when the job starts.
#[derive(Debug, Clone)]
pub enum Computed {
    /// The trimmed output of `sh -c COMMAND` in the repository.
    Command(String),
    /// `when_true` or `when_false`, by a condition over the environment.
    Condition {
        /// The condition.
        condition: ItemFilter,
        /// Its variables' names, by operand index.
        names: Vec<String>,
        /// As written.
        text: String,
        /// Its value when it holds.
        when_true: String,
        /// When it does not.
        when_false: String,
    },
}

/// The environment's sources beyond plain values, checked at load.
#[derive(Debug, Clone, Default)]
pub struct EnvPlan {
    /// `.env` files, in order, with their lines in the workflow.
    pub files: Vec<(String, u64)>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, BTreeMap<String, String>>,
    /// Values computed when the job starts, by name (with their lines).
    pub computed: Vec<(String, Computed, u64)>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, SecretSource>,
}

impl EnvPlan {
    /// True when every value is plain (nothing to resolve beyond the recorded env).
    pub fn is_plain(&self) -> bool {
        self.files.is_empty() && self.computed.is_empty() && self.secrets.is_empty()
    }

    /// The environment a new job records: `plain` (the workflow's values and the run's
    /// additions) with the files under it and the profile and computed values over it.
    /// `dir` is where files are found and commands run. Secrets are not in it.
    pub fn values(
        &self,
        plain: &BTreeMap<String, String>,
        profile: Option<&str>,
        dir: &Path,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        for (file, line) in &self.files {
            let path = dir.join(file);
            match crate::fsutil::read_limited(&path, crate::fsutil::MAX_TEXT_FILE) {
                Ok(bytes) => {
                    let text = String::from_utf8(bytes).map_err(|_| {
                        format!("env_files (line {line}): '{}' is not UTF-8", path.display())
                    })?;
                    for (n, parsed) in dotenv(&text).into_iter().enumerate() {
                        let (k, v) = parsed.map_err(|e| {
                            format!("env_files: '{}' line {}: {e}", path.display(), n + 1)
                        })?;
                        env.insert(k, v);
                    }
                }
                // As the original: an env file that is not there is skipped (the run says
                // so).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("env_files: cannot read '{}': {e}", path.display())),
            }
        }
        env.extend(plain.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(name) = profile {
            let values = self.profiles.get(name).ok_or_else(|| {
                let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
                match known.is_empty() {
                    true => format!("--profile {name}: the workflow has no profiles"),
                    false => format!(
                        "--profile {name}: the workflow's profiles are {}",
                        known.join(", ")
                    ),
                }
            })?;
            env.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for (name, computed, line) in &self.computed {
            let value = match computed {
                Computed::Command(command) => run_command(command, dir, &env)
                    .map_err(|e| format!("env {name} (line {line}): {e}"))?,
                Computed::Condition {
                    condition,
                    names,
                    text,
                    when_true,
                    when_false,
                } => {
                    let holds = condition
                        .eval_condition(&|i| {
                            let name = &names[i];
                            Ok(env
                                .get(name)
                                .cloned()
                                .or_else(|| std::env::var(name).ok())
                                .map_or(Value::Null, Value::String))
                        })
                        .map_err(|e| format!("env {name} (line {line}): {e} in {text:?}"))?;
                    if holds { when_true } else { when_false }.clone()
                }
            };
            env.insert(name.clone(), value);
        }
        for name in self.secrets.keys() {
            env.remove(name);
        }
        Ok(env)
    }

    /// The secrets' values, read from their sources now (at every start of the job, never
    /// stored); `dir` is where secret files are found.
    pub fn secrets(&self, dir: &Path) -> Result<BTreeMap<String, String>, String> {
        let mut secrets = BTreeMap::new();
        for (name, source) in &self.secrets {
            let value = match source {
                SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                    format!(
                        "secret {name}: the variable {var} is not set (secrets are read from \
                         the environment of run and resume, never stored)"
                    )
                })?,
                SecretSource::File(file) => {
                    let path = dir.join(file);
                    crate::fsutil::read_text(&path)
                        .map_err(|e| {
                            format!("secret {name}: cannot read '{}': {e}", path.display())
                        })?
                        .trim()
                        .to_owned()
                }
            };
            secrets.insert(name.clone(), value);
        }
        Ok(secrets)
    }

    /// Names of files listed in `env_files` that are not in `dir` (the run says so).
    pub fn missing_files(&self, dir: &Path) -> Vec<String> {
        self.files
            .iter()
            .filter(|(f, _)| !dir.join(f).exists())
            .map(|(f, _)| f.clone())
            .collect()
    }
}

/// Runs an env value's command: its trimmed standard output, or why it failed.
fn run_command(
    command: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`{command}` failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("").trim()
        ));
    }
    String::from_utf8(out.stdout)
        .map(|s| s.trim().to_owned())
        .map_err(|_| format!("`{command}` printed bytes that are not UTF-8"))
}

/// The `KEY=VALUE` lines of a `.env` file: `#` comments and blank lines skipped, an
/// optional `export `, one pair of matching quotes taken off the value.
pub fn dotenv(text: &str) -> Vec<Result<(String, String), String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("{line:?} is not KEY=VALUE"))?;
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(format!("{k:?} is not a variable's name"));
            }
            let v = v.trim();
            let v = [('"', '"'), ('\'', '\'')]
                .iter()
                .find_map(|(a, b)| {
                    v.strip_prefix(*a)
                        .and_then(|r| r.strip_suffix(*b))
                        .filter(|_| v.len() >= 2)
                })
                .unwrap_or(v);
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Replaces secrets' values by [`MASK`] in text a job writes, in every form a job writes
/// them: as they are, as the quoting of shell commands writes them (a command is logged
/// after its values were quoted), in a JSON string (Claude's stream-json, decoded again
/// for its events and transcript; a shell form too, as a Bash tool call quotes it), and
/// with line breaks made spaces.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// A finder for every form of every secret.
    finders: Vec<memchr::memmem::Finder<'static>>,
    /// The forms holding a line break, each with the offsets of its line breaks, for
    /// [`Masker::safe_cut`].
    multiline: Vec<(Vec<u8>, Vec<usize>)>,
}

impl Masker {
    /// A masker of these values (empty ones, and ones of white space alone, are ignored).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Masker {
        let mut forms: Vec<String> = values
            .into_iter()
            .filter(|v| !v.trim().is_empty())
            .flat_map(|v| {
                // A secret's line breaks at either end are masked with it where they
                // are, and its content without them wherever it is.
                let inner = v.trim_matches(['\n', '\r']);
                let mut forms = forms_of(v);
                if inner != v {
                    forms.extend(forms_of(inner));
                }
                forms
            })
            .filter(|f| !f.trim().is_empty())
            .collect();
        forms.sort();
        forms.dedup();
        // A form starting with a line break would hold back every line end (a bare line
        // break begins it); its content's form, which has none there, is held instead.
        let multiline = forms
            .iter()
            .filter(|f| f.contains('\n') && !f.starts_with(['\n', '\r']))
            .map(|f| {
                let breaks = memchr::memchr_iter(b'\n', f.as_bytes()).collect();
                (f.as_bytes().to_vec(), breaks)
            })
            .collect();
        let finders = forms
            .iter()
            .map(|f| memchr::memmem::Finder::new(f.as_bytes()).into_owned())
            .collect();
        Masker { finders, multiline }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }

    /// `text` with every secret replaced.
    pub fn text(&self, text: &str) -> String {
        // Whole forms of UTF-8 text match on character boundaries, so the result is text.
        String::from_utf8(self.bytes(text.as_bytes()))
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// `bytes` with every secret replaced (bytes that are not UTF-8 stay as they are):
    /// each run of bytes that any form covers, overlapping matches joined, becomes one
    /// [`MASK`], so no piece of a secret is left beside a mask.
    pub fn bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.piece(bytes, 0, bytes.len()).0
    }

    /// `bytes[..cut]` masked as one piece of a longer text, and how many bytes after `cut`
    /// its last run covers (the next piece's `head`): the first `head` bytes are the rest
    /// of a run whose [`MASK`] the piece before wrote, and a run crossing `cut` is masked
    /// here, its rest left to the next piece. Matches are looked for in all of `bytes`, so
    /// each secret that begins before `cut` must be whole in it; pieces masked so give
    /// what masking the whole text at once gives.
    pub fn piece(&self, bytes: &[u8], head: usize, cut: usize) -> (Vec<u8>, usize) {
        let mut covered: Vec<(usize, usize)> = Vec::new();
        if head > 0 {
            covered.push((0, head));
        }
        // A match that begins before `cut` ends within the longest form's length of it.
        let window = &bytes[..(cut + self.longest().saturating_sub(1)).min(bytes.len())];
        for finder in &self.finders {
            let len = finder.needle().len();
            let mut at = 0;
            while let Some(found) = finder.find(&window[at..]) {
                if at + found >= cut {
                    break;
                }
                covered.push((at + found, at + found + len));
                at += found + 1;
            }
        }
        if covered.is_empty() {
            return (bytes[..cut].to_vec(), 0);
        }
        covered.sort_unstable();
        let mut out = Vec::with_capacity(cut);
        let mut written = 0;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (start, end) in covered {
            match runs.last_mut() {
                Some((_, run_end)) if start < *run_end => *run_end = (*run_end).max(end),
                _ => runs.push((start, end)),
            }
        }
        for (start, end) in runs {
            out.extend_from_slice(&bytes[written..start]);
            // The run that `head` begins had its mask written with the piece before.
            if !(start == 0 && head > 0) {
                out.extend_from_slice(MASK.as_bytes());
            }
            written = end;
        }
        if written > cut {
            return (out, written - cut);
        }
        out.extend_from_slice(&bytes[written..cut]);
        (out, 0)
    }

    /// The length of the longest form (0 when there is none).
    pub fn longest(&self) -> usize {
        self.finders
            .iter()
            .map(|f| f.needle().len())
            .max()
            .unwrap_or(0)
    }

    /// Where to cut `bytes`, at or before `cut` (just after a line break), so that no
    /// secret holding a line break is cut in two: what is written up to a line's end must
    /// stop before such a secret, whole or begun (its start running to the end of
    /// `bytes`), or a secret printed a line at a time would go out in pieces no mask
    /// finds. Always just after a line break (or 0), so whole lines go out.
    pub fn safe_cut(&self, bytes: &[u8], mut cut: usize) -> usize {
        loop {
            // A form crossing `cut` has one of its line breaks at `cut - 1`: only those
            // starts are looked at.
            let mut earliest = None;
            for (form, breaks) in &self.multiline {
                for &k in breaks {
                    let Some(start) = (cut - 1).checked_sub(k) else {
                        continue;
                    };
                    let rest = &bytes[start..];
                    let crosses = if rest.len() >= form.len() {
                        rest.starts_with(form) && start + form.len() > cut
                    } else {
                        form.starts_with(rest)
                    };
                    if crosses {
                        earliest = Some(earliest.map_or(start, |e: usize| e.min(start)));
                    }
                }
            }
            let Some(start) = earliest else {
                return cut;
            };
            // Back to the start of that line, where the loop looks again: a secret may
            // cross there too.
            match memchr::memrchr(b'\n', &bytes[..start]) {
                Some(at) => cut = at + 1,
                None => return 0,
            }
        }
    }
}

/// `text`, a plain value of `env:`, with each `${…}` in it replaced by `value` of what it
/// names (`env.NAME` or `NAME`); an error names the reference. An unclosed `${` is an
/// error too: the original replaced these references, and text that looks like one but
/// is not read would reach the steps as it is.
pub fn expand_value(
    text: &str,
    mut value: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let inner = &rest[at + 2..];
        let Some(end) = inner.find('}') else {
            return Err(format!("{:?} has a `${{` without its `}}`", text));
        };
        out.push_str(&value(&inner[..end])?);
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The forms of one secret (see [`Masker`]).
fn forms_of(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_owned()];
    forms.extend(crate::workflow::shell::written_forms(value));
    let json: Vec<String> = forms.iter().flat_map(|f| json_forms(f)).collect();
    forms.extend(json);
    forms
}

/// `text` inside a JSON string: as serde_json and Node write it, and as Python's json
/// writes it by default (every character past ASCII a `\u` escape).
fn json_forms(text: &str) -> [String; 2] {
    let json = serde_json::Value::from(text).to_string();
    let inner = &json[1..json.len() - 1];
    let mut ascii = String::with_capacity(inner.len());
    for c in inner.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    [inner.to_owned(), ascii]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines() {
        let parsed: Vec<_> = dotenv("# c\n\nA=1\nexport B = \"two words\"\nC='x'\nD=\"\nE=a=b\n")
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            parsed,
            [
                ("A", "1"),
                ("B", "two words"),
                ("C", "x"),
                ("D", "\""),
                ("E", "a=b")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert!(dotenv("nothing here\n")[0].is_err());
    }

    #[test]
    fn masks_longest_first_in_text_and_bytes() {
        let secrets = ["abc".to_owned(), "abcdef".to_owned(), String::new()];
        let m = Masker::new(&secrets);
        assert_eq!(m.text("x abcdef y abc"), "x *** y ***");
        assert_eq!(m.bytes(b"\xffabcdef\xfe"), b"\xff***\xfe".to_vec());
        assert!(Masker::new(&[String::new()]).is_empty());
    }

    #[test]
    fn masks_the_forms_quoting_and_json_write() {
        let secrets = ["it's \"pa$s\\wörd".to_owned()];
        let m = Masker::new(&secrets);
        for written in [
            r#"echo 'it'\''s "pa$s\wörd'"#,
            r#"echo "it's \"pa\$s\\wörd""#,
            r#"{"text":"it's \"pa$s\\wörd"}"#,
            r#"{"text":"it's \"pa$s\\w\u00f6rd"}"#,
            // A Bash tool call in stream-json, quoting it for the shell.
            r#"{"command":"echo 'it'\\''s \"pa$s\\wörd'"}"#,
        ] {
            let masked = m.text(written);
            assert!(
                masked.contains(MASK) && !masked.contains("rd"),
                "{written} → {masked}"
            );
        }
        let pem = ["-----BEGIN-----\nline one\nline two\n-----END-----".to_owned()];
        let m = Masker::new(&pem);
        assert_eq!(
            m.text(r#"{"t":"-----BEGIN-----\nline one\nline two\n-----END-----"}"#),
            r#"{"t":"***"}"#
        );
        assert_eq!(
            m.text("# -----BEGIN----- line one line two -----END-----"),
            "# ***"
        );
    }

    #[test]
    fn a_multi_line_secret_is_held_back_at_a_line_end() {
        let pem = ["BEGIN\nbody\nEND".to_owned()];
        let m = Masker::new(&pem);
        // Cut after "BEGIN\n": the secret may go on.
        assert_eq!(m.safe_cut(b"text\nBEGIN\nbo", 11), 5);
        // Whole but past the cut.
        assert_eq!(m.safe_cut(b"x\nBEGIN\nbody\nEND\n", 13), 2);
        // Whole before the cut, or nothing like it.
        assert_eq!(m.safe_cut(b"x\nBEGIN\nbody\nEND\n", 17), 17);
        assert_eq!(m.safe_cut(b"BEGIN\nbodx\n", 11), 11);
        assert_eq!(Masker::new(&["one".to_owned()]).safe_cut(b"o\none", 2), 2);
        // Mid-line: the cut goes back to the line's start.
        assert_eq!(m.safe_cut(b"a\nkey=BEGIN\n", 12), 2);
        // A secret whose last line is its first: the tail that looks like a new one must
        // not hide the whole one that crosses the line before it (a review found it).
        let yaml = ["---\ntoken: x\n---".to_owned()];
        let m = Masker::new(&yaml);
        assert_eq!(m.safe_cut(b"---\ntoken: x\n---\n", 17), 0);
        assert_eq!(m.bytes(b"---\ntoken: x\n---\n"), b"***\n".to_vec());
    }

    #[test]
    fn overlapping_matches_are_masked_together() {
        let m = Masker::new(&["aba".to_owned()]);
        assert_eq!(m.text("xababay"), "x***y");
        assert_eq!(m.text("aba aba"), "*** ***");
        // Two secrets side by side stay two masks.
        let m = Masker::new(&["abc".to_owned(), "def".to_owned()]);
        assert_eq!(m.text("abcdef"), "******");
        // White space alone is never a secret, in any form (its JSON form was `\n`).
        let m = Masker::new(&["\n".to_owned(), "x\ny".to_owned()]);
        assert_eq!(m.text("a b\nc x y"), "a b\nc ***");
        assert_eq!(m.text(r#"{"t":"a\nb"}"#), r#"{"t":"a\nb"}"#);
        // A secret with a line break in front holds back no line end, and its content
        // is masked wherever it is.
        let m = Masker::new(&["\nabc\n".to_owned()]);
        assert_eq!(m.safe_cut(b"deploying\n", 10), 10);
        // (Its form with line breaks as spaces takes the spaces around "abc" with it.)
        assert_eq!(m.text("x abc y \nabc\n"), "x***y ***");
    }
}
