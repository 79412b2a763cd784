//! MapReduce workflow files (DESIGN.md §9): the shell subset of the original tool's YAML,
//! parsed with `serde-saphyr` into [`Workflow`] and checked into a [`Plan`] whose step
//! templates are compiled ([`template`]). Every key this subset does not know (a `claude:`
//! step, a misspelt option) is an error naming its line, never skipped.

pub mod input;
pub mod shell;
pub mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::dlq::filter::ItemFilter;
use template::{Scope, Template};

/// A workflow that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The file could not be read.
    #[error("cannot read workflow '{}'", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A problem at a line of the file (line 0: the file as a whole).
    #[error("{}{}: {message}", .path.display(), if *.line > 0 { format!(":{}", .line) } else { String::new() })]
    At {
        /// The file.
        path: PathBuf,
        /// 1-based line, 0 when unknown.
        line: u64,
        /// What is wrong.
        message: String,
        /// What to do about it, when known where it was found.
        hint: Option<&'static str>,
    },
}

impl crate::hint::Hint for WorkflowError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            WorkflowError::At { hint, .. } => *hint,
            WorkflowError::Read { .. } => None,
        }
    }
}

/// A workflow file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// The workflow's name (`${workflow.name}`).
    pub name: Spanned<String>,
    /// Must be `mapreduce` when given.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// Environment variables for every step (`${env.X}`).
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Steps run once, in the job's worktree, before the map phase.
    #[serde(default)]
    pub setup: Steps,
    /// The map phase.
    pub map: MapSpec,
    /// Steps run once, in the job's worktree, after every agent's commits are merged.
    #[serde(default)]
    pub reduce: Steps,
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
    /// What it is for (shown nowhere else).
    #[serde(default)]
    pub description: Option<String>,
    /// Environment variables for every step (`${env.X}`).
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// The steps.
    #[serde(alias = "steps")]
    pub commands: Steps,
    /// The session's own merge: steps run in its worktree once its steps are done (asked
    /// first, unless `run -y`), with `${merge.worktree}`, `${merge.source_branch}` and
    /// `${merge.target_branch}`.
    #[serde(default)]
    pub merge: Option<Steps>,
}

/// What a session's `merge:` steps read about the merge.
pub const MERGE_VARS: [&str; 3] = [
    "merge.worktree",
    "merge.source_branch",
    "merge.target_branch",
];

/// A workflow file, in one of its two shapes.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Shape {
    /// `map:` with setup and reduce: a job.
    MapReduce(Box<Workflow>),
    /// A list of steps (bare, or under `commands:`): a session.
    Sequential(Box<SessionFile>),
}

/// The `map:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// A JSON file (relative to the job's worktree), or a command whose output is a JSON
    /// array or object, or one item per line.
    pub input: Spanned<String>,
    /// An RFC 9535 JSONPath selecting the items from the input.
    #[serde(default)]
    pub json_path: Option<Spanned<String>>,
    /// Keep only items matching this expression (`score >= 5 && lang == 'rust'`).
    #[serde(default)]
    pub filter: Option<Spanned<String>>,
    /// Order items by a field: `field`, `field ASC` or `field DESC`.
    #[serde(default)]
    pub sort_by: Option<Spanned<String>>,
    /// Skip this many items.
    #[serde(default)]
    pub offset: usize,
    /// Keep at most this many items.
    #[serde(default)]
    pub max_items: Option<usize>,
    /// Agents at once (default 4; `--max-parallel` overrides).
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Kill an agent (its whole process group) after this many seconds.
    #[serde(default)]
    pub agent_timeout_secs: Option<Spanned<u64>>,
    /// The original's spelling of the agent time limit: seconds, or a duration (`120s`).
    #[serde(default)]
    pub timeout_per_agent: Option<Spanned<Seconds>>,
    /// The original's `timeout_config:` block (its `agent_timeout_secs`).
    #[serde(default)]
    pub timeout_config: Option<TimeoutConfig>,
    /// The steps each agent runs on its item.
    pub agent_template: Steps,
}

/// A list of steps, written either as a list or, as the original also allowed, as
/// `commands:` holding the list. Errors inside keep their lines.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Steps(pub Vec<Step>);

impl std::ops::Deref for Steps {
    type Target = [Step];
    fn deref(&self) -> &[Step] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Steps, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Steps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of steps, or `commands:` with a list of steps")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Steps, A::Error> {
                let mut steps = Vec::new();
                while let Some(step) = seq.next_element::<Step>()? {
                    steps.push(step);
                }
                Ok(Steps(steps))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Steps, A::Error> {
                let mut steps = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "commands" {
                        return Err(serde::de::Error::unknown_field(&key, &["commands"]));
                    }
                    if steps.is_some() {
                        return Err(serde::de::Error::duplicate_field("commands"));
                    }
                    steps = Some(map.next_value::<Vec<Step>>()?);
                }
                steps
                    .map(Steps)
                    .ok_or_else(|| serde::de::Error::missing_field("commands"))
            }
        }
        d.deserialize_any(Visitor)
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
    /// Kill an agent after this many seconds.
    #[serde(default)]
    pub agent_timeout_secs: Option<Spanned<u64>>,
}

