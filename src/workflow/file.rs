//! A workflow file as written: the original tool's YAML, in both its shapes, read by
//! `serde-saphyr` into these types. Every key is known: one outside them is an error
//! naming its line ([`super::Plan::parse`] words it), never skipped. Where the original
//! accepts a key in several forms (a list or a mapping, a string or a mapping), each form
//! is read by a visitor that hands the mapping form to a derived type, so errors inside
//! keep their lines.

use std::collections::BTreeMap;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::Spanned;

/// A MapReduce workflow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// The workflow's name (`${workflow.name}`).
    pub name: Spanned<String>,
    /// Must be `mapreduce` when given.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// `NAME: value`, or a value computed when the job starts (`{command: …}`, `{condition:
    /// …, when_true: …, when_false: …}`), or a secret (`{secret: true, value: "${VAR}"}`).
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<EnvValue>>,
    /// Secrets: `NAME: SOURCE_VAR` (or `"${env:SOURCE_VAR}"`), or `{provider: env|file,
    /// key: …}`. Read when the job starts and again on resume; never stored; masked as
    /// `***` in everything the job writes.
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<SecretSource>>,
    /// `.env` files read in order when the job starts (relative to the repository).
    #[serde(default)]
    pub env_files: Vec<Spanned<String>>,
    /// Named sets of values over `env`, chosen by `run --profile NAME`.
    #[serde(default)]
    pub profiles: BTreeMap<String, Spanned<BTreeMap<String, Scalar>>>,
    /// Steps run once, in the job's worktree, before the map phase (a list, or
    /// `commands:` with an optional `timeout:` for the whole phase).
    #[serde(default)]
    pub setup: Steps,
    /// The map phase.
    pub map: MapSpec,
    /// Steps run once, in the job's worktree, after every agent's commits are merged.
    #[serde(default)]
    pub reduce: Steps,
    /// Steps that bring the job's result into the branch `run` started on, asked first
    /// unless `-y` (`${merge.worktree}`, `${merge.source_branch}`, `${merge.target_branch}`).
    #[serde(default)]
    pub merge: Option<Steps>,
    /// What happens when an item fails.
    #[serde(default)]
    pub error_policy: ErrorPolicy,
}

/// A sequential workflow written as a mapping: `commands:` (or `steps:`) run one after
/// another in a session's worktree.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFile {
    /// The workflow's name (default: the file's stem).
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// `standard` or `sequential` when given.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// What it is for (shown by `run --dry-run`).
    #[serde(default)]
    pub description: Option<String>,
    /// `NAME: value`, or a value computed when the job starts (`{command: …}`, `{condition:
    /// …, when_true: …, when_false: …}`), or a secret (`{secret: true, value: "${VAR}"}`).
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<EnvValue>>,
    /// Secrets: `NAME: SOURCE_VAR` (or `"${env:SOURCE_VAR}"`), or `{provider: env|file,
    /// key: …}`. Read when the job starts and again on resume; never stored; masked as
    /// `***` in everything the job writes.
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<SecretSource>>,
    /// `.env` files read in order when the job starts (relative to the repository).
    #[serde(default)]
    pub env_files: Vec<Spanned<String>>,
    /// Named sets of values over `env`, chosen by `run --profile NAME`.
    #[serde(default)]
    pub profiles: BTreeMap<String, Spanned<BTreeMap<String, Scalar>>>,
    /// The steps.
    #[serde(alias = "steps")]
    pub commands: Steps,
    /// The session's own merge: steps run in its worktree once its steps are done (asked
    /// first, unless `run -y`), with `${merge.worktree}`, `${merge.source_branch}` and
    /// `${merge.target_branch}`.
    #[serde(default)]
    pub merge: Option<Steps>,
}

/// Where a workflow's environment comes from (the same keys in both shapes).
#[derive(Debug, Clone, Copy)]
pub struct Environment<'a> {
    /// `env:`.
    pub env: &'a BTreeMap<String, Spanned<EnvValue>>,
    /// `secrets:`.
    pub secrets: &'a BTreeMap<String, Spanned<SecretSource>>,
    /// `env_files:`.
    pub env_files: &'a [Spanned<String>],
    /// `profiles:`.
    pub profiles: &'a BTreeMap<String, Spanned<BTreeMap<String, Scalar>>>,
}

