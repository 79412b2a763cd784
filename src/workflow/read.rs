//! Reading a workflow file into a [`Plan`]: the shape first (a list, or a mapping with
//! `commands:`, is sequential; `map:` is MapReduce), then one function per section — the
//! environment, the items, the agents, the error policy, each phase's steps and each
//! step — each naming the file and line of what it refuses.
//!
//! What the original accepts and does nothing with (an `analysis:` block, a step's
//! `output:`), this reader accepts too and says so: each is a warning in
//! [`Plan::warnings`] naming its line, shown by `run`. Nothing is skipped in silence.

use std::cell::RefCell;

use super::file::{
    self, Capture, EnvValue, Environment, ErrorPolicy, ListOr, OnFailure, OnIncomplete, Seconds,
    Validate,
};
use super::*;

/// Reads and checks a workflow's text into a plan.
pub(super) fn plan(path: &Path, source: &str, inputs: &Inputs) -> Result<Plan, WorkflowError> {
    let r = Reader {
        path,
        warnings: RefCell::new(Vec::new()),
        notes: RefCell::default(),
        unset_env: RefCell::default(),
        sequential: std::cell::Cell::new(false),
    };
    let yaml_error = |e: serde_saphyr::Error| {
        let line = e.location().map_or(0, |l| l.line());
        let (message, hint) = yaml_message(&e);
        r.hinted(line, message, hint)
    };
    // The shape first: a list is a sequential workflow, and so is a mapping with
    // `commands:` (or `steps:`) and no `map:`.
    // YAML that does not read is that error, whatever the shape would have been.
    let probe: Option<Probe> = Some(serde_saphyr::from_str(source).map_err(yaml_error)?);
    let sequential = match &probe {
        Some(Probe::List) => true,
        Some(Probe::Map(keys)) if !keys.iter().any(|k| k == "map") => {
            let has = |k: &str| keys.iter().any(|key| key == k);
            if has("commands") || has("steps") {
                true
            } else if has("mode") || has("setup") {
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
        r.sequential.set(true);
        let file: SessionFile = match probe {
            Some(Probe::List) => SessionFile {
                name: None,
                mode: None,
                description: None,
                env: BTreeMap::new(),
                secrets: BTreeMap::new(),
                env_files: Vec::new(),
                profiles: BTreeMap::new(),
                commands: serde_saphyr::from_str(source).map_err(yaml_error)?,
                merge: None,
            },
            _ => serde_saphyr::from_str(source).map_err(yaml_error)?,
        };
        return r.session(path, source, file, inputs);
    }
    let workflow: Workflow = serde_saphyr::from_str(source).map_err(yaml_error)?;
    r.mapreduce(path, source, workflow, inputs)
}

/// A workflow's shape, read without its values: a list, or a mapping's top-level keys.
enum Probe {
    List,
    Map(Vec<String>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Probe, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Probe;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a workflow")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Probe, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Probe::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Probe, A::Error> {
                let mut keys = Vec::new();
                while let Some(Key(k)) = map.next_key::<Key>()? {
                    keys.extend(k);
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(Probe::Map(keys))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Probe, E> {
                Ok(Probe::Other)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Probe, E> {
                Ok(Probe::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping's key: its text when it is a string.
struct Key(Option<String>);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(Some(v.to_owned())))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Key, E> {
                Ok(Key(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Key, E> {
                Ok(Key(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a workflow's sections, naming the file in every error.
struct Reader<'p> {
    path: &'p Path,
    /// Warnings, each `file:line: text`.
    warnings: RefCell<Vec<String>>,
    /// What compiling templates found, taken with the line of their step ([`Self::adopt`]).
    notes: RefCell<template::Notes>,
    /// `${env.X}` set nowhere now, with their lines.
    unset_env: RefCell<Vec<(u64, String)>>,
    /// A sequential workflow is being read: its `on_failure` follows the original's
    /// sessions ([`PlanHandler::runs`]).
    sequential: std::cell::Cell<bool>,
}

/// The work-item list's settings, checked.
struct Items {
    json_path: Option<serde_json_path::JsonPath>,
    filter: Option<ItemFilter>,
    sort_by: Vec<SortKey>,
}

/// The environment, as the loader needs it: the values recorded with a job, what is
/// resolved when it starts, and every name a step may read as `${env.X}` or `$X`.
struct Env {
    values: BTreeMap<String, String>,
    plan: env::EnvPlan,
    names: BTreeMap<String, String>,
}

/// What a nested list of steps may read beyond its phase's names.
#[derive(Clone, Copy, Default)]
struct Nest<'a> {
    /// Names it may read (`shell.stderr` in a handler).
    extra: &'a [&'a str],
    /// Prefixes whose every field it may read (`validation`).
    open: &'a [&'a str],
}

/// What a failure handler reads of the failure.
const HANDLER_NAMES: [&str; 5] = [
    "shell.output",
    "shell.stderr",
    "shell.stdout",
    "shell.exit_code",
    "shell.attempt",
];

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

    /// Takes what compiling found into the plan's warnings and unset names, at `line`.
    fn adopt(&self, line: u64) {
        let notes = std::mem::take(&mut *self.notes.borrow_mut());
        for w in notes.warnings {
            self.warn(line, w);
        }
        for name in notes.unset_env {
            self.warn(
                line,
                format!(
                    "${{env.{name}}}: {name} is set neither in the workflow's env nor in the \
                     environment now; `run` refuses the workflow until it is"
                ),
            );
            self.unset_env.borrow_mut().push((line, name));
        }
    }

    fn warn(&self, line: u64, message: impl std::fmt::Display) {
        let at = match line {
            0 => String::new(),
            n => format!(":{n}"),
        };
        self.warnings
            .borrow_mut()
            .push(format!("{}{at}: {message}", self.path.display()));
    }

    /// A MapReduce workflow.
    fn mapreduce(
        &self,
        path: &Path,
        source: &str,
        workflow: Workflow,
        inputs: &Inputs,
    ) -> Result<Plan, WorkflowError> {
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
        let env = self.environment(workflow.environment(), inputs)?;
        let items = self.items(&workflow.map)?;
        let (agent_timeout, max_parallel) = self.agents(&workflow.map, &env)?;
        let squash = match workflow.map.merge.as_ref().map(|m| (m.value.as_str(), m)) {
            None | Some(("merge", _)) => false,
            Some(("squash", _)) => true,
            Some((other, m)) => {
                return Err(self.at(
                    m.referenced.line(),
                    format!("map.merge '{other}' is not merge or squash"),
                ));
            }
        };
        let policy = self.error_policy(&workflow.error_policy)?;
        let setup_timeout = self.phase_timeout(&workflow.setup, "setup")?;
        let (setup, from_setup) = self.steps(
            &workflow.setup,
            Scope::Setup,
            &[],
            &env.names,
            Nest::default(),
        )?;
        let (agent, _) = self.steps(
            &self.untimed(&workflow.map.agent_template, "map.agent_template")?,
            Scope::Agent,
            &from_setup,
            &env.names,
            Nest::default(),
        )?;
        let (reduce, mut after) = self.steps(
            &self.untimed(&workflow.reduce, "reduce")?,
            Scope::Reduce,
            &from_setup,
            &env.names,
            Nest::default(),
        )?;
        let (merge, merge_timeout) =
            self.merge(workflow.merge.as_ref(), Scope::Reduce, &mut after, &env)?;
        // `map.input` is checked like a setup step's command that runs after setup.
        let mut plan = Plan {
            path: path.to_owned(),
            source: source.to_owned(),
            max_parallel,
            agent_timeout,
            max_failures: policy.max_failures,
            failure_threshold: policy.failure_threshold,
            error_collection: policy.collection,
            on_item_failure: policy.on_item_failure,
            retry: policy.retry,
            squash,
            env: env.values,
            environment: env.plan,
            setup,
            setup_timeout,
            agent,
            reduce,
            merge,
            merge_timeout,
            filter: items.filter,
            sort_by: items.sort_by,
            json_path: items.json_path,
            name: workflow.name.value.clone(),
            shape: Shape::MapReduce(Box::new(workflow)),
            warnings: Vec::new(),
            unset_env: Vec::new(),
        };
        record_env(&mut plan);
        plan.warnings = self.warnings.take();
        plan.unset_env = self.unset_env.take();
        Ok(plan)
    }

    /// A sequential workflow: its steps run as setup steps do, one after another in the
    /// session's worktree, each checkpointed.
    fn session(
        &self,
        path: &Path,
        source: &str,
        mut file: SessionFile,
        inputs: &Inputs,
    ) -> Result<Plan, WorkflowError> {
        // The original's bare string step: a Claude command, its `/` optional, that must
        // commit (its default for every command but `prodigy-lint`).
        for step in &mut file.commands.steps {
            if let Some(text) = step.bare.take() {
                let name = text.value.trim_start_matches('/');
                let lint = name.split_whitespace().next() == Some("prodigy-lint");
                let command = format!("/{name}");
                let text = Spanned::new(command, text.referenced, text.defined);
                *step = Step {
                    commit_required: !lint,
                    ..Step::command(None, Some(text))
                };
            }
        }
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
            // As the original: an empty workflow loads (a template to fill in) and has
            // nothing to run.
            self.warn(0, "the workflow has no steps: it runs nothing");
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
        let env = self.environment(file.environment(), inputs)?;
        let setup_timeout = self.phase_timeout(&file.commands, "commands")?;
        let (setup, mut named) = self.steps(
            &file.commands,
            Scope::Setup,
            &[],
            &env.names,
            Nest::default(),
        )?;
        let (merge, merge_timeout) =
            self.merge(file.merge.as_ref(), Scope::Setup, &mut named, &env)?;
        let mut plan = Plan {
            path: path.to_owned(),
            source: source.to_owned(),
            max_parallel: 1,
            agent_timeout: None,
            max_failures: None,
            failure_threshold: None,
            error_collection: Collection::Aggregate,
            on_item_failure: OnItemFailure::Stop,
            retry: Retry {
                max_attempts: 1,
                exponential: false,
                initial: Duration::ZERO,
                max: Duration::ZERO,
            },
            squash: false,
            env: env.values,
            environment: env.plan,
            setup,
            setup_timeout,
            agent: Vec::new(),
            reduce: Vec::new(),
            merge,
            merge_timeout,
            filter: None,
            sort_by: Vec::new(),
            json_path: None,
            name,
            shape: Shape::Sequential(Box::new(file)),
            warnings: Vec::new(),
            unset_env: Vec::new(),
        };
        record_env(&mut plan);
        plan.warnings = self.warnings.take();
        plan.unset_env = self.unset_env.take();
        Ok(plan)
    }

    /// `merge:` steps, which read `${merge.*}` and what the phases before captured.
    fn merge(
        &self,
        steps: Option<&Steps>,
        scope: Scope,
        named: &mut Captures,
        env: &Env,
    ) -> Result<(Vec<PlanStep>, Option<Duration>), WorkflowError> {
        let Some(steps) = steps else {
            return Ok((Vec::new(), None));
        };
        if steps.is_empty() {
            return Err(self.at(0, "merge: has no steps".into()));
        }
        named.extend(MERGE_VARS.map(|v| (v.to_owned(), false)));
        let timeout = self.phase_timeout(steps, "merge")?;
        Ok((
            self.steps(steps, scope, named, &env.names, Nest::default())?
                .0,
            timeout,
        ))
    }

    /// `timeout:` beside a phase's `commands:`: the whole phase's limit.
    fn phase_timeout(&self, steps: &Steps, what: &str) -> Result<Option<Duration>, WorkflowError> {
        steps
            .timeout
            .as_ref()
            .map(|t| self.seconds(t, &format!("{what}.timeout")))
            .transpose()
    }

    /// A phase whose `commands:` form takes no `timeout:`.
    fn untimed(&self, steps: &Steps, what: &str) -> Result<Steps, WorkflowError> {
        match &steps.timeout {
            Some(t) => Err(self.hinted(
                t.referenced.line(),
                format!(
                    "{what}: a timeout beside commands: limits setup or merge as a whole; \
                     here give each step its timeout:"
                ),
                Some(crate::hint::WORKFLOW_FORMAT),
            )),
            None => Ok(steps.clone()),
        }
    }

    fn seconds(&self, s: &Spanned<Seconds>, what: &str) -> Result<Duration, WorkflowError> {
        match &s.value {
            Seconds::Secs(n) => Ok(Duration::from_secs(*n)),
            Seconds::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                self.at(
                    s.referenced.line(),
                    format!("{what} {t:?} is not a duration: {e}"),
                )
            }),
        }
    }

    /// `env`, `secrets`, `env_files` and `profiles`, with what the run adds.
    fn environment(&self, e: Environment<'_>, inputs: &Inputs) -> Result<Env, WorkflowError> {
        let check = |k: &str, line: u64| {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(self.at(line, format!("bad environment variable {k:?}")));
            }
            Ok(())
        };
        let mut values = BTreeMap::new();
        let mut plan = env::EnvPlan::default();
        let mut names = BTreeMap::new();
        for (k, v) in e.env {
            let line = v.referenced.line();
            check(k, line)?;
            match &v.value {
                EnvValue::Text(t) => {
                    if t.contains('\0') {
                        return Err(self.at(line, format!("bad environment variable {k:?}")));
                    }
                    values.insert(k.clone(), t.clone());
                }
                EnvValue::Command { command } => {
                    plan.computed
                        .push((k.clone(), env::Computed::Command(command.clone()), line));
                }
                EnvValue::Condition {
                    condition,
                    when_true,
                    when_false,
                } => {
                    let mut vars: Vec<String> = Vec::new();
                    let parsed = ItemFilter::parse_condition(condition, &mut |whole| {
                        let name = whole.strip_prefix("env.").unwrap_or(whole);
                        if !template::is_plain_name(name) || name.contains('.') {
                            return Err(format!(
                                "${{{whole}}}: an env condition reads variables by name \
                                 (${{NAME}})"
                            ));
                        }
                        vars.push(name.to_owned());
                        Ok(vars.len() - 1)
                    })
                    .map_err(|e| {
                        self.hinted(
                            line,
                            format!("env {k}: condition {e}"),
                            Some(crate::hint::FILTER),
                        )
                    })?;
                    plan.computed.push((
                        k.clone(),
                        env::Computed::Condition {
                            condition: parsed,
                            names: vars,
                            text: condition.clone(),
                            when_true: when_true.clone(),
                            when_false: when_false.clone(),
                        },
                        line,
                    ));
                }
                EnvValue::Secret(source) => {
                    plan.secrets.insert(k.clone(), source.clone());
                }
            }
            names.insert(k.clone(), String::new());
        }
        for (k, v) in e.secrets {
            check(k, v.referenced.line())?;
            if plan.secrets.insert(k.clone(), v.value.clone()).is_some() {
                return Err(self.at(
                    v.referenced.line(),
                    format!("secret {k} is given twice (in env: and secrets:); keep one"),
                ));
            }
            values.remove(k);
            names.insert(k.clone(), String::new());
        }
        for f in e.env_files {
            if f.value.trim().is_empty() {
                return Err(self.at(f.referenced.line(), "env_files: an empty path".into()));
            }
            plan.files.push((f.value.clone(), f.referenced.line()));
        }
        for (name, p) in e.profiles {
            let mut profile = BTreeMap::new();
            for (k, v) in &p.value {
                // The original's profiles describe themselves.
                if k == "description" {
                    continue;
                }
                check(k, p.referenced.line())?;
                profile.insert(k.clone(), v.0.clone());
                names.insert(k.clone(), String::new());
            }
            plan.profiles.insert(name.clone(), profile);
        }
        // `${env.NAME}` and `${NAME}` (another plain value) in a plain value, as the
        // original reads them: replaced as the workflow is read, from the environment
        // prodigy runs in (the job records the result; `resume` reads it from there).
        // What the run adds (`--param`, `ARG`) is data and never read this way.
        let mut expanded = Vec::new();
        for (k, v) in e.env {
            let EnvValue::Text(t) = &v.value else {
                continue;
            };
            if !t.contains("${") {
                continue;
            }
            let value = env::expand_value(t, |inner| {
                let plain = values.get(inner).filter(|v: &&String| !v.contains("${"));
                match (inner.strip_prefix("env."), plain) {
                    (Some(name), _) if template::is_plain_name(name) && !name.contains('.') => {
                        std::env::var(name).map_err(|_| {
                            format!("${{env.{name}}}: {name} is not set in the environment")
                        })
                    }
                    (None, Some(plain)) => Ok(plain.clone()),
                    _ => Err(format!(
                        "${{{inner}}}: an env value reads ${{env.NAME}} (the environment \
                         prodigy runs in) or ${{NAME}} of another plain env value (itself \
                         without ${{…}}); a secret is never copied"
                    )),
                }
            })
            .map_err(|e| self.at(v.referenced.line(), format!("env {k}: {e}")))?;
            expanded.push((k.clone(), value));
        }
        values.extend(expanded);
        for (k, v) in &inputs.env {
            values.insert(k.clone(), v.clone());
        }
        for (k, v) in &values {
            names.insert(k.clone(), v.clone());
        }
        Ok(Env {
            values,
            plan,
            names,
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
        if let Some(d) = &m.distinct
            && super::input::distinct_path(&d.value).any(str::is_empty)
        {
            return Err(self.at(
                d.referenced.line(),
                format!(
                    "map.distinct {:?} is not a field path (id, meta.key)",
                    d.value
                ),
            ));
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
            Some(s) => parse_sort(&s.value).map_err(|e| self.at(s.referenced.line(), e))?,
            None => Vec::new(),
        };
        Ok(Items {
            json_path,
            filter,
            sort_by,
        })
    }

    /// The agent time limit (under any of its three spellings, given once) and
    /// `max_parallel` (a number, or `${VAR}` of the environment).
    fn agents(&self, m: &MapSpec, env: &Env) -> Result<(Option<Duration>, usize), WorkflowError> {
        let mut limits: Vec<(u64, Duration)> = Vec::new();
        for (s, what) in [
            (m.agent_timeout_secs.as_ref(), "map.agent_timeout_secs"),
            (
                m.timeout_config
                    .as_ref()
                    .and_then(|c| c.agent_timeout_secs.as_ref()),
                "map.timeout_config.agent_timeout_secs",
            ),
        ] {
            if let Some(s) = s {
                let secs = self.whole_number(s, what, env)?;
                limits.push((s.referenced.line(), Duration::from_secs(secs as u64)));
            }
        }
        if let Some(s) = &m.timeout_per_agent {
            limits.push((
                s.referenced.line(),
                self.seconds(s, "map.timeout_per_agent")?,
            ));
        }
        if limits.len() > 1 {
            return Err(self.at(
                limits[1].0,
                "the agent time limit is given twice (agent_timeout_secs, timeout_per_agent, \
                 timeout_config.agent_timeout_secs): keep one"
                    .into(),
            ));
        }
        let agent_timeout = limits.first().map(|l| l.1);
        let max_parallel = match &m.max_parallel {
            None => 4,
            Some(s) => self.whole_number(s, "map.max_parallel", env)?,
        };
        if max_parallel == 0 {
            return Err(self.at(0, "map.max_parallel must be at least 1".into()));
        }
        Ok((agent_timeout, max_parallel))
    }

    /// A whole number given as such or as `${VAR}` of the workflow's env (else the
    /// environment), as the original reads `max_parallel` and `agent_timeout_secs`.
    fn whole_number(
        &self,
        s: &Spanned<super::file::Scalar>,
        what: &str,
        env: &Env,
    ) -> Result<usize, WorkflowError> {
        let line = s.referenced.line();
        let text = s.value.0.trim();
        let value = match env_reference(text) {
            Some(var) => env
                .values
                .get(var)
                .cloned()
                .or_else(|| std::env::var(var).ok())
                .ok_or_else(|| {
                    self.at(
                        line,
                        format!(
                            "{what} {text}: {var} is set neither in the workflow's env nor in \
                             the environment"
                        ),
                    )
                })?,
            None => text.to_owned(),
        };
        value
            .trim()
            .parse::<usize>()
            .map_err(|_| self.at(line, format!("{what} {value:?} is not a whole number")))
    }

    /// `error_policy`: what a failed item does, when the job stops, and retries.
    fn error_policy(&self, p: &ErrorPolicy) -> Result<Policy, WorkflowError> {
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
        // `continue_on_failure: false`: the first failure stops the job.
        let max_failures = match p.continue_on_failure {
            Some(false) => Some(0),
            _ => p.max_failures,
        };
        let failure_threshold = match &p.failure_threshold {
            Some(t) if !(0.0..=1.0).contains(&t.value) => {
                return Err(self.at(
                    t.referenced.line(),
                    format!(
                        "failure_threshold {} is not a share between 0 and 1",
                        t.value
                    ),
                ));
            }
            t => t.as_ref().map(|t| t.value),
        };
        let collection = match &p.error_collection {
            None => Collection::Aggregate,
            Some(c) => match c.value.trim() {
                "aggregate" => Collection::Aggregate,
                "immediate" => Collection::Immediate,
                other => match other
                    .strip_prefix("batched:")
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .filter(|n| *n > 0)
                {
                    Some(n) => Collection::Batched(n),
                    None => {
                        return Err(self.at(
                            c.referenced.line(),
                            format!(
                                "error_collection {other:?} is not aggregate, immediate or \
                                 batched:N"
                            ),
                        ));
                    }
                },
            },
        };
        Ok(Policy {
            on_item_failure,
            retry,
            max_failures,
            failure_threshold,
            collection,
        })
    }

    /// A list of steps, compiled for `scope`; captures (name → whether it holds JSON)
    /// made by earlier phases (`seen`) are seen by these too. Returns them with the
    /// captures after them.
    fn steps(
        &self,
        steps: &[Step],
        scope: Scope,
        seen: &[(String, bool)],
        env: &BTreeMap<String, String>,
        nest: Nest<'_>,
    ) -> Result<(Vec<PlanStep>, Captures), WorkflowError> {
        let mut named: Captures = seen.to_vec();
        let mut out = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            out.push(self.step(step, i, scope, &mut named, env, nest)?);
        }
        // A step whose next step reads `${last.output}` or `${shell.output}` keeps its
        // output (an `on_failure` handler's `${shell.output}` is its own step's).
        for i in 1..out.len() {
            let next = &out[i];
            let reads = ["last.output", "shell.output"].iter().any(|v| {
                next.command.reads_captured(v)
                    || next.when.as_ref().is_some_and(|w| w.reads_captured(v))
            });
            let handler = next.on_failure.as_ref().is_some_and(|h| {
                h.steps
                    .iter()
                    .any(|s| s.command.reads_captured("last.output"))
            });
            out[i - 1].keep_output |= reads || handler;
        }
        Ok((out, named))
    }

    /// What a step runs: exactly one of `shell:`, `claude:`, `write_file:` and `analyze:`,
    /// with the line it is on.
    fn action(&self, step: &Step, i: usize) -> Result<(StepKind, u64), WorkflowError> {
        let mut found: Vec<(StepKind, u64)> = Vec::new();
        if let Some(s) = &step.shell {
            found.push((StepKind::Shell, s.referenced.line()));
        }
        if let Some(s) = &step.claude {
            found.push((StepKind::Claude, s.referenced.line()));
        }
        if let Some(s) = &step.write_file {
            found.push((StepKind::WriteFile, s.referenced.line()));
        }
        if let Some(s) = &step.analyze {
            found.push((StepKind::Analyze, s.referenced.line()));
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(self.at(
                0,
                format!(
                    "step {} has neither shell: nor claude: (nor write_file:)",
                    i + 1
                ),
            )),
            [(a, _), (b, line), ..] => Err(self.at(
                *line,
                format!(
                    "step {} has both {}: and {}: keep one",
                    i + 1,
                    a.key(),
                    b.key()
                ),
            )),
        }
    }

    /// One step, the `i`th of its list; a capture it makes joins `named`.
    fn step(
        &self,
        step: &Step,
        i: usize,
        scope: Scope,
        named: &mut Captures,
        env: &BTreeMap<String, String>,
        nest: Nest<'_>,
    ) -> Result<PlanStep, WorkflowError> {
        if let Some(text) = &step.bare {
            return Err(self.at(
                text.referenced.line(),
                format!(
                    "step {} is the string {:?}: here a step is a mapping (`shell: …` or \
                     `claude: /…`); a string is a step only in a sequential workflow's \
                     commands (a Claude command) and in a list of on_failure commands",
                    i + 1,
                    text.value
                ),
            ));
        }
        let (kind, line) = self.action(step, i)?;
        // What a step can read: the names captured so far, those its nesting adds and,
        // from the second step on, the step before's `${last.output}`,
        // `${last.exit_code}` and (as in the original) `${shell.output}`.
        let mut captured: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
        captured.extend(nest.extra.iter().map(|s| (*s).to_owned()));
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
            open: nest.open,
            notes: &self.notes,
        };
        let text_at = |s: &Spanned<String>, compile_as: StepKind| {
            compile(compile_as, &s.value, &ctx).map_err(|e| self.at(s.referenced.line(), e))
        };
        let (command, write) = match kind {
            StepKind::Shell => (text_at(step.shell.as_ref().expect("shell"), kind)?, None),
            StepKind::Claude => (text_at(step.claude.as_ref().expect("claude"), kind)?, None),
            StepKind::WriteFile => {
                let w = step.write_file.as_ref().expect("write_file");
                (Template::default(), Some(self.write_file(w, &ctx)?))
            }
            StepKind::Analyze => {
                self.warn(line, ANALYZE_REMOVED);
                (Template::default(), None)
            }
        };
        let when = match &step.when {
            Some(w) => Some(
                template::Condition::compile(&w.value, &ctx)
                    .map_err(|e| self.hinted(w.referenced.line(), e, Some(crate::hint::FILTER)))?,
            ),
            None => None,
        };
        let step_env = self.step_env(step, &ctx)?;
        let working_dir = match &step.working_dir {
            Some(d) => Some(
                Template::compile_text(&d.value, &ctx)
                    .map_err(|e| self.at(d.referenced.line(), format!("working_dir: {e}")))?,
            ),
            None => None,
        };
        if let Some(t) = &step.temporary
            && !t.value
        {
            return Err(self.at(
                t.referenced.line(),
                "temporary: false is not supported: a step's env: always ends with the step \
                 (write the values into the workflow's env: to keep them)"
                    .into(),
            ));
        }
        self.legacy_keys(step);
        let (capture, capture_format, streams) = self.capture(step, line)?;
        // The failure handlers see the failure: `${shell.*}`, and the step's own capture
        // name holds what the failed command printed (the original's
        // `on_failure: {claude: "/fix '${clippy_warnings}'"}`).
        let own: Vec<String> = capture
            .iter()
            .filter(|c| !["shell.output", "claude.output"].contains(&c.as_str()))
            .cloned()
            .collect();
        let before: Captures = named
            .iter()
            .cloned()
            .chain(own.iter().map(|c| (c.clone(), false)))
            .collect();
        let on_failure = match &step.on_failure {
            Some(h) => Some(self.on_failure(h, kind, scope, &before, env, nest)?),
            None => None,
        };
        let mut on_exit_code = Vec::new();
        for (code, s) in &step.on_exit_code {
            let mut names = before.clone();
            let extra: Vec<&str> = nest.extra.iter().copied().chain(HANDLER_NAMES).collect();
            let compiled = self.step(
                s,
                0,
                scope,
                &mut names,
                env,
                Nest {
                    extra: &extra,
                    open: nest.open,
                },
            )?;
            on_exit_code.push((*code, compiled));
        }
        if let Some(c) = capture
            .as_ref()
            .filter(|c| !["shell.output", "claude.output"].contains(&c.as_str()))
        {
            named.retain(|(n, _)| n != c);
            named.push((c.clone(), capture_format == CaptureFormat::Json));
            for (on, field) in [
                (streams.stderr && streams.stdout, "stderr"),
                (streams.exit_code, "exit_code"),
                (streams.success, "success"),
                (streams.duration, "duration"),
            ] {
                if on {
                    named.push((format!("{c}.{field}"), false));
                }
            }
        }
        // A claude: step's result is `${claude.output}` for the steps after it.
        if kind == StepKind::Claude && !named.iter().any(|(n, _)| n == "claude.output") {
            named.push(("claude.output".into(), false));
        }
        let outputs = self.outputs(step, named)?;
        // Validation and `on_success` run after the step: they see what it captured.
        let validate = match &step.validate {
            Some(v) => Some(Box::new(self.validate(v, scope, named, env, nest)?)),
            None => None,
        };
        let on_success = match &step.on_success {
            Some(s) => {
                // Compiled as a second step (it reads `${last.output}` of this one).
                let mut names = named.clone();
                let mut next = self.step(s, 1, scope, &mut names, env, nest)?;
                next.number = 1;
                Some(Box::new(next))
            }
            None => None,
        };
        self.adopt(line);
        // `on_success` reads this step's output as the step before's.
        let keep_output = on_success.as_ref().is_some_and(|n| {
            ["last.output", "shell.output"]
                .iter()
                .any(|v| n.command.reads_captured(v))
        });
        let allow_failure = step.allow_failure
            || step.fail_workflow == Some(false)
            || step
                .metadata
                .as_ref()
                .is_some_and(|m| m.value.continue_on_error == Some(true));
        Ok(PlanStep {
            kind,
            command,
            write,
            number: i + 1,
            timeout: step.timeout.map(Duration::from_secs),
            capture,
            capture_format,
            streams,
            on_failure,
            on_success,
            on_exit_code,
            line,
            name: step.name.clone().or_else(|| step.description.clone()),
            commit_required: step.commit_required,
            when,
            keep_output,
            allow_failure,
            env: step_env,
            working_dir,
            clear_env: step.clear_env,
            validate,
            outputs,
        })
    }

    /// Keys the original reads and does nothing with: each a warning.
    fn legacy_keys(&self, step: &Step) {
        if let Some(a) = &step.analysis {
            self.warn(
                a.referenced.line(),
                "analysis: is ignored: it configured the original's project analysis, which \
                 it no longer has (nor has this runner)",
            );
        }
        if let Some(o) = &step.output {
            self.warn(
                o.referenced.line(),
                format!(
                    "output: {:?} is ignored, as the original ignores it: the step writes the \
                     file itself",
                    o.value
                ),
            );
        }
        for (key, v) in [("options", &step.options), ("args", &step.args)] {
            if let Some(v) = v {
                self.warn(
                    v.referenced.line(),
                    format!(
                        "{key}: is ignored, as the original ignores it on a step with a \
                         command: the command's text is what runs"
                    ),
                );
            }
        }
    }

    /// A step's own `env:`.
    fn step_env(
        &self,
        step: &Step,
        ctx: &template::Context<'_>,
    ) -> Result<Vec<(String, Template)>, WorkflowError> {
        let mut out = Vec::new();
        for (k, v) in &step.env {
            let line = v.referenced.line();
            if k.is_empty() || k.contains(['=', '\0']) || v.value.0.contains('\0') {
                return Err(self.at(line, format!("bad environment variable {k:?}")));
            }
            let t = Template::compile_text(&v.value.0, ctx)
                .map_err(|e| self.at(line, format!("env {k}: {e}")))?;
            out.push((k.clone(), t));
        }
        Ok(out)
    }

    /// `write_file:`.
    fn write_file(
        &self,
        w: &Spanned<file::WriteFile>,
        ctx: &template::Context<'_>,
    ) -> Result<WriteSpec, WorkflowError> {
        let line = w.referenced.line();
        let at = |e: String| self.at(line, format!("write_file: {e}"));
        let format = match w.value.format.as_deref().map(str::trim) {
            None | Some("text") => WriteFormat::Text,
            Some("json") => WriteFormat::Json,
            Some("yaml") => WriteFormat::Yaml,
            Some(other) => {
                return Err(at(format!(
                    "format {other:?} is not one of text, json, yaml"
                )));
            }
        };
        let mode = match &w.value.mode {
            None => None,
            Some(m) => Some(
                u32::from_str_radix(m.0.trim(), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| at(format!("mode {:?} is not an octal mode like 0644", m.0)))?,
            ),
        };
        if w.value.path.trim().is_empty() {
            return Err(at("path is empty".into()));
        }
        Ok(WriteSpec {
            path: Template::compile_text(&w.value.path, ctx)
                .map_err(|e| at(format!("path: {e}")))?,
            content: Template::compile_text(&w.value.content, ctx)
                .map_err(|e| at(format!("content: {e}")))?,
            format,
            mode,
            create_dirs: w.value.create_dirs,
        })
    }

    /// `capture_output`/`capture`, `capture_format` and `capture_streams`.
    fn capture(
        &self,
        step: &Step,
        line: u64,
    ) -> Result<(Option<String>, CaptureFormat, Streams), WorkflowError> {
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
        // `NAME.exit_code`, `.success` and `.duration` are there unless turned off, as the
        // original's `CaptureStreams` has them; a JSON capture's own fields come first.
        let meta = capture_format != CaptureFormat::Json;
        let streams = match &step.capture_streams {
            None => Streams {
                exit_code: meta,
                success: meta,
                duration: meta,
                ..Streams::default()
            },
            Some(s) => {
                if capture.is_none() {
                    return Err(self.at(
                        s.referenced.line(),
                        "capture_streams without capture: name the capture".into(),
                    ));
                }
                let c = &s.value;
                let streams = Streams {
                    stdout: c.stdout.unwrap_or(true),
                    stderr: c.stderr,
                    exit_code: c.exit_code.unwrap_or(meta),
                    success: c.success.unwrap_or(meta),
                    duration: c.duration.unwrap_or(meta),
                };
                if !streams.stdout && !streams.stderr {
                    return Err(self.at(
                        s.referenced.line(),
                        "capture_streams: the capture holds stdout or stderr; keep one on".into(),
                    ));
                }
                streams
            }
        };
        Ok((capture, capture_format, streams))
    }

    /// `id:` with `outputs:`: each output becomes the captured name `ID.NAME`.
    fn outputs(
        &self,
        step: &Step,
        named: &mut Captures,
    ) -> Result<Vec<(String, String)>, WorkflowError> {
        match (&step.id, &step.outputs) {
            (None, None) => Ok(Vec::new()),
            (Some(id), None) => Err(self.at(
                id.referenced.line(),
                format!(
                    "id: {:?} names the step's outputs: add outputs: (NAME: {{file_pattern: \
                     GLOB}})",
                    id.value
                ),
            )),
            (None, Some(o)) => Err(self.at(
                o.referenced.line(),
                "outputs: are read as ${ID.NAME}: give the step an id:".into(),
            )),
            (Some(id), Some(o)) => {
                if !template::is_capture_name(&id.value) {
                    return Err(self.at(
                        id.referenced.line(),
                        format!(
                            "id {:?} must be letters, digits and _ (and not a built-in like \
                             item or map)",
                            id.value
                        ),
                    ));
                }
                let mut out = Vec::new();
                for (name, spec) in &o.value {
                    if !template::is_plain_name(name) || name.contains('.') {
                        return Err(self.at(
                            o.referenced.line(),
                            format!("outputs: {name:?} must be letters, digits and _"),
                        ));
                    }
                    if spec.file_pattern.trim().is_empty() {
                        return Err(self.at(
                            o.referenced.line(),
                            format!("outputs.{name}: file_pattern is empty"),
                        ));
                    }
                    let var = format!("{}.{name}", id.value);
                    named.retain(|(n, _)| *n != var);
                    named.push((var.clone(), false));
                    out.push((var, spec.file_pattern.trim().to_owned()));
                }
                Ok(out)
            }
        }
    }

    /// A handler's steps: `commands:`, or one `shell:`/`claude:` with the handler's
    /// `commit_required` and `timeout`.
    #[allow(clippy::too_many_arguments)]
    fn handler_steps(
        &self,
        what: &str,
        line: u64,
        shell: Option<&Spanned<String>>,
        claude: Option<&Spanned<String>>,
        commands: Option<&Vec<Step>>,
        commit_required: bool,
        timeout: Option<u64>,
    ) -> Result<Vec<Step>, WorkflowError> {
        let single = |shell: Option<Spanned<String>>, claude: Option<Spanned<String>>| Step {
            commit_required,
            timeout,
            ..Step::command(shell, claude)
        };
        match (shell, claude, commands) {
            (Some(s), None, None) => Ok(vec![single(Some(s.clone()), None)]),
            (None, Some(c), None) => Ok(vec![single(None, Some(c.clone()))]),
            (None, None, Some(list)) if !list.is_empty() => Ok(list.clone()),
            (None, None, _) => Err(self.at(
                line,
                format!("{what} has no command: give shell:, claude: or commands:"),
            )),
            _ => Err(self.at(
                line,
                format!("{what} has more than one of shell:, claude: and commands:; keep one"),
            )),
        }
    }

    /// `on_failure:`.
    fn on_failure(
        &self,
        h: &Spanned<ListOr<OnFailure>>,
        kind: StepKind,
        scope: Scope,
        named: &Captures,
        env: &BTreeMap<String, String>,
        nest: Nest<'_>,
    ) -> Result<PlanHandler, WorkflowError> {
        let line = h.referenced.line();
        let mut f = h.value.0.clone();
        // A command written as the value itself has the key's place.
        for command in [&mut f.shell, &mut f.claude].into_iter().flatten() {
            if command.referenced.line() == 0 {
                command.referenced = h.referenced;
                command.defined = h.defined;
            }
        }
        let f = &f;
        let steps = match (&f.shell, &f.claude, &f.commands, f.fail_workflow) {
            // `fail_workflow` alone (the original's `on_failure: true`, or a mapping of
            // it and retries): no handler steps.
            (None, None, None, Some(_)) => Vec::new(),
            _ => self.handler_steps(
                "on_failure",
                line,
                f.shell.as_ref(),
                f.claude.as_ref(),
                f.commands.as_ref(),
                f.commit_required,
                f.timeout,
            )?,
        };
        let extra: Vec<&str> = nest.extra.iter().copied().chain(HANDLER_NAMES).collect();
        let (steps, _) = self.steps(
            &steps,
            scope,
            named,
            env,
            Nest {
                extra: &extra,
                open: nest.open,
            },
        )?;
        // The original's sessions read `on_failure` as a test's debugging (its
        // `TestDebugConfig`): three attempts unless told, and the workflow fails only
        // with `fail_workflow: true`; a shell step runs its handler between attempts, a
        // Claude step once, after its first. Its MapReduce phases: one attempt, and a
        // handler that fails fails the step unless `fail_workflow: false`.
        let sequential = self.sequential.get() && !steps.is_empty();
        Ok(PlanHandler {
            steps,
            max_attempts: f
                .max_attempts
                .unwrap_or(if sequential { 3 } else { 1 })
                .max(1),
            fail_workflow: match sequential {
                true => Some(f.fail_workflow.unwrap_or(false)),
                false => f.fail_workflow,
            },
            runs: match (sequential, kind) {
                (false, _) => HandlerRuns::AfterEach,
                (true, StepKind::Claude) => HandlerRuns::AfterFirst,
                (true, _) => HandlerRuns::BetweenAttempts,
            },
        })
    }

    /// `validate:` and its `on_incomplete:`.
    fn validate(
        &self,
        v: &Spanned<ListOr<Validate>>,
        scope: Scope,
        named: &Captures,
        env: &BTreeMap<String, String>,
        nest: Nest<'_>,
    ) -> Result<PlanValidate, WorkflowError> {
        let line = v.referenced.line();
        let val = &v.value.0;
        let steps = match (&val.shell, &val.claude, &val.commands) {
            (None, None, None) => Vec::new(),
            (s, c, list) => self.handler_steps(
                "validate",
                line,
                s.as_ref(),
                c.as_ref(),
                list.as_ref(),
                false,
                val.timeout,
            )?,
        };
        // Validation commands run with `PRODIGY_VALIDATION=true`; their steps see the
        // step's names.
        let (steps, _) = self.steps(&steps, scope, named, env, nest)?;
        let ctx_names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
        let ctx = template::Context {
            scope,
            captured: &ctx_names,
            json: &[],
            env,
            open: nest.open,
            notes: &self.notes,
        };
        let result_file = match &val.result_file {
            Some(f) => Some(
                Template::compile_text(&f.value, &ctx)
                    .map_err(|e| self.at(f.referenced.line(), format!("result_file: {e}")))?,
            ),
            None => None,
        };
        if steps.is_empty() && result_file.is_none() {
            return Err(self.at(
                line,
                "validate: needs a command (shell:, claude: or commands:) or a result_file the \
                 step itself writes"
                    .into(),
            ));
        }
        let threshold = val.threshold.unwrap_or(100.0);
        if !(0.0..=100.0).contains(&threshold) {
            return Err(self.at(
                line,
                format!("validate: threshold {threshold} is not a percentage (0 to 100)"),
            ));
        }
        if let Some(s) = &val.expected_schema {
            self.warn(
                s.referenced.line(),
                "expected_schema: is not checked (nor was it by the original): the result needs \
                 completion_percentage",
            );
        }
        let on_incomplete = match &val.on_incomplete {
            None => None,
            Some(h) => {
                let hl = h.referenced.line();
                let inc: &OnIncomplete = &h.value.0;
                if let Some(p) = &inc.prompt {
                    self.warn(
                        p.referenced.line(),
                        "prompt: is not asked (the original asked and ignored the answer)",
                    );
                }
                let list = self.handler_steps(
                    "on_incomplete",
                    hl,
                    inc.shell.as_ref(),
                    inc.claude.as_ref(),
                    inc.commands.as_ref(),
                    inc.commit_required,
                    None,
                )?;
                let open: Vec<&str> = nest.open.iter().copied().chain(["validation"]).collect();
                let (steps, _) = self.steps(
                    &list,
                    scope,
                    named,
                    env,
                    Nest {
                        extra: nest.extra,
                        open: &open,
                    },
                )?;
                Some(PlanIncomplete {
                    steps,
                    max_attempts: inc.max_attempts.unwrap_or(2).max(1),
                    fail_workflow: inc.fail_workflow.unwrap_or(true),
                })
            }
        };
        Ok(PlanValidate {
            steps,
            result_file,
            threshold,
            on_incomplete,
            line,
        })
    }
}

/// The error policy, checked.
struct Policy {
    on_item_failure: OnItemFailure,
    retry: Retry,
    max_failures: Option<usize>,
    failure_threshold: Option<f64>,
    collection: Collection,
}

/// `VAR` when `text` is `${VAR}` or `$VAR`.
fn env_reference(text: &str) -> Option<&str> {
    let inner = text
        .strip_prefix("${")
        .and_then(|t| t.strip_suffix('}'))
        .or_else(|| text.strip_prefix('$'))?;
    template::is_plain_name(inner)
        .then_some(inner)
        .filter(|n| !n.contains('.'))
}

/// Compiles a step's command for what runs it: shell text is placed and quoted; a Claude
/// command is one argument, its values pasted as they are.
fn compile(kind: StepKind, text: &str, ctx: &template::Context<'_>) -> Result<Template, String> {
    match kind {
        StepKind::Shell => Template::compile(text, ctx),
        _ => Template::compile_text(text, ctx),
    }
}

/// `${env.X}` not in the workflow's env comes from the process's environment now, and is
/// recorded with the job so that `resume` sees the same value.
fn record_env(plan: &mut Plan) {
    let mut names = Vec::new();
    for step in plan.all_steps() {
        let templates = std::iter::once(&step.command)
            .chain(step.write.iter().flat_map(|w| [&w.path, &w.content]))
            .chain(step.env.iter().map(|(_, t)| t))
            .chain(&step.working_dir);
        for t in templates {
            names.extend(t.env_names());
        }
        if let Some(w) = &step.when {
            names.extend(w.env_names());
        }
    }
    let dynamic = |n: &String| {
        plan.environment.secrets.contains_key(n)
            || plan.environment.computed.iter().any(|(k, _, _)| k == n)
            || plan
                .environment
                .profiles
                .values()
                .any(|p| p.contains_key(n))
    };
    for name in names {
        if !plan.env.contains_key(&name)
            && !dynamic(&name)
            && let Ok(v) = std::env::var(&name)
        {
            plan.env.insert(name, v);
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
    // An error met through an alias is wrapped (with where the anchor is): look inside.
    let mut inner = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    match inner {
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
    let shortened = shorten_unknown(stripped);
    let stripped = shortened.as_deref().unwrap_or(stripped);
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

/// serde's "unknown field `x`, expected one of …" with a long list (a step has 30 keys):
/// the closest key instead, when one is close, else the first keys only.
fn shorten_unknown(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let list = rest.strip_prefix(", expected one of ")?;
    let known: Vec<&str> = list.split(", ").map(|k| k.trim_matches('`')).collect();
    if known.len() <= 8 {
        return None;
    }
    let close = known
        .iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    Some(match close {
        Some((_, k)) => format!("unknown field `{key}` (did you mean `{k}`?)"),
        None => format!(
            "unknown field `{key}`, expected one of {}, … ({} keys)",
            known[..6].join(", "),
            known.len()
        ),
    })
}

/// The edit distance between two keys (insertions, deletions, substitutions).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(prev + usize::from(ca != *cb));
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
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
        "handler" => "do it in a `shell:` step",
        _ => return None,
    })
}

/// `map.sort_by`: `field [ASC|DESC] [NULLS FIRST|NULLS LAST]`, comma-separated keys.
fn parse_sort(text: &str) -> Result<Vec<SortKey>, String> {
    let mut keys = Vec::new();
    for part in text.split(',') {
        let mut words = part.split_whitespace();
        let field = words
            .next()
            .ok_or_else(|| format!("map.sort_by {text:?}: an empty key"))?;
        let rest: Vec<String> = words.map(str::to_ascii_uppercase).collect();
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let (desc, nulls) = match rest.as_slice() {
            [] => (false, &[][..]),
            ["ASC", nulls @ ..] => (false, nulls),
            ["DESC", nulls @ ..] => (true, nulls),
            nulls @ ["NULLS", ..] => (false, nulls),
            [other, ..] => {
                return Err(format!(
                    "map.sort_by: expected ASC or DESC, found {other:?}"
                ));
            }
        };
        let nulls_first = match nulls {
            [] | ["NULLS", "LAST"] => false,
            ["NULLS", "FIRST"] => true,
            _ => {
                return Err(format!(
                    "map.sort_by {text:?}: expected `field [ASC|DESC] [NULLS FIRST|LAST]`"
                ));
            }
        };
        let mut path: Vec<String> = field.split('.').map(str::to_owned).collect();
        // `item` alone sorts by the item itself (string items).
        if path[0] == "item" {
            path.remove(0);
        }
        if path.iter().any(String::is_empty) {
            return Err(format!("map.sort_by: bad field {field:?}"));
        }
        keys.push(SortKey {
            path,
            desc,
            nulls_first,
        });
    }
    Ok(keys)
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
        assert_eq!(
            plan.sort_by,
            vec![SortKey {
                path: vec!["score".into()],
                desc: true,
                nulls_first: false
            }]
        );
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

    /// A limit met through an alias (a "billion laughs" file) is said in the author's
    /// terms, as one met directly: it printed the reader's `Nodes { nodes: 250001 }`.
    #[test]
    fn a_yaml_limit_met_through_aliases_is_said_plainly() {
        let mut bomb =
            String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for (name, prev) in [("b", "a"), ("c", "b"), ("d", "c"), ("e", "d"), ("f", "e")] {
            let refs = vec![format!("*{prev}"); 10].join(",");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let e = parse(&bomb).unwrap_err();
        assert!(
            e.contains("the workflow is too big: it has more than 250000 YAML values")
                && !e.contains("budget breached")
                && !e.contains("Nodes {"),
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
        assert_eq!(
            e,
            "w.yml: step 2 has neither shell: nor claude: (nor write_file:)"
        );
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
            ("handler", "a `shell:` step"),
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
        // An unset `${env.X}` is refused by `run` (a dry run warns), at its line.
        let plan = Plan::parse(
            Path::new("w.yml"),
            &OK.replace("${env.GREETING}", "${env.NOPE_NOT_SET_X}"),
        )
        .unwrap();
        let e = plan.check_env().unwrap_err().to_string();
        assert!(e.starts_with("w.yml:14: ${env.NOPE_NOT_SET_X}"), "{e}");
        assert!(
            plan.warnings[0].contains("NOPE_NOT_SET_X"),
            "{:?}",
            plan.warnings
        );
        let e = parse(&OK.replace("mode: mapreduce", "mode: standard")).unwrap_err();
        assert!(e.starts_with("w.yml:2: mode 'standard'"), "{e}");
    }
}