/// One step: a shell command or a Claude Code command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The command, run with `sh -c` in the worktree.
    #[serde(default)]
    pub shell: Option<Spanned<String>>,
    /// A Claude Code command (a slash command and its arguments, `/lint --fix`), given to
    /// the `claude` CLI as one argument in the worktree.
    #[serde(default)]
    pub claude: Option<Spanned<String>>,
    /// A name for messages and the log.
    #[serde(default)]
    pub name: Option<String>,
    /// The step must make a commit: one that exits 0 without moving `HEAD` fails.
    #[serde(default)]
    pub commit_required: bool,
    /// Run the step only when this is true: the filter language over `${…}` variables and
    /// literals, parsed once at load (see [`template::Condition`]).
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    /// Kill the step (its whole process group) after this many seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// What to do when the step fails.
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Keep the step's standard output: `true` makes it `${shell.output}`, a name makes it
    /// `${NAME}` too, for the steps after it; an agent's last captured output is its
    /// result in `${map.results_json}`.
    #[serde(default)]
    pub capture_output: Option<Capture>,
    /// The original's spelling of a named capture: `${NAME}` for the steps after it (setup
    /// captures also for agents and reduce).
    #[serde(default)]
    pub capture: Option<Spanned<String>>,
    /// How the captured output is read: string (default), number, boolean, json (then
    /// `${NAME.field}` works) or lines (a JSON array of the lines).
    #[serde(default)]
    pub capture_format: Option<Spanned<String>>,
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

/// `on_failure:` of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnFailure {
    /// A command run after the step fails (`${shell.output}` holds the failed step's
    /// output tail).
    #[serde(default)]
    pub shell: Option<Spanned<String>>,
    /// A Claude Code command run after the step fails instead.
    #[serde(default)]
    pub claude: Option<Spanned<String>>,
    /// Run the failed step again after the handler, up to this many attempts in all
    /// (default 1: no retry).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// When false, a step that still fails does not fail the agent (default true).
    #[serde(default)]
    pub fail_workflow: Option<bool>,
    /// Kill the handler after this many seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `error_policy:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorPolicy {
    /// dlq (default), skip or stop.
    #[serde(default)]
    pub on_item_failure: Option<Spanned<String>>,
    /// Stop the job when more items than this have failed.
    #[serde(default)]
    pub max_failures: Option<usize>,
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

/// What a failed item becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnItemFailure {
    /// Dead-lettered; the job goes on.
    Dlq,
    /// Recorded as failed; the job goes on.
    Skip,
    /// The job stops.
    Stop,
}

/// What runs a step's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `sh -c` (the command's variables are quoted for where they stand).
    Shell,
    /// The `claude` CLI, the command one argument (variables pasted as they are).
    Claude,
}

impl StepKind {
    /// The key that names it (`shell`, `claude`).
    pub fn key(self) -> &'static str {
        match self {
            StepKind::Shell => "shell",
            StepKind::Claude => "claude",
        }
    }
}

/// A compiled step.
#[derive(Debug, Clone)]
pub struct PlanStep {
    /// What runs it.
    pub kind: StepKind,
    /// The command template.
    pub command: Template,
    /// Its place in its phase, from 1.
    pub number: usize,
    /// Its time limit.
    pub timeout: Option<Duration>,
    /// The capture variable (`shell.output` or a name).
    pub capture: Option<String>,
    /// How the captured output is read.
    pub capture_format: CaptureFormat,
    /// The failure handler.
    pub on_failure: Option<PlanHandler>,
    /// The line of `shell:` (for messages).
    pub line: u64,
    /// Its name, if given.
    pub name: Option<String>,
    /// Whether it must make a commit.
    pub commit_required: bool,
    /// Its condition, if any.
    pub when: Option<template::Condition>,
    /// Keep its standard output: the next step reads `${last.output}`.
    pub keep_output: bool,
}

/// Capture names a phase leaves for later phases, each with whether it holds JSON.
type Captures = Vec<(String, bool)>;

/// How a step's captured output is read (`capture_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureFormat {
    /// The text (without its last newline).
    #[default]
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// JSON: `${NAME.field}` reads into it.
    Json,
    /// The lines, as a JSON array of strings.
    Lines,
}

impl CaptureFormat {
    /// Turns a step's output into the captured value (as stored and substituted), or
    /// says why it is not of this format.
    pub fn read(self, output: &str) -> Result<String, String> {
        let trimmed = output.trim();
        match self {
            CaptureFormat::String => Ok(output.to_owned()),
            CaptureFormat::Number => trimmed
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(|_| trimmed.to_owned())
                .ok_or_else(|| {
                    format!("capture_format number: the output {trimmed:?} is not a number")
                }),
            CaptureFormat::Boolean => match trimmed {
                "true" | "false" => Ok(trimmed.to_owned()),
                _ => Err(format!(
                    "capture_format boolean: the output {trimmed:?} is not true or false"
                )),
            },
            CaptureFormat::Json => serde_json::from_str::<serde_json::Value>(trimmed)
                .map(|v| v.to_string())
                .map_err(|e| format!("capture_format json: the output is not JSON: {e}")),
            CaptureFormat::Lines => Ok(serde_json::Value::from(
                output.lines().map(str::to_owned).collect::<Vec<_>>(),
            )
            .to_string()),
        }
    }
}

/// A compiled `on_failure`.
#[derive(Debug, Clone)]
pub struct PlanHandler {
    /// What runs it.
    pub kind: StepKind,
    /// The handler's command.
    pub command: Template,
    /// Attempts of the failed step in all.
    pub max_attempts: u32,
    /// Whether a step that still fails fails the agent.
    pub fail_workflow: bool,
    /// The handler's time limit.
    pub timeout: Option<Duration>,
}

/// Retry timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (≥ 1).
    pub max_attempts: u32,
    /// Exponential (true) or fixed.
    pub exponential: bool,
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Retry {
    /// The delay before attempt `attempt` (2, 3, …).
    pub fn delay(&self, attempt: u32) -> Duration {
        if !self.exponential {
            return self.initial.min(self.max);
        }
        let shift = attempt.saturating_sub(2).min(20);
        self.initial.saturating_mul(1 << shift).min(self.max)
    }
}

