//! MapReduce workflow files (DESIGN.md §9): the shell subset of the original tool's YAML,
//! parsed with `serde-saphyr` into [`Workflow`] and checked into a [`Plan`] whose step
//! templates are compiled ([`template`]). Every key this subset does not know (a `claude:`
//! step, a misspelt option) is an error naming its line, never skipped.

pub mod env;
pub mod file;
pub mod glob;
pub mod input;
mod read;
pub mod shell;
pub mod template;

pub use file::{MapSpec, SessionFile, Step, Steps, Workflow};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
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

/// What `merge:` steps read about the merge.
pub const MERGE_VARS: [&str; 4] = [
    "merge.worktree",
    "merge.source_branch",
    "merge.target_branch",
    "merge.session_id",
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

/// How failed items are told on the terminal (`error_policy.error_collection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Collection {
    /// One list at the end (default).
    #[default]
    Aggregate,
    /// Each as it fails.
    Immediate,
    /// This many at a time.
    Batched(usize),
}

/// What runs a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `sh -c` (the command's variables are quoted for where they stand).
    Shell,
    /// The `claude` CLI, the command one argument (variables pasted as they are).
    Claude,
    /// A file written in the worktree.
    WriteFile,
    /// The original's `analyze:`, which cannot run: the step fails saying why.
    Analyze,
}

impl StepKind {
    /// The key that names it (`shell`, `claude`, …).
    pub fn key(self) -> &'static str {
        match self {
            StepKind::Shell => "shell",
            StepKind::Claude => "claude",
            StepKind::WriteFile => "write_file",
            StepKind::Analyze => "analyze",
        }
    }
}

/// Why an `analyze:` step cannot run.
pub const ANALYZE_REMOVED: &str = "analyze: steps ran the original tool's project analysis \
    (metrics and context files for Claude), which the original itself no longer has and \
    this runner never had; make the step a shell: or claude: step that writes what the next \
    steps read";

/// A compiled step.
#[derive(Debug, Clone)]
pub struct PlanStep {
    /// What runs it.
    pub kind: StepKind,
    /// The command template (shell and claude steps).
    pub command: Template,
    /// What a `write_file:` step writes.
    pub write: Option<WriteSpec>,
    /// Its place in its phase, from 1.
    pub number: usize,
    /// Its time limit.
    pub timeout: Option<Duration>,
    /// The capture variable (`shell.output` or a name).
    pub capture: Option<String>,
    /// How the captured output is read.
    pub capture_format: CaptureFormat,
    /// What the capture holds and what else it records.
    pub streams: Streams,
    /// The failure handler.
    pub on_failure: Option<PlanHandler>,
    /// A step run after this one succeeds.
    pub on_success: Option<Box<PlanStep>>,
    /// Steps by exit code.
    pub on_exit_code: Vec<(i32, PlanStep)>,
    /// The line of the step (for messages).
    pub line: u64,
    /// Its name, if given.
    pub name: Option<String>,
    /// Whether it must make a commit.
    pub commit_required: bool,
    /// Its condition, if any.
    pub when: Option<template::Condition>,
    /// Keep its standard output: the next step reads `${last.output}`.
    pub keep_output: bool,
    /// A failure does not stop the workflow.
    pub allow_failure: bool,
    /// Its own environment variables (values may hold `${…}`).
    pub env: Vec<(String, Template)>,
    /// Where it runs, relative to its worktree.
    pub working_dir: Option<Template>,
    /// Runs with only its own `env:` and `PATH`.
    pub clear_env: bool,
    /// Its validation.
    pub validate: Option<Box<PlanValidate>>,
    /// `outputs:`: the variable (`ID.NAME`) and the glob of each.
    pub outputs: Vec<(String, String)>,
}

impl PlanStep {
    /// True when the step reads git's view of the changes (`${step.*}`, `${workflow.*}`).
    pub fn reads_git(&self) -> bool {
        self.command.reads_git()
            || self
                .write
                .as_ref()
                .is_some_and(|w| w.path.reads_git() || w.content.reads_git())
            || self.env.iter().any(|(_, t)| t.reads_git())
            || self.working_dir.as_ref().is_some_and(Template::reads_git)
    }
}