impl Workflow {
    /// Its environment's keys.
    pub fn environment(&self) -> Environment<'_> {
        Environment {
            env: &self.env,
            secrets: &self.secrets,
            env_files: &self.env_files,
            profiles: &self.profiles,
        }
    }
}

impl SessionFile {
    /// Its environment's keys.
    pub fn environment(&self) -> Environment<'_> {
        Environment {
            env: &self.env,
            secrets: &self.secrets,
            env_files: &self.env_files,
            profiles: &self.profiles,
        }
    }
}

/// A value of the environment.
#[derive(Debug, Clone, Serialize)]
pub enum EnvValue {
    /// A string (a number or boolean is its text).
    Text(String),
    /// The standard output of a command run when the job starts (trimmed).
    Command {
        /// The command (`sh -c`).
        command: String,
    },
    /// One of two values, by a condition over the environment.
    Condition {
        /// The condition (the `when:` language; `${NAME}` is the variable NAME).
        condition: String,
        /// The value when it holds.
        when_true: String,
        /// The value when it does not.
        when_false: String,
    },
    /// A secret, read from where `value` says (`${VAR}`).
    Secret(SecretSource),
}

/// Where a secret's value is read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the process that runs the job.
    Env(String),
    /// A file (its content, trimmed).
    File(String),
}