/// A checked workflow, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The file.
    pub path: PathBuf,
    /// Its text (stored with the job, so `resume` runs exactly what `run` ran).
    pub source: String,
    /// The parsed workflow.
    pub shape: Shape,
    /// Its name (`${workflow.name}`).
    pub name: String,
    /// The resolved environment.
    pub env: BTreeMap<String, String>,
    /// Setup steps.
    pub setup: Vec<PlanStep>,
    /// Agent steps.
    pub agent: Vec<PlanStep>,
    /// Reduce steps.
    pub reduce: Vec<PlanStep>,
    /// `map.filter`.
    pub filter: Option<ItemFilter>,
    /// `map.sort_by`: the field path and whether descending.
    pub sort_by: Option<(Vec<String>, bool)>,
    /// `map.json_path`.
    pub json_path: Option<serde_json_path::JsonPath>,
    /// Default agents at once.
    pub max_parallel: usize,
    /// Agent time limit.
    pub agent_timeout: Option<Duration>,
    /// The failure policy.
    pub on_item_failure: OnItemFailure,
    /// Stop after more failures than this.
    pub max_failures: Option<usize>,
    /// Retries.
    pub retry: Retry,
}

impl Plan {
    /// Reads and checks a workflow file.
    pub fn load(path: &Path) -> Result<Plan, WorkflowError> {
        let source = std::fs::read_to_string(path).map_err(|source| WorkflowError::Read {
            path: path.to_owned(),
            source,
        })?;
        Plan::parse(path, &source)
    }

    /// Checks a workflow's text (`path` names it in messages): the YAML read into the
    /// file's shape, then each section checked by its own reader.
    pub fn parse(path: &Path, source: &str) -> Result<Plan, WorkflowError> {
        let r = Reader { path };
        let yaml_error = |e: serde_saphyr::Error| {
            let line = e.location().map_or(0, |l| l.line());
            let (message, hint) = yaml_message(&e);
            r.hinted(line, message, hint)
        };
        // The shape first: a list is a sequential workflow, and so is a mapping with
        // `commands:` (or `steps:`) and no `map:`.
        let probe: Option<serde_json::Value> = serde_saphyr::from_str(source).ok();
        let sequential = match &probe {
            Some(serde_json::Value::Array(_)) => true,
            Some(serde_json::Value::Object(m)) if !m.contains_key("map") => {
                if m.contains_key("commands") || m.contains_key("steps") {
                    true
                } else if m.contains_key("mode") || m.contains_key("setup") {
                    false
                } else {
                    return Err(r.at(
                        0,
                        "this is neither workflow shape: a MapReduce workflow has `map:` (with \
                         `input` and `agent_template`); a sequential one is a list of steps, or \
                         has `commands:`"
                            .into(),
                    ));
                }
            }
            _ => false,
        };
        if sequential {
            let file: SessionFile = match probe {
                Some(serde_json::Value::Array(_)) => SessionFile {
                    name: None,
                    mode: None,
                    description: None,
                    env: BTreeMap::new(),
                    commands: serde_saphyr::from_str(source).map_err(yaml_error)?,
                    merge: None,
                },
                _ => serde_saphyr::from_str(source).map_err(yaml_error)?,
            };
            return r.session(path, source, file);
        }
        let workflow: Workflow = serde_saphyr::from_str(source).map_err(yaml_error)?;
        let mut env = r.header(&workflow)?;
        let items = r.items(&workflow.map)?;
        let (agent_timeout, max_parallel) = r.agents(&workflow.map)?;
        let (on_item_failure, retry) = r.error_policy(&workflow.error_policy)?;
        let (setup, from_setup) = r.steps(&workflow.setup, Scope::Setup, &[], &env)?;
        let (agent, _) = r.steps(
            &workflow.map.agent_template,
            Scope::Agent,
            &from_setup,
            &env,
        )?;
        let (reduce, _) = r.steps(&workflow.reduce, Scope::Reduce, &from_setup, &env)?;
        record_env(&mut env, setup.iter().chain(&agent).chain(&reduce));
        Ok(Plan {
            path: path.to_owned(),
            source: source.to_owned(),
            max_parallel,
            agent_timeout,
            max_failures: workflow.error_policy.max_failures,
            on_item_failure,
            retry,
            env,
            setup,
            agent,
            reduce,
            filter: items.filter,
            sort_by: items.sort_by,
            json_path: items.json_path,
            name: workflow.name.value.clone(),
            shape: Shape::MapReduce(Box::new(workflow)),
        })
    }

    /// The map section, for a MapReduce workflow.
    pub fn map_spec(&self) -> Option<&MapSpec> {
        match &self.shape {
            Shape::MapReduce(w) => Some(&w.map),
            Shape::Sequential(_) => None,
        }
    }

    /// What the workflow would do, one line per phase or step, as `run --dry-run` shows it.
    pub fn outline(&self) -> Vec<String> {
        let step = |phase: &str, n: usize, step: &Step| {
            let (key, text) = match (&step.shell, &step.claude) {
                (Some(s), _) => ("shell", s.value.as_str()),
                (None, Some(c)) => ("claude", c.value.as_str()),
                (None, None) => ("?", ""),
            };
            let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("  {phase}/{n}  {key}: {text}")
        };
        let mut out = Vec::new();
        match &self.shape {
            Shape::Sequential(file) => {
                out.push(format!(
                    "sequential workflow {}: {} steps, run in one session worktree",
                    self.name,
                    file.commands.len()
                ));
                for (i, s) in file.commands.iter().enumerate() {
                    out.push(step("session", i + 1, s));
                }
            }
            Shape::MapReduce(w) => {
                out.push(format!("MapReduce workflow {}", self.name));
                for (i, s) in w.setup.iter().enumerate() {
                    out.push(step("setup", i + 1, s));
                }
                out.push(format!(
                    "  map: items from {:?}, {} at once",
                    w.map.input.value, self.max_parallel
                ));
                for (i, s) in w.map.agent_template.iter().enumerate() {
                    out.push(step("map", i + 1, s));
                }
                for (i, s) in w.reduce.iter().enumerate() {
                    out.push(step("reduce", i + 1, s));
                }
            }
        }
        out
    }