/// What a step's capture holds (`capture_streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    /// Standard output (the default).
    pub stdout: bool,
    /// Standard error: `NAME.stderr`, or the capture itself without stdout.
    pub stderr: bool,
    /// `NAME.exit_code`.
    pub exit_code: bool,
    /// `NAME.success`.
    pub success: bool,
    /// `NAME.duration`.
    pub duration: bool,
}

impl Default for Streams {
    fn default() -> Streams {
        Streams {
            stdout: true,
            stderr: false,
            exit_code: false,
            success: false,
            duration: false,
        }
    }
}

impl Streams {
    /// True when the capture records more than the output (so it is made whether the step
    /// succeeded or not).
    pub fn extended(&self) -> bool {
        !self.stdout || self.stderr || self.exit_code || self.success || self.duration
    }
}

/// What a `write_file:` step writes.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    /// The path, relative to the worktree.
    pub path: Template,
    /// The content.
    pub content: Template,
    /// How the content is checked and written.
    pub format: WriteFormat,
    /// The file's mode.
    pub mode: Option<u32>,
    /// Make missing directories.
    pub create_dirs: bool,
}

/// `write_file.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFormat {
    /// As it is.
    Text,
    /// JSON, pretty-printed.
    Json,
    /// YAML (the content read as YAML or JSON).
    Yaml,
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
    /// says why it is not of this format. `success` is whether the command succeeded: a
    /// boolean capture whose output is not `true` or `false` is that, as in the original.
    pub fn read(self, output: &str, success: bool) -> Result<String, String> {
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
            CaptureFormat::Boolean => match trimmed.lines().last().map(str::trim) {
                Some(word @ ("true" | "false")) => Ok(word.to_owned()),
                _ => Ok(success.to_string()),
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

/// A compiled `on_failure`: handler steps, then the failed step again while attempts
/// remain.
#[derive(Debug, Clone)]
pub struct PlanHandler {
    /// The handler's steps, in order (`${shell.output}`, `${shell.stderr}`,
    /// `${shell.exit_code}` tell the failure).
    pub steps: Vec<PlanStep>,
    /// Attempts of the failed step in all.
    pub max_attempts: u32,
    /// Whether a step that still fails fails the workflow: `None` (unset) when its
    /// handler failed too, as the original (whose default is `false`, a handler meaning
    /// the failure is handled).
    pub fail_workflow: Option<bool>,
    /// After which failed attempts the handler runs.
    pub runs: HandlerRuns,
}

/// After which failed attempts of its step an `on_failure` handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerRuns {
    /// After each (a MapReduce phase's).
    AfterEach,
    /// Between attempts, never after the last (a sequential workflow's shell step, as
    /// the original's sessions run a test's debugging).
    BetweenAttempts,
    /// After the first only, then the step is tried again alone (a sequential
    /// workflow's Claude step, as the original retries the command after its handler).
    AfterFirst,
}

/// A compiled `validate:`.
#[derive(Debug, Clone)]
pub struct PlanValidate {
    /// Commands that check the step's work (none: the step itself wrote the result).
    pub steps: Vec<PlanStep>,
    /// Where the result is; else the last command's output.
    pub result_file: Option<Template>,
    /// The least `completion_percentage` that passes.
    pub threshold: f64,
    /// What runs while the result is under the threshold.
    pub on_incomplete: Option<PlanIncomplete>,
    /// The line of `validate:`.
    pub line: u64,
}

/// A compiled `on_incomplete:`.
#[derive(Debug, Clone)]
pub struct PlanIncomplete {
    /// Its steps (`${validation.*}` tell the result).
    pub steps: Vec<PlanStep>,
    /// Rounds of handler and validation.
    pub max_attempts: u32,
    /// Whether a step still incomplete fails the workflow.
    pub fail_workflow: bool,
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

/// One key of `map.sort_by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The field's path in the item.
    pub path: Vec<String>,
    /// Descending.
    pub desc: bool,
    /// Items without the field (or with null) first.
    pub nulls_first: bool,
}

/// What a run adds to a workflow before it is checked: variables the workflow's steps may
/// name (`--args` gives `ARG`, `--param K=V` gives `K`).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Added to the workflow's environment.
    pub env: BTreeMap<String, String>,
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
    /// The workflow's plain environment values (and what the run added, and `${env.X}`
    /// read from the process): recorded with the job.
    pub env: BTreeMap<String, String>,
    /// The rest of the environment: files, computed values, profiles, secrets.
    pub environment: env::EnvPlan,
    /// Setup steps (a session's steps).
    pub setup: Vec<PlanStep>,
    /// Setup's time limit (the whole phase).
    pub setup_timeout: Option<Duration>,
    /// Agent steps.
    pub agent: Vec<PlanStep>,
    /// Reduce steps.
    pub reduce: Vec<PlanStep>,
    /// `merge:` steps, after reduce (asked first unless `-y`).
    pub merge: Vec<PlanStep>,
    /// The merge's time limit (the whole phase).
    pub merge_timeout: Option<Duration>,
    /// `map.input`, when it is a file: the path with `${VAR}` of the environment in it.
    pub filter: Option<ItemFilter>,
    /// `map.sort_by`.
    pub sort_by: Vec<SortKey>,
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
    /// Stop once more than this share of the items failed.
    pub failure_threshold: Option<f64>,
    /// How failures are told.
    pub error_collection: Collection,
    /// Retries.
    pub retry: Retry,
    /// `map.merge: squash`: one commit per agent on the job's branch.
    pub squash: bool,
    /// What the author should know: keys this runner reads but does nothing with, as the
    /// original did; each `file:line: text`.
    pub warnings: Vec<String>,
    /// `${env.X}` whose X is set nowhere now, with their lines: `run` refuses them.
    pub unset_env: Vec<(u64, String)>,
}