/// A scalar read as text: a string, number or boolean.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The mapping forms of an env value, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvMap {
    #[serde(default)]
    command: Option<String>,
    /// The original's; a command's value is computed once per job anyway.
    #[serde(default)]
    #[allow(dead_code)]
    cache: Option<bool>,
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    when_true: Option<Scalar>,
    #[serde(default)]
    when_false: Option<Scalar>,
    #[serde(default)]
    secret: Option<bool>,
    #[serde(default)]
    value: Option<String>,
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EnvValue, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a value, or {command: …}, {condition: …, when_true: …, when_false: …} or \
                     {secret: true, value: \"${VAR}\"}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EnvValue, A::Error> {
                let m = EnvMap::deserialize(MapAccessDeserializer::new(map))?;
                match m {
                    EnvMap {
                        command: Some(command),
                        condition: None,
                        secret: None,
                        value: None,
                        ..
                    } => Ok(EnvValue::Command { command }),
                    EnvMap {
                        condition: Some(condition),
                        when_true: Some(t),
                        when_false: Some(f),
                        command: None,
                        secret: None,
                        value: None,
                        ..
                    } => Ok(EnvValue::Condition {
                        condition,
                        when_true: t.0,
                        when_false: f.0,
                    }),
                    EnvMap {
                        secret: Some(true),
                        value: Some(value),
                        command: None,
                        condition: None,
                        ..
                    } => secret_reference(&value)
                        .map(|name| EnvValue::Secret(SecretSource::Env(name)))
                        .ok_or_else(|| {
                            de::Error::custom(format!(
                                "a secret's value names the variable it is read from \
                                 (\"${{VAR}}\"); {value:?} would put the secret itself in the \
                                 workflow file, which is no secret"
                            ))
                        }),
                    _ => Err(de::Error::custom(
                        "an env value mapping is {command: …}, {condition: …, when_true: …, \
                         when_false: …} or {secret: true, value: \"${VAR}\"}",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The variable a secret names: `VAR`, `${VAR}`, `${env.VAR}` or `${env:VAR}` (the
/// original's spelling); `None` for anything else.
pub fn secret_reference(text: &str) -> Option<String> {
    let text = text.trim();
    let inner = match text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) {
        Some(inner) => inner
            .strip_prefix("env.")
            .or_else(|| inner.strip_prefix("env:"))
            .unwrap_or(inner),
        None => text,
    };
    let mut chars = inner.chars();
    (chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then(|| inner.to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretMap {
    provider: String,
    key: String,
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<String>,
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretSource, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretSource;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a variable's name, or {provider: env|file, key: …}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretSource, E> {
                secret_reference(v).map(SecretSource::Env).ok_or_else(|| {
                    E::custom(format!(
                        "a secret names the environment variable it is read from; {v:?} is \
                         not a variable's name"
                    ))
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretSource, A::Error> {
                let m = SecretMap::deserialize(MapAccessDeserializer::new(map))?;
                match m.provider.as_str() {
                    "env" => secret_reference(&m.key)
                        .map(SecretSource::Env)
                        .ok_or_else(|| {
                            de::Error::custom(format!("{:?} is not a variable's name", m.key))
                        }),
                    "file" => Ok(SecretSource::File(m.key)),
                    other => Err(de::Error::custom(format!(
                        "secret provider {other:?} is not supported here (env and file are; \
                         read other stores into a variable or a file before the run)"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The `map:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// A JSON file (relative to the job's worktree), or a command whose output is a JSON
    /// array or object, or one item per line. `${VAR}` of the workflow's env is replaced.
    pub input: Spanned<String>,
    /// An RFC 9535 JSONPath selecting the items from the input.
    #[serde(default)]
    pub json_path: Option<Spanned<String>>,
    /// Keep only items matching this expression (`score >= 5 && lang == 'rust'`).
    #[serde(default)]
    pub filter: Option<Spanned<String>>,
    /// Order items by fields: `field [ASC|DESC] [NULLS FIRST|LAST], …`.
    #[serde(default)]
    pub sort_by: Option<Spanned<String>>,
    /// Keep the first item of each value of this field (`id`, `meta.key`; the original's
    /// docs write `item.id`), after `filter` and `sort_by`: an item without the field is
    /// kept.
    #[serde(default)]
    pub distinct: Option<Spanned<String>>,
    /// Skip this many items.
    #[serde(default)]
    pub offset: usize,
    /// Keep at most this many items.
    #[serde(default)]
    pub max_items: Option<usize>,
    /// Agents at once (default 4; `--max-parallel` overrides): a number, or `${VAR}` of the
    /// workflow's env.
    #[serde(default)]
    pub max_parallel: Option<Spanned<Scalar>>,
    /// Kill an agent (its whole process group) after this many seconds: a number, or
    /// `${VAR}` of the workflow's env.
    #[serde(default)]
    pub agent_timeout_secs: Option<Spanned<Scalar>>,
    /// The original's spelling of the agent time limit: seconds, or a duration (`120s`).
    #[serde(default)]
    pub timeout_per_agent: Option<Spanned<Seconds>>,
    /// The original's `timeout_config:` block (its `agent_timeout_secs`).
    #[serde(default)]
    pub timeout_config: Option<TimeoutConfig>,
    /// How an agent's commits join the job's branch: `merge` (default: a merge commit
    /// each) or `squash` (one commit per agent).
    #[serde(default)]
    pub merge: Option<Spanned<String>>,
    /// The steps each agent runs on its item.
    pub agent_template: Steps,
}

/// A list of steps, written either as a list or, as the original also allowed, as
/// `commands:` holding the list (with `timeout:`, the phase's time limit, where a phase
/// takes one). Errors inside keep their lines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Steps {
    /// The steps.
    pub steps: Vec<Step>,
    /// `timeout:` beside `commands:` (seconds, or a duration).
    pub timeout: Option<Spanned<Seconds>>,
}

impl std::ops::Deref for Steps {
    type Target = [Step];
    fn deref(&self) -> &[Step] {
        &self.steps
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepsMap {
    commands: Vec<Step>,
    #[serde(default)]
    timeout: Option<Spanned<Seconds>>,
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Steps, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Steps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of steps, or `commands:` with a list of steps")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Steps, A::Error> {
                Ok(Steps {
                    steps: list(seq)?,
                    timeout: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Steps, A::Error> {
                let m = StepsMap::deserialize(MapAccessDeserializer::new(map))?;
                Ok(Steps {
                    steps: m.commands,
                    timeout: m.timeout,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A list of steps, each a mapping or a bare string (kept as [`Step::bare`] with its place
/// in the file).
fn list<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<Step>, A::Error> {
    let mut steps = Vec::new();
    while let Some(element) = seq.next_element::<Spanned<Element>>()? {
        steps.push(match element.value {
            Element::Step(step) => *step,
            Element::Text(text) => Step {
                bare: Some(Spanned::new(text, element.referenced, element.defined)),
                ..Step::default()
            },
        });
    }
    Ok(steps)
}

/// One element of a list of steps.
enum Element {
    Step(Box<Step>),
    Text(String),
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Element, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Element;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a step (`shell: …`, `claude: …`), or a command as a string")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Element, A::Error> {
                Step::deserialize(MapAccessDeserializer::new(map)).map(|s| Element::Step(s.into()))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Element, E> {
                Ok(Element::Text(text.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A time given as whole seconds or as a duration (`90`, `120s`, `2m`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Seconds {
    /// Seconds.
    Secs(u64),
    /// A duration.
    Text(String),
}

/// `map.timeout_config:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Kill an agent after this many seconds (or `${VAR}`).
    #[serde(default)]
    pub agent_timeout_secs: Option<Spanned<Scalar>>,
}

/// One step: a shell command, a Claude Code command, a file to write, or the original's
/// `analyze:`; with what decides whether it runs, what it keeps and what follows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The command, run with `sh -c` in the worktree.
    #[serde(default)]
    pub shell: Option<Spanned<String>>,
    /// A Claude Code command (a slash command and its arguments, `/lint --fix`), given to
    /// the `claude` CLI as one argument in the worktree.
    #[serde(default)]
    pub claude: Option<Spanned<String>>,
    /// A file to write in the worktree.
    #[serde(default)]
    pub write_file: Option<Spanned<WriteFile>>,
    /// The original's project analysis, which it no longer has: the step fails when run.
    #[serde(default)]
    pub analyze: Option<Spanned<Value>>,
    /// A name for messages and the log.
    #[serde(default)]
    pub name: Option<String>,
    /// What the step does (shown like its name).
    #[serde(default)]
    pub description: Option<String>,
    /// Names the step for `outputs:` (`${ID.NAME}`).
    #[serde(default)]
    pub id: Option<Spanned<String>>,
    /// Files the step commits, by name: `NAME: {file_pattern: GLOB}` makes `${ID.NAME}`
    /// the first matching file of its commits.
    #[serde(default)]
    pub outputs: Option<Spanned<BTreeMap<String, OutputSpec>>>,
    /// The step must make a commit: one that exits 0 without moving `HEAD` fails.
    #[serde(default)]
    pub commit_required: bool,
    /// Run the step only when this is true: the filter language over `${…}` variables and
    /// literals, parsed once at load.
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    /// Kill the step (its whole process group) after this many seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// What to do when the step fails.
    #[serde(default)]
    pub on_failure: Option<Spanned<ListOr<OnFailure>>>,
    /// A step run after this one succeeds (its failure is this step's).
    #[serde(default)]
    pub on_success: Option<Box<Step>>,
    /// Steps run for the command's exit code: a handled code's step decides the outcome.
    #[serde(default)]
    pub on_exit_code: BTreeMap<i32, Step>,
    /// A failure (after `on_failure`) does not stop the workflow: `${last.exit_code}`
    /// tells it.
    #[serde(default)]
    pub allow_failure: bool,
    /// The original's step-level spelling: `fail_workflow: false` is `allow_failure: true`.
    #[serde(default)]
    pub fail_workflow: Option<bool>,
    /// Keep the step's standard output: `true` makes it `${shell.output}`, a name makes it
    /// `${NAME}` too, for the steps after it.
    #[serde(default)]
    pub capture_output: Option<Capture>,
    /// The original's spelling of a named capture.
    #[serde(default)]
    pub capture: Option<Spanned<String>>,
    /// How the captured output is read: string (default), number, boolean, json or lines.
    #[serde(default)]
    pub capture_format: Option<Spanned<String>>,
    /// What a capture holds: `stdout`, `stderr` or `both`, or a mapping of stdout, stderr,
    /// exit_code, success and duration (each `NAME.stderr`, `NAME.exit_code`, …).
    #[serde(default)]
    pub capture_streams: Option<Spanned<CaptureStreams>>,
    /// Variables for this step only.
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<Scalar>>,
    /// Where the step runs, relative to its worktree.
    #[serde(default)]
    pub working_dir: Option<Spanned<String>>,
    /// Run with only the step's `env:` (and `PATH`).
    #[serde(default)]
    pub clear_env: bool,
    /// The original's: the step's `env:` ends with the step. Always so here; `false` is
    /// refused.
    #[serde(default)]
    pub temporary: Option<Spanned<bool>>,
    /// Check the step's work; see [`Validate`].
    #[serde(default)]
    pub validate: Option<Spanned<ListOr<Validate>>>,
    /// The original's analysis settings for a step; it has no analysis any more, nor has
    /// this runner: a warning says so.
    #[serde(default)]
    pub analysis: Option<Spanned<Value>>,
    /// The original's file the step produces, never read by it: a warning says so.
    #[serde(default)]
    pub output: Option<Spanned<String>>,
    /// The original's structured-command options: the command text is what runs, a
    /// warning says so.
    #[serde(default)]
    pub options: Option<Spanned<Value>>,
    /// The original's structured-command arguments: as `options`.
    #[serde(default)]
    pub args: Option<Spanned<Value>>,
    /// The original's command metadata: `continue_on_error: true` is `allow_failure`.
    #[serde(default)]
    pub metadata: Option<Spanned<Metadata>>,
    /// The step written as a bare string, as the original also reads one: a Claude
    /// command in a sequential workflow's steps, a command of a handler's list. Read
    /// where the list is; anywhere else an error.
    #[serde(skip)]
    pub bare: Option<Spanned<String>>,
}

impl Step {
    /// A step that is one command, `sh -c` or Claude.
    pub fn command(shell: Option<Spanned<String>>, claude: Option<Spanned<String>>) -> Step {
        Step {
            shell,
            claude,
            ..Step::default()
        }
    }

    /// The step a bare string names in a list of handler commands, as the original reads
    /// them: a Claude command when it starts with `/`, else a shell command.
    fn handler_command(text: Spanned<String>) -> Step {
        match text.value.starts_with('/') {
            true => Step::command(None, Some(text)),
            false => Step::command(Some(text), None),
        }
    }
}

/// `metadata:` of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// `allow_failure`.
    #[serde(default)]
    pub continue_on_error: Option<bool>,
}

/// One of a step's `outputs:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// A glob over the committed files' paths (`*.md`, `specs/*.md`; without a `/` it
    /// matches the file's name).
    pub file_pattern: String,
}

/// `write_file:` of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// The file, relative to the worktree (it may not leave it).
    pub path: String,
    /// What it holds (`${…}` replaced).
    pub content: String,
    /// text (default), json or yaml: json and yaml check the content and write it pretty.
    #[serde(default)]
    pub format: Option<String>,
    /// Its mode, octal (`"0644"`).
    #[serde(default)]
    pub mode: Option<Scalar>,
    /// Make the directories it needs.
    #[serde(default)]
    pub create_dirs: bool,
}

/// `capture_output: true` or `capture_output: name`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Capture {
    /// `true` / `false`.
    Flag(bool),
    /// A variable name.
    Name(String),
}

/// `capture_streams:`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CaptureStreams {
    /// The capture holds standard output (default true).
    #[serde(default)]
    pub stdout: Option<bool>,
    /// `NAME.stderr` (or the capture itself, without stdout).
    #[serde(default)]
    pub stderr: bool,
    /// `NAME.exit_code` (unset: on, as the original, except for a JSON capture, whose
    /// fields they would hide).
    #[serde(default)]
    pub exit_code: Option<bool>,
    /// `NAME.success` (true or false; unset: as `exit_code`).
    #[serde(default)]
    pub success: Option<bool>,
    /// `NAME.duration` (seconds, with fractions; unset: as `exit_code`).
    #[serde(default)]
    pub duration: Option<bool>,
}

impl CaptureStreams {
    fn from_word<E: de::Error>(word: &str) -> Result<CaptureStreams, E> {
        let (stdout, stderr) = match word {
            "stdout" => (true, false),
            "stderr" => (false, true),
            "both" => (true, true),
            other => {
                return Err(E::custom(format!(
                    "capture_streams {other:?} is not stdout, stderr or both (or a mapping)"
                )));
            }
        };
        Ok(CaptureStreams {
            stdout: Some(stdout),
            stderr,
            ..CaptureStreams::default()
        })
    }
}

impl<'de> Deserialize<'de> for CaptureStreams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CaptureStreams, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CaptureStreams;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("stdout, stderr, both, or a mapping of stdout/stderr/exit_code/…")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CaptureStreams, E> {
                CaptureStreams::from_word(v)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CaptureStreams, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct M {
                    #[serde(default)]
                    stdout: Option<bool>,
                    #[serde(default)]
                    stderr: bool,
                    #[serde(default)]
                    exit_code: Option<bool>,
                    #[serde(default)]
                    success: Option<bool>,
                    #[serde(default)]
                    duration: Option<bool>,
                }
                let m = M::deserialize(MapAccessDeserializer::new(map))?;
                Ok(CaptureStreams {
                    stdout: m.stdout,
                    stderr: m.stderr,
                    exit_code: m.exit_code,
                    success: m.success,
                    duration: m.duration,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `on_failure:` of a step: a mapping (`shell:`/`claude:` or `commands:`, with retries), or
/// a list of steps run in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnFailure {
    /// A command run after the step fails (`${shell.output}` holds the failed step's
    /// output tail).
    #[serde(default)]
    pub shell: Option<Spanned<String>>,
    /// A Claude Code command run after the step fails instead.
    #[serde(default)]
    pub claude: Option<Spanned<String>>,
    /// Several handler steps, in order.
    #[serde(default)]
    pub commands: Option<Vec<Step>>,
    /// Run the failed step again after the handler, up to this many attempts in all
    /// (default 1: no retry).
    #[serde(default, alias = "max_retries")]
    pub max_attempts: Option<u32>,
    /// Whether a step that still fails fails the workflow. Unset, as in the original, a
    /// handler that succeeds handles the failure and the workflow goes on; `false` goes
    /// on even when the handler fails; `true` always fails.
    #[serde(default)]
    pub fail_workflow: Option<bool>,
    /// The handler must make a commit.
    #[serde(default)]
    pub commit_required: bool,
    /// Kill the handler after this many seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// A key that takes a list of steps or a mapping (`on_failure`, `validate`,
/// `on_incomplete`): the list is the mapping's `commands`.
pub trait ListOrMap: Default + for<'de> Deserialize<'de> {
    /// The mapping with `steps` as its `commands`.
    fn from_list(steps: Vec<Step>) -> Self;
    /// The value written as one string, where the original takes that form.
    fn from_text(_text: &str) -> Option<Self> {
        None
    }
    /// The value written as `true` or `false`, where the original takes that form.
    fn from_flag(_flag: bool) -> Option<Self> {
        None
    }
}

/// Reads a [`ListOrMap`] type from a list or a mapping.
fn list_or_map<'de, T: ListOrMap, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: ListOrMap> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping, or a list of steps (on_failure also: a command, true or false)")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
            Ok(T::from_list(list(seq)?))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            T::from_text(text).ok_or_else(|| E::invalid_type(de::Unexpected::Str(text), &self))
        }
        fn visit_bool<E: de::Error>(self, flag: bool) -> Result<T, E> {
            T::from_flag(flag).ok_or_else(|| E::invalid_type(de::Unexpected::Bool(flag), &self))
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

impl ListOrMap for OnFailure {
    /// Steps, or the original's list of commands as strings (a Claude command when it
    /// starts with `/`).
    fn from_list(steps: Vec<Step>) -> Self {
        let steps = steps
            .into_iter()
            .map(|step| match step.bare {
                Some(text) => Step::handler_command(text),
                None => step,
            })
            .collect();
        OnFailure {
            commands: Some(steps),
            ..OnFailure::default()
        }
    }

    /// The original's `on_failure: "cmd"`: a Claude command when it starts with `/`, else
    /// a shell command (its place in the file is the `on_failure:` key's).
    fn from_text(text: &str) -> Option<Self> {
        let unknown = serde_saphyr::Location::UNKNOWN;
        let step = Step::handler_command(Spanned::new(text.to_owned(), unknown, unknown));
        Some(OnFailure {
            shell: step.shell,
            claude: step.claude,
            ..OnFailure::default()
        })
    }

    /// The original's `on_failure: true` (ignore the failure) and `false` (fail).
    fn from_flag(flag: bool) -> Option<Self> {
        Some(OnFailure {
            fail_workflow: Some(!flag),
            ..OnFailure::default()
        })
    }
}

/// `validate:` of a step: commands that check its work and a result (JSON with
/// `completion_percentage`) compared with a threshold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// A validation command (`sh -c`).
    #[serde(default, alias = "command")]
    pub shell: Option<Spanned<String>>,
    /// A Claude Code validation command.
    #[serde(default)]
    pub claude: Option<Spanned<String>>,
    /// Several validation steps, in order.
    #[serde(default)]
    pub commands: Option<Vec<Step>>,
    /// Where the result is (relative to the worktree); default: the last command's output.
    #[serde(default)]
    pub result_file: Option<Spanned<String>>,
    /// The least `completion_percentage` that passes (default 100).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Kill a validation command after this many seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// The original's schema of the result, which it never checked: a warning says so.
    #[serde(default)]
    pub expected_schema: Option<Spanned<Value>>,
    /// What runs while the result is under the threshold.
    #[serde(default)]
    pub on_incomplete: Option<Spanned<ListOr<OnIncomplete>>>,
}

impl ListOrMap for Validate {
    fn from_list(steps: Vec<Step>) -> Self {
        Validate {
            commands: Some(steps),
            ..Validate::default()
        }
    }
}

/// `on_incomplete:` of a validation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnIncomplete {
    /// A command (`sh -c`).
    #[serde(default)]
    pub shell: Option<Spanned<String>>,
    /// A Claude Code command.
    #[serde(default)]
    pub claude: Option<Spanned<String>>,
    /// Several steps, in order.
    #[serde(default)]
    pub commands: Option<Vec<Step>>,
    /// Rounds of handler then validation (default 2).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// When false, a step still incomplete after them does not fail (default true).
    #[serde(default)]
    pub fail_workflow: Option<bool>,
    /// Each round's handler must make a commit.
    #[serde(default)]
    pub commit_required: bool,
    /// The original asked this on a terminal and ignored the answer: a warning says so.
    #[serde(default)]
    pub prompt: Option<Spanned<String>>,
}

impl ListOrMap for OnIncomplete {
    fn from_list(steps: Vec<Step>) -> Self {
        OnIncomplete {
            commands: Some(steps),
            ..OnIncomplete::default()
        }
    }
}

/// A key that takes a mapping or, as its `commands:`, a list of steps.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct ListOr<T>(pub T);

impl<'de, T: ListOrMap> Deserialize<'de> for ListOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        list_or_map(d).map(ListOr)
    }
}

/// `error_policy:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorPolicy {
    /// dlq (default), skip or stop.
    #[serde(default)]
    pub on_item_failure: Option<Spanned<String>>,
    /// When false, the first failed item stops the job (after it is dead-lettered or
    /// skipped); default true.
    #[serde(default)]
    pub continue_on_failure: Option<bool>,
    /// Stop the job when more items than this have failed.
    #[serde(default)]
    pub max_failures: Option<usize>,
    /// Stop the job when more than this share of the items (0 to 1) has failed.
    #[serde(default)]
    pub failure_threshold: Option<Spanned<f64>>,
    /// How failed items are told on the terminal: `aggregate` (one list at the end, the
    /// default), `immediate` (each as it fails) or `batched:N` (N at a time).
    #[serde(default)]
    pub error_collection: Option<Spanned<String>>,
    /// Retries of a failed agent.
    #[serde(default)]
    pub retry_config: Option<RetryConfig>,
}

/// `retry_config:`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all (default 1).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// exponential (default) or fixed.
    #[serde(default)]
    pub backoff: Option<Spanned<String>>,
    /// The first delay (`500ms`, `2s`; default 1s).
    #[serde(default)]
    pub initial_delay: Option<Spanned<String>>,
    /// The longest delay (default 30s).
    #[serde(default)]
    pub max_delay: Option<Spanned<String>>,
}