    /// True for a sequential workflow (a session).
    pub fn is_sequential(&self) -> bool {
        matches!(self.shape, Shape::Sequential(_))
    }

    /// True when a step or handler of any phase is a `claude:` one.
    pub fn has_claude(&self) -> bool {
        self.setup
            .iter()
            .chain(&self.agent)
            .chain(&self.reduce)
            .any(|s| {
                s.kind == StepKind::Claude
                    || s.on_failure
                        .as_ref()
                        .is_some_and(|h| h.kind == StepKind::Claude)
            })
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The workflow as JSON (for the job's spec).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.shape).unwrap_or(serde_json::Value::Null)
    }

    /// The item fields the agent steps read (`${item.a.b}` → `["a", "b"]`).
    pub fn item_paths(&self) -> Vec<(Vec<String>, u64)> {
        let mut out = Vec::new();
        for step in &self.agent {
            for p in step.command.item_paths() {
                out.push((p, step.line));
            }
            if let Some(h) = &step.on_failure {
                for p in h.command.item_paths() {
                    out.push((p, step.line));
                }
            }
        }
        out
    }
}

/// Reads a workflow's sections, naming the file in every error.
struct Reader<'p> {
    path: &'p Path,
}

/// The work-item list's settings, checked.
struct Items {
    json_path: Option<serde_json_path::JsonPath>,
    filter: Option<ItemFilter>,
    sort_by: Option<(Vec<String>, bool)>,
}

