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
/// for its events and transcript), and with line breaks made spaces.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Every form of every secret, longest first, so a form containing another is masked
    /// whole.
    forms: Vec<String>,
    /// The longest form holding a line break (0: none), for [`Masker::straddles`].
    multiline: usize,
}

impl Masker {
    /// A masker of these values (empty ones are ignored).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Masker {
        let mut forms: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .flat_map(|v| forms_of(v))
            .collect();
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        let multiline = forms
            .iter()
            .filter(|f| f.contains('\n'))
            .map(String::len)
            .max()
            .unwrap_or(0);
        Masker { forms, multiline }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every secret replaced.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for f in &self.forms {
            if out.contains(f.as_str()) {
                out = out.replace(f.as_str(), MASK);
            }
        }
        out
    }

    /// `bytes` with every secret replaced (bytes that are not UTF-8 stay as they are).
    pub fn bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for f in &self.forms {
            let finder = memchr::memmem::Finder::new(f.as_bytes());
            if finder.find(&out).is_none() {
                continue;
            }
            let mut next = Vec::with_capacity(out.len());
            let mut at = 0;
            for found in finder.find_iter(&out) {
                if found < at {
                    continue;
                }
                next.extend_from_slice(&out[at..found]);
                next.extend_from_slice(MASK.as_bytes());
                at = found + f.len();
            }
            next.extend_from_slice(&out[at..]);
            out = next;
        }
        out
    }

    /// Where, in `bytes[..cut]`, a secret holding a line break may begin and run on past
    /// `cut` (whole, or as far as `bytes` goes): what is written up to a line's end must
    /// stop there, or a secret printed a line at a time would go out in pieces no mask
    /// finds. `None` when no such secret can straddle `cut`.
    pub fn straddles(&self, bytes: &[u8], cut: usize) -> Option<usize> {
        if self.multiline == 0 {
            return None;
        }
        let from = cut.saturating_sub(self.multiline - 1);
        (from..cut).find(|&p| {
            let rest = &bytes[p..];
            self.forms
                .iter()
                .filter(|f| f.contains('\n'))
                .map(|f| f.as_bytes())
                .any(|f| {
                    if rest.len() >= f.len() {
                        rest.starts_with(f) && p + f.len() > cut
                    } else {
                        f.starts_with(rest)
                    }
                })
        })
    }
}

/// The forms of one secret (see [`Masker`]).
fn forms_of(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_owned()];
    forms.extend(crate::workflow::shell::written_forms(value));
    if let Ok(json) = serde_json::to_string(value) {
        let inner = &json[1..json.len() - 1];
        // As Python's json writes it by default: every character past ASCII a `\u` escape.
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
        forms.push(inner.to_owned());
        forms.push(ascii);
    }
    forms
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
        let out = b"text\nBEGIN\nbo";
        assert_eq!(m.straddles(out, 11), Some(5));
        // Whole but past the cut.
        assert_eq!(m.straddles(b"x\nBEGIN\nbody\nEND\n", 14), Some(2));
        // Whole before the cut, or nothing like it.
        assert_eq!(m.straddles(b"x\nBEGIN\nbody\nEND\n", 17), None);
        assert_eq!(m.straddles(b"BEGIN\nbodx\n", 11), None);
        assert_eq!(
            Masker::new(&["one".to_owned()]).straddles(b"o\none", 2),
            None
        );
    }
}