impl Plan {
    /// Reads and checks a workflow file.
    pub fn load(path: &Path) -> Result<Plan, WorkflowError> {
        Plan::load_with(path, &Inputs::default())
    }

    /// Reads and checks a workflow file, with what the run adds.
    pub fn load_with(path: &Path, inputs: &Inputs) -> Result<Plan, WorkflowError> {
        let source = crate::fsutil::read_text(path).map_err(|source| WorkflowError::Read {
            path: path.to_owned(),
            source,
        })?;
        Plan::parse_with(path, &source, inputs)
    }

    /// Checks a workflow's text (`path` names it in messages).
    pub fn parse(path: &Path, source: &str) -> Result<Plan, WorkflowError> {
        Plan::parse_with(path, source, &Inputs::default())
    }

    /// Checks a workflow's text with what the run adds: the YAML read into the file's
    /// shape, then each section checked by its own reader ([`read`]).
    pub fn parse_with(path: &Path, source: &str, inputs: &Inputs) -> Result<Plan, WorkflowError> {
        read::plan(path, source, inputs)
    }

    /// Refuses a plan that reads `${env.X}` with X set nowhere (what `run` checks; a dry
    /// run only warns).
    pub fn check_env(&self) -> Result<(), WorkflowError> {
        match self.unset_env.first() {
            None => Ok(()),
            Some((line, name)) => Err(WorkflowError::At {
                path: self.path.clone(),
                line: *line,
                message: format!(
                    "${{env.{name}}}: {name} is set neither in the workflow's env nor in the \
                     environment"
                ),
                hint: Some("set it, or give a default: ${env.NAME|default:VALUE}"),
            }),
        }
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
        fn step(out: &mut Vec<String>, phase: &str, s: &PlanStep, depth: usize) {
            let pad = "  ".repeat(depth + 1);
            let text = match s.kind {
                StepKind::Shell | StepKind::Claude => {
                    let t = s.command.source();
                    t.split_whitespace().collect::<Vec<_>>().join(" ")
                }
                StepKind::WriteFile => s
                    .write
                    .as_ref()
                    .map(|w| w.path.source().to_owned())
                    .unwrap_or_default(),
                StepKind::Analyze => "(cannot run here: see the warning)".to_owned(),
            };
            let mut flags = Vec::new();
            if s.when.is_some() {
                flags.push("when");
            }
            if s.commit_required {
                flags.push("commit_required");
            }
            if s.allow_failure {
                flags.push("allow_failure");
            }
            if s.capture.is_some() {
                flags.push("capture");
            }
            let flags = match flags.is_empty() {
                true => String::new(),
                false => format!("   [{}]", flags.join(", ")),
            };
            out.push(format!(
                "{pad}{phase}/{}  {}: {text}{flags}",
                s.number,
                s.kind.key()
            ));
            if let Some(v) = &s.validate {
                out.push(format!(
                    "{pad}  validate: {} step(s), threshold {}{}",
                    v.steps.len(),
                    v.threshold,
                    if v.on_incomplete.is_some() {
                        ", on_incomplete"
                    } else {
                        ""
                    }
                ));
            }
            if let Some(h) = &s.on_failure {
                for hs in &h.steps {
                    step(out, "on_failure", hs, depth + 1);
                }
            }
            if let Some(next) = &s.on_success {
                step(out, "on_success", next, depth + 1);
            }
            for (code, hs) in &s.on_exit_code {
                step(out, &format!("on_exit_code {code}"), hs, depth + 1);
            }
        }
        let mut out = Vec::new();
        match &self.shape {
            Shape::Sequential(file) => {
                out.push(format!(
                    "sequential workflow {}: {} steps, run in one session worktree",
                    self.name,
                    self.setup.len()
                ));
                if let Some(d) = &file.description {
                    out.push(format!("  {}", d.trim()));
                }
                for s in &self.setup {
                    step(&mut out, "session", s, 0);
                }
            }
            Shape::MapReduce(w) => {
                out.push(format!("MapReduce workflow {}", self.name));
                for s in &self.setup {
                    step(&mut out, "setup", s, 0);
                }
                out.push(format!(
                    "  map: items from {:?}, {} at once",
                    w.map.input.value, self.max_parallel
                ));
                for s in &self.agent {
                    step(&mut out, "map", s, 0);
                }
                for s in &self.reduce {
                    step(&mut out, "reduce", s, 0);
                }
            }
        }
        for s in &self.merge {
            step(&mut out, "merge", s, 0);
        }
        out
    }