impl Reader<'_> {
    fn hinted(&self, line: u64, message: String, hint: Option<&'static str>) -> WorkflowError {
        WorkflowError::At {
            path: self.path.to_owned(),
            line,
            message,
            hint,
        }
    }

    fn at(&self, line: u64, message: String) -> WorkflowError {
        self.hinted(line, message, None)
    }

    /// `mode`, `name` and `env`: the workflow's environment.
    fn header(&self, workflow: &Workflow) -> Result<BTreeMap<String, String>, WorkflowError> {
        if let Some(mode) = &workflow.mode
            && mode.value != "mapreduce"
        {
            return Err(self.at(
                mode.referenced.line(),
                format!(
                    "mode '{}' is not supported (only `mode: mapreduce`)",
                    mode.value
                ),
            ));
        }
        if workflow.name.value.trim().is_empty() {
            return Err(self.at(workflow.name.referenced.line(), "name is empty".into()));
        }
        let mut env = BTreeMap::new();
        for (k, v) in &workflow.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.value.contains('\0') {
                return Err(self.at(
                    v.referenced.line(),
                    format!("bad environment variable {k:?}"),
                ));
            }
            env.insert(k.clone(), v.value.clone());
        }
        Ok(env)
    }

    /// A sequential workflow: its steps run as setup steps do, one after another in the
    /// session's worktree, each checkpointed.
    fn session(&self, path: &Path, source: &str, file: SessionFile) -> Result<Plan, WorkflowError> {
        if let Some(mode) = &file.mode
            && !["standard", "sequential"].contains(&mode.value.as_str())
        {
            return Err(self.at(
                mode.referenced.line(),
                format!(
                    "mode '{}' is not a sequential mode (standard or sequential); a MapReduce \
                     workflow has `map:`",
                    mode.value
                ),
            ));
        }
        if file.commands.is_empty() {
            return Err(self.at(0, "the workflow has no steps".into()));
        }
        let name = match &file.name {
            Some(n) if n.value.trim().is_empty() => {
                return Err(self.at(n.referenced.line(), "name is empty".into()));
            }
            Some(n) => n.value.clone(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "workflow".into()),
        };
        let mut env = BTreeMap::new();
        for (k, v) in &file.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.value.contains('\0') {
                return Err(self.at(
                    v.referenced.line(),
                    format!("bad environment variable {k:?}"),
                ));
            }
            env.insert(k.clone(), v.value.clone());
        }
        let (setup, mut named) = self.steps(&file.commands, Scope::Setup, &[], &env)?;
        named.extend(MERGE_VARS.map(|v| (v.to_owned(), false)));
        let reduce = match &file.merge {
            Some(steps) if steps.is_empty() => {
                return Err(self.at(0, "merge: has no steps".into()));
            }
            Some(steps) => self.steps(steps, Scope::Setup, &named, &env)?.0,
            None => Vec::new(),
        };
        record_env(&mut env, setup.iter().chain(&reduce));
        Ok(Plan {
            path: path.to_owned(),
            source: source.to_owned(),
            max_parallel: 1,
            agent_timeout: None,
            max_failures: None,
            on_item_failure: OnItemFailure::Stop,
            retry: Retry {
                max_attempts: 1,
                exponential: false,
                initial: Duration::ZERO,
                max: Duration::ZERO,
            },
            env,
            setup,
            agent: Vec::new(),
            reduce,
            filter: None,
            sort_by: None,
            json_path: None,
            name,
            shape: Shape::Sequential(Box::new(file)),
        })
    }

    /// `map.input`, `agent_template` present; `json_path`, `filter`, `sort_by`.
    fn items(&self, m: &MapSpec) -> Result<Items, WorkflowError> {
        if m.input.value.trim().is_empty() {
            return Err(self.at(m.input.referenced.line(), "map.input is empty".into()));
        }
        if m.agent_template.is_empty() {
            return Err(self.at(0, "map.agent_template has no steps".into()));
        }
        let json_path = match &m.json_path {
            Some(p) => Some(
                crate::dlq::filter::check_nesting(&p.value)
                    .and_then(|()| {
                        serde_json_path::JsonPath::parse(&p.value).map_err(|e| e.to_string())
                    })
                    .map_err(|e| {
                        self.at(
                            p.referenced.line(),
                            format!(
                                "map.json_path {} is not RFC 9535 JSONPath: {e}",
                                crate::dlq::filter::preview(&p.value)
                            ),
                        )
                    })?,
            ),
            None => None,
        };
        let filter = match &m.filter {
            Some(f) => Some(ItemFilter::parse_data(&f.value).map_err(|e| {
                self.hinted(
                    f.referenced.line(),
                    format!("map.filter: {e}"),
                    Some(crate::hint::FILTER),
                )
            })?),
            None => None,
        };
        let sort_by = match &m.sort_by {
            Some(s) => Some(parse_sort(&s.value).map_err(|e| self.at(s.referenced.line(), e))?),
            None => None,
        };
        Ok(Items {
            json_path,
            filter,
            sort_by,
        })
    }

    /// The agent time limit (under any of its three spellings, given once) and
    /// `max_parallel`.
    fn agents(&self, m: &MapSpec) -> Result<(Option<Duration>, usize), WorkflowError> {
        let mut limits: Vec<(u64, Duration)> = Vec::new();
        if let Some(s) = &m.agent_timeout_secs {
            limits.push((s.referenced.line(), Duration::from_secs(s.value)));
        }
        if let Some(s) = m
            .timeout_config
            .as_ref()
            .and_then(|c| c.agent_timeout_secs.as_ref())
        {
            limits.push((s.referenced.line(), Duration::from_secs(s.value)));
        }
        if let Some(s) = &m.timeout_per_agent {
            let d = match &s.value {
                Seconds::Secs(n) => Duration::from_secs(*n),
                Seconds::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                    self.at(
                        s.referenced.line(),
                        format!("map.timeout_per_agent {t:?} is not a duration: {e}"),
                    )
                })?,
            };
            limits.push((s.referenced.line(), d));
        }
        if limits.len() > 1 {
            return Err(self.at(
                limits[1].0,
                "the agent time limit is given twice (agent_timeout_secs, timeout_per_agent,                  timeout_config.agent_timeout_secs): keep one"
                    .into(),
            ));
        }
        let agent_timeout = limits.first().map(|l| l.1);
        let max_parallel = m.max_parallel.unwrap_or(4);
        if max_parallel == 0 {
            return Err(self.at(0, "map.max_parallel must be at least 1".into()));
        }
        Ok((agent_timeout, max_parallel))
    }

    /// `error_policy`: what a failed item does, and its retries.
    fn error_policy(&self, p: &ErrorPolicy) -> Result<(OnItemFailure, Retry), WorkflowError> {
        let on_item_failure = match p.on_item_failure.as_ref().map(|s| (s.value.as_str(), s)) {
            None | Some(("dlq", _)) => OnItemFailure::Dlq,
            Some(("skip", _)) => OnItemFailure::Skip,
            Some(("stop", _)) => OnItemFailure::Stop,
            Some((other, s)) => {
                return Err(self.at(
                    s.referenced.line(),
                    format!("on_item_failure '{other}' is not one of dlq, skip, stop"),
                ));
            }
        };
        let retry = match &p.retry_config {
            None => Retry {
                max_attempts: 1,
                exponential: true,
                initial: Duration::from_secs(1),
                max: Duration::from_secs(30),
            },
            Some(r) => {
                let duration = |d: &Option<Spanned<String>>, default: u64| match d {
                    None => Ok(Duration::from_secs(default)),
                    Some(s) => humantime::parse_duration(s.value.trim()).map_err(|e| {
                        self.at(
                            s.referenced.line(),
                            format!("bad duration {:?}: {e}", s.value),
                        )
                    }),
                };
                let exponential = match r.backoff.as_ref().map(|b| (b.value.as_str(), b)) {
                    None | Some(("exponential", _)) => true,
                    Some(("fixed", _)) => false,
                    Some((other, b)) => {
                        return Err(self.at(
                            b.referenced.line(),
                            format!("backoff '{other}' is not one of exponential, fixed"),
                        ));
                    }
                };
                Retry {
                    max_attempts: r.max_attempts.unwrap_or(1).max(1),
                    exponential,
                    initial: duration(&r.initial_delay, 1)?,
                    max: duration(&r.max_delay, 30)?,
                }
            }
        };
        Ok((on_item_failure, retry))
    }

    /// A phase's steps, compiled for `scope`; captures (name → whether it holds JSON)
    /// made by setup (`seen`) are seen by agents and reduce too.
    fn steps(
        &self,
        steps: &[Step],
        scope: Scope,
        seen: &[(String, bool)],
        env: &BTreeMap<String, String>,
    ) -> Result<(Vec<PlanStep>, Captures), WorkflowError> {
        let mut named: Captures = seen.to_vec();
        let mut out = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            out.push(self.step(step, i, scope, &mut named, env)?);
        }
        // A step whose next step reads `${last.output}` or `${shell.output}` keeps its
        // output (an `on_failure` handler's `${shell.output}` is its own step's).
        for i in 1..out.len() {
            let next = &out[i];
            let reads = ["last.output", "shell.output"].iter().any(|v| {
                next.command.reads_captured(v)
                    || next.when.as_ref().is_some_and(|w| w.reads_captured(v))
            });
            let handler = next
                .on_failure
                .as_ref()
                .is_some_and(|h| h.command.reads_captured("last.output"));
            out[i - 1].keep_output |= reads || handler;
        }
        Ok((out, named))
    }

    /// The command of a step or handler: exactly one of `shell:` and `claude:`.
    fn command<'s>(
        &self,
        shell: Option<&'s Spanned<String>>,
        claude: Option<&'s Spanned<String>>,
        i: usize,
        what: &str,
    ) -> Result<(StepKind, &'s Spanned<String>), WorkflowError> {
        match (shell, claude) {
            (Some(s), None) => Ok((StepKind::Shell, s)),
            (None, Some(c)) => Ok((StepKind::Claude, c)),
            (Some(_), Some(c)) => Err(self.at(
                c.referenced.line(),
                format!("{what} {} has both shell: and claude: keep one", i + 1),
            )),
            (None, None) => Err(self.at(
                0,
                format!("{what} {} has neither shell: nor claude:", i + 1),
            )),
        }
    }

    /// One step, the `i`th of its phase; a capture it makes joins `named`.
    fn step(
        &self,
        step: &Step,
        i: usize,
        scope: Scope,
        named: &mut Captures,
        env: &BTreeMap<String, String>,
    ) -> Result<PlanStep, WorkflowError> {
        let (kind, text) = self.command(step.shell.as_ref(), step.claude.as_ref(), i, "step")?;
        let line = text.referenced.line();
        // What a step can read: the names captured so far and, from the second
        // step on, the step before's `${last.output}`, `${last.exit_code}` and (as
        // in the original) `${shell.output}`.
        let mut captured: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
        if i > 0 {
            captured.extend(["last.output", "last.exit_code", "shell.output"].map(String::from));
        }
        let json_names: Vec<String> = named
            .iter()
            .filter(|(_, json)| *json)
            .map(|(n, _)| n.clone())
            .collect();
        let ctx = template::Context {
            scope,
            captured: &captured,
            json: &json_names,
            env,
        };
        let command = compile(kind, &text.value, &ctx).map_err(|e| self.at(line, e))?;
        let when = match &step.when {
            Some(w) => Some(
                template::Condition::compile(&w.value, &ctx)
                    .map_err(|e| self.hinted(w.referenced.line(), e, Some(crate::hint::FILTER)))?,
            ),
            None => None,
        };
        let on_failure = match &step.on_failure {
            Some(h) => {
                let mut with_output = captured.clone();
                with_output.push("shell.output".into());
                let hctx = template::Context {
                    scope,
                    captured: &with_output,
                    json: &json_names,
                    env,
                };
                let (kind, text) =
                    self.command(h.shell.as_ref(), h.claude.as_ref(), i, "on_failure of step")?;
                Some(PlanHandler {
                    kind,
                    command: compile(kind, &text.value, &hctx)
                        .map_err(|e| self.at(text.referenced.line(), e))?,
                    max_attempts: h.max_attempts.unwrap_or(1).max(1),
                    fail_workflow: h.fail_workflow.unwrap_or(true),
                    timeout: h.timeout.map(Duration::from_secs),
                })
            }
            None => None,
        };
        let output = match (&step.capture_output, &step.capture) {
            (Some(Capture::Name(_) | Capture::Flag(true)), Some(c)) => {
                return Err(self.at(
                    c.referenced.line(),
                    "a step has both capture and capture_output: keep one".into(),
                ));
            }
            (_, Some(c)) => Some(Capture::Name(c.value.clone())),
            (o, None) => o.clone(),
        };
        let capture_format = match step.capture_format.as_ref().map(|f| (f.value.as_str(), f)) {
            None | Some(("string", _)) => CaptureFormat::String,
            Some(("number", _)) => CaptureFormat::Number,
            Some(("boolean", _)) => CaptureFormat::Boolean,
            Some(("json", _)) => CaptureFormat::Json,
            Some(("lines", _)) => CaptureFormat::Lines,
            Some((other, f)) => {
                return Err(self.at(
                    f.referenced.line(),
                    format!(
                        "capture_format '{other}' is not one of string, number, boolean, json, lines"
                    ),
                ));
            }
        };
        let capture = match &output {
            None | Some(Capture::Flag(false)) => None,
            Some(Capture::Flag(true)) => Some("shell.output".to_owned()),
            // The original's spelling of the default names.
            Some(Capture::Name(n)) if n == "shell.output" || n == "claude.output" => {
                Some(n.clone())
            }
            Some(Capture::Name(n)) => {
                if !template::is_capture_name(n) {
                    return Err(self.at(
                        line,
                        format!(
                            "capture_output name {n:?} must be letters, digits and _ \
                             (and not a built-in like item or map)"
                        ),
                    ));
                }
                Some(n.clone())
            }
        };
        if step.capture_format.is_some() && capture.is_none() {
            return Err(self.at(
                line,
                "capture_format without capture: name the capture".into(),
            ));
        }
        if let Some(c) = capture
            .as_ref()
            .filter(|c| !["shell.output", "claude.output"].contains(&c.as_str()))
        {
            named.retain(|(n, _)| n != c);
            named.push((c.clone(), capture_format == CaptureFormat::Json));
        }
        // A claude: step's result is `${claude.output}` for the steps after it.
        if kind == StepKind::Claude && !named.iter().any(|(n, _)| n == "claude.output") {
            named.push(("claude.output".into(), false));
        }
        Ok(PlanStep {
            kind,
            command,
            number: i + 1,
            timeout: step.timeout.map(Duration::from_secs),
            capture,
            capture_format,
            on_failure,
            line,
            name: step.name.clone(),
            commit_required: step.commit_required,
            when,
            keep_output: false,
        })
    }
}

/// Compiles a step's command for what runs it: shell text is placed and quoted; a Claude
/// command is one argument, its values pasted as they are.
fn compile(kind: StepKind, text: &str, ctx: &template::Context<'_>) -> Result<Template, String> {
    match kind {
        StepKind::Shell => Template::compile(text, ctx),
        StepKind::Claude => Template::compile_text(text, ctx),
    }
}

/// `${env.X}` not in the workflow's env comes from the process's environment now, and is
/// recorded with the job so that `resume` sees the same value.
fn record_env<'s>(env: &mut BTreeMap<String, String>, steps: impl Iterator<Item = &'s PlanStep>) {
    for step in steps {
        let handler = step.on_failure.as_ref().map(|h| &h.command);
        let from_when = step.when.iter().flat_map(|w| w.env_names());
        let names = std::iter::once(&step.command)
            .chain(handler)
            .flat_map(|t| t.env_names())
            .chain(from_when);
        for name in names {
            if !env.contains_key(&name)
                && let Ok(v) = std::env::var(&name)
            {
                env.insert(name, v);
            }
        }
    }
}

/// The YAML reader's error in one line, and the hint it calls for (an unknown key or
/// variant: the workflow format).
fn yaml_message(e: &serde_saphyr::Error) -> (String, Option<&'static str>) {
    use serde_saphyr::Error as E;
    let column = e.location().map(|l| l.column()).unwrap_or(0);
    let at_column = |m: String| {
        if column > 0 {
            format!("{m} (column {column})")
        } else {
            m
        }
    };
    // The crate's words for these name its own options; say what the author can change.
    match e.without_snippet() {
        E::DuplicateMappingKey { key, .. } => {
            let key = key
                .as_deref()
                .map_or("a key".to_owned(), |k| format!("the key `{k}`"));
            return (
                at_column(format!(
                    "{key} appears twice in one mapping; keep one (YAML holds one value per key)"
                )),
                None,
            );
        }
        E::Budget { breach, .. } => return (at_column(budget_message(breach)), None),
        _ => {}
    }
    // The crate's message starts with "line L column C: " and may carry a snippet; keep
    // one line and let our own prefix name the line.
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let stripped = match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest,
        _ => first,
    };
    // Some messages end with their own " at line L, column C"; the prefix says the line.
    let stripped = match stripped.rfind(" at line ") {
        Some(at) if stripped[at..].contains(", column ") => &stripped[..at],
        _ => stripped,
    };
    let mut message = if column > 0 {
        format!("{stripped} (column {column})")
    } else {
        stripped.to_owned()
    };
    if let Some(hint) = instead(stripped) {
        message.push_str("; ");
        message.push_str(hint);
    }
    // serde's own words for a key or variant the types do not have.
    let unknown = stripped.starts_with("unknown field") || stripped.starts_with("unknown variant");
    (message, unknown.then_some(crate::hint::WORKFLOW_FORMAT))
}