    /// True for a sequential workflow (a session).
    pub fn is_sequential(&self) -> bool {
        matches!(self.shape, Shape::Sequential(_))
    }

    /// Every step of every phase, handlers and nested steps included.
    pub fn all_steps(&self) -> Vec<&PlanStep> {
        fn walk<'s>(s: &'s PlanStep, out: &mut Vec<&'s PlanStep>) {
            out.push(s);
            if let Some(h) = &s.on_failure {
                h.steps.iter().for_each(|x| walk(x, out));
            }
            if let Some(n) = &s.on_success {
                walk(n, out);
            }
            s.on_exit_code.iter().for_each(|(_, x)| walk(x, out));
            if let Some(v) = &s.validate {
                v.steps.iter().for_each(|x| walk(x, out));
                if let Some(i) = &v.on_incomplete {
                    i.steps.iter().for_each(|x| walk(x, out));
                }
            }
        }
        let mut out = Vec::new();
        for s in self
            .setup
            .iter()
            .chain(&self.agent)
            .chain(&self.reduce)
            .chain(&self.merge)
        {
            walk(s, &mut out);
        }
        out
    }

    /// True when a step of any phase (a handler or nested step too) is a `claude:` one.
    pub fn has_claude(&self) -> bool {
        self.all_steps().iter().any(|s| s.kind == StepKind::Claude)
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
        fn walk(s: &PlanStep, out: &mut Vec<(Vec<String>, u64)>) {
            let templates = std::iter::once(&s.command)
                .chain(s.write.iter().flat_map(|w| [&w.path, &w.content]))
                .chain(s.env.iter().map(|(_, t)| t))
                .chain(&s.working_dir);
            for t in templates {
                for p in t.item_paths() {
                    out.push((p, s.line));
                }
            }
            if let Some(h) = &s.on_failure {
                h.steps.iter().for_each(|x| walk(x, out));
            }
            if let Some(n) = &s.on_success {
                walk(n, out);
            }
            s.on_exit_code.iter().for_each(|(_, x)| walk(x, out));
            if let Some(v) = &s.validate {
                v.steps.iter().for_each(|x| walk(x, out));
                if let Some(i) = &v.on_incomplete {
                    i.steps.iter().for_each(|x| walk(x, out));
                }
            }
        }
        let mut out = Vec::new();
        for step in &self.agent {
            walk(step, &mut out);
        }
        out
    }
}