/// A limit of the YAML reader, in the author's terms (the limits guard against files made
/// to exhaust memory; a workflow near them holds data that belongs in a file).
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    // The limits are the reader's defaults, which `from_str` applies.
    let limit = serde_saphyr::budget::Budget::default();
    let what = match breach {
        B::Nodes { .. } => format!(
            "more than {} YAML values (keys, scalars, lists and maps)",
            limit.max_nodes
        ),
        B::Events { .. } => format!("more than {} YAML parser events", limit.max_events),
        B::Depth { .. } => format!("lists and maps nested more than {} deep", limit.max_depth),
        B::Documents { .. } => format!("more than {} YAML documents", limit.max_documents),
        B::Aliases { .. } => format!("more than {} YAML aliases", limit.max_aliases),
        B::Anchors { .. } => format!("more than {} YAML anchors", limit.max_anchors),
        B::ScalarBytes { .. } => format!(
            "more than {} MiB of text",
            limit.max_total_scalar_bytes >> 20
        ),
        _ => "more than the YAML reader takes".to_owned(),
    };
    format!("the workflow is too big: it has {what}; keep data the steps need in a file they read")
}

/// What to use instead of a key of the original tool that this runner does not have.
fn instead(message: &str) -> Option<&'static str> {
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    Some(match key {
        "goal_seek" => {
            "write the loop in a `shell:` step, or retry it with `on_failure: {max_attempts: N}`"
        }
        "foreach" => "make the list the map phase's `input` (one agent per item)",
        "test" => "the original's `test:` was a command: use `shell:`",
        "validate" => "check in a `shell:` step that exits non-zero when the check fails",
        "analyze" | "handler" | "write_file" => "do it in a `shell:` step",
        _ => return None,
    })
}

fn parse_sort(text: &str) -> Result<(Vec<String>, bool), String> {
    let mut words = text.split_whitespace();
    let field = words.next().ok_or("map.sort_by is empty")?;
    let desc = match words.next().map(str::to_ascii_uppercase).as_deref() {
        None | Some("ASC") => false,
        Some("DESC") => true,
        Some(other) => {
            return Err(format!(
                "map.sort_by: expected ASC or DESC, found {other:?}"
            ));
        }
    };
    if words.next().is_some() {
        return Err(format!("map.sort_by {text:?}: expected `field [ASC|DESC]`"));
    }
    let mut path: Vec<String> = field.split('.').map(str::to_owned).collect();
    // `item` alone sorts by the item itself (string items).
    if path[0] == "item" {
        path.remove(0);
    }
    if path.iter().any(String::is_empty) {
        return Err(format!("map.sort_by: bad field {field:?}"));
    }
    Ok((path, desc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Plan, String> {
        Plan::parse(Path::new("w.yml"), text).map_err(|e| e.to_string())
    }

    const OK: &str = "name: demo
mode: mapreduce
env:
  GREETING: hi
setup:
  - shell: echo setup ${workflow.name}
map:
  input: items.json
  json_path: \"$.items[*]\"
  filter: \"score >= 2\"
  sort_by: score DESC
  max_parallel: 3
  agent_template:
    - shell: echo ${item.name} ${env.GREETING}
      capture_output: true
    - shell: echo ${shell.output}
reduce:
  - shell: echo ${map.successful}/${map.total}
error_policy:
  on_item_failure: dlq
  retry_config:
    max_attempts: 3
    initial_delay: 10ms
";

    #[test]
    fn parses_the_subset() {
        let plan = parse(OK).unwrap();
        assert_eq!(plan.name(), "demo");
        assert_eq!(plan.max_parallel, 3);
        assert_eq!(plan.agent.len(), 2);
        assert_eq!(plan.retry.max_attempts, 3);
        assert_eq!(plan.retry.delay(2), Duration::from_millis(10));
        assert_eq!(plan.retry.delay(3), Duration::from_millis(20));
        assert_eq!(plan.sort_by, Some((vec!["score".into()], true)));
        assert_eq!(plan.item_paths(), vec![(vec!["name".to_string()], 14)]);
    }

    /// The original's `commands:` form of a step list is the same list; errors inside it
    /// keep their lines.
    #[test]
    fn steps_may_be_wrapped_in_commands() {
        let wrapped = "name: demo
map:
  input: items.json
  json_path: $[*]
  agent_template:
    commands:
      - shell: echo ${item}
      - shell: echo two
reduce:
  commands:
    - shell: echo ${map.total}
";
        let plan = parse(wrapped).unwrap();
        assert_eq!((plan.agent.len(), plan.reduce.len()), (2, 1));
        assert_eq!(plan.agent[1].line, 8);
        assert!(plan.json_path.is_some());
        let plan =
            parse(&wrapped.replace("      - shell: echo two", "      - claude: /x")).unwrap();
        assert_eq!(plan.agent[1].kind, StepKind::Claude);
        assert_eq!(plan.agent[1].line, 8);
        let e = parse(&wrapped.replace(
            "    commands:\n      - shell: echo ${item}",
            "    command:\n      - shell: echo ${item}",
        ))
        .unwrap_err();
        assert!(
            e.contains("unknown field `command`") && e.contains("commands"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let both = OK.replace(
            "    - shell: echo ${shell.output}",
            "    - shell: echo ${shell.output}\n      claude: /fix ${item.name}",
        );
        let e = parse(&both).unwrap_err();
        assert!(
            e.starts_with("w.yml:17: step 2 has both shell: and claude: keep one"),
            "{e}"
        );
        let neither = OK.replace("    - shell: echo ${shell.output}", "    - name: nothing");
        let e = parse(&neither).unwrap_err();
        assert_eq!(e, "w.yml: step 2 has neither shell: nor claude:");
        // A claude command's variables are pasted as they are: it is one argument.
        let claude = OK.replace(
            "    - shell: echo ${shell.output}",
            "    - claude: \"/fix --area '${item.name}' ${claude.nope}\"",
        );
        let e = parse(&claude).unwrap_err();
        assert!(e.starts_with("w.yml:16: "), "{e}");
        // The original's other step kinds say what to use instead.
        for (key, hint) in [
            ("goal_seek", "on_failure: {max_attempts: N}"),
            ("foreach", "the map phase's `input`"),
            ("validate", "exits non-zero"),
        ] {
            let text = OK.replace(
                "    - shell: echo ${shell.output}",
                &format!("    - {key}: x"),
            );
            let e = parse(&text).unwrap_err();
            assert!(
                e.starts_with(&format!("w.yml:16: unknown field `{key}`")),
                "{e}"
            );
            assert!(e.contains(hint), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        // A plain typo gets no advice.
        assert!(
            !parse(&OK.replace("  max_parallel: 3", "  max_paralel: 3"))
                .unwrap_err()
                .contains("; ")
        );
        let e = parse(&OK.replace("  max_parallel: 3", "  max_paralel: 3")).unwrap_err();
        assert!(
            e.starts_with("w.yml:12: unknown field `max_paralel`"),
            "{e}"
        );
        let e = parse(&OK.replace("  input: items.json\n", "")).unwrap_err();
        assert!(e.contains("missing field `input`"), "{e}");
        let e = parse(&OK.replace("echo ${map.successful}", "echo ${item.name}")).unwrap_err();
        assert!(e.starts_with("w.yml:18: "), "{e}");
        let e = parse(&OK.replace("$.items[*]", "$.items[")).unwrap_err();
        assert!(e.starts_with("w.yml:9: map.json_path"), "{e}");
        let e = parse(&OK.replace("score >= 2", "score >=")).unwrap_err();
        assert!(e.starts_with("w.yml:10: map.filter"), "{e}");
        let e = parse("name: [unclosed\n").unwrap_err();
        assert!(e.starts_with("w.yml:"), "{e}");
        let e = parse(&OK.replace("${env.GREETING}", "${env.NOPE_NOT_SET_X}")).unwrap_err();
        assert!(e.contains("NOPE_NOT_SET_X"), "{e}");
        let e = parse(&OK.replace("mode: mapreduce", "mode: standard")).unwrap_err();
        assert!(e.starts_with("w.yml:2: mode 'standard'"), "{e}");
    }
}
