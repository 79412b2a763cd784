//! `${…}` interpolation in step commands.
//!
//! Ours are `${item}`, `${item.a.b}`, `${item_json}`, `${item_id}`, `${item_index}`,
//! `${map.total}`, `${map.successful}`, `${map.failed}`, `${map.results_json}`,
//! `${env.X}`, `${workflow.name}`, `${job.id}`, `${shell.output}`, `${last.output}`,
//! `${last.exit_code}` (the step before, from a phase's second step on) and names given to
//! `capture_output`, each optionally with a default, `${name|default:value}`, used when it
//! has no value (an item without that field, an unset `env.X`, a capture not made yet).
//! Each is checked when the workflow is loaded: a variable the step's
//! phase cannot have (`${item.x}` in reduce) or an unknown `${map.x}` is an error. Any other
//! `${NAME}` is left for the shell only when NAME is set in the environment (`${HOME}`); an
//! unknown plain name or dotted path is an error (the shell would make it empty), while
//! shell parameter syntax (`${f%.txt}`, `${1}`) stays the shell's.
//!
//! A value is data (issue 19): each variable is placed in the shell text when the workflow
//! loads ([`super::shell`]) and its value is quoted for where it stands, so the command
//! receives the exact text and runs none of it; `${name|raw}` pastes it as code. A step's
//! `when:` is a [`Condition`], parsed once with typed operands.

use std::collections::BTreeMap;

use serde_json::Value;

use super::shell::{Piece, Slot, quote};
use crate::dlq::filter::{ItemFilter, preview};

/// Where a step runs, which decides the variables it can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Setup: env, workflow, job.
    Setup,
    /// An agent: the item too, and `${map.total}`.
    Agent,
    /// Reduce: the map totals and results.
    Reduce,
}

/// What a template is checked against.
#[derive(Debug)]
pub struct Context<'a> {
    /// The step's phase.
    pub scope: Scope,
    /// Captured variables set by earlier steps.
    pub captured: &'a [String],
    /// Those of them that hold JSON (`capture_format: json`): `${NAME.field}` reads them.
    pub json: &'a [String],
    /// The workflow's `env`.
    pub env: &'a BTreeMap<String, String>,
    /// Prefixes whose every `${PREFIX.field}` is a captured value set when the step runs
    /// (`validation` in `on_incomplete`).
    pub open: &'a [&'a str],
    /// What the workflow's author should know, found while compiling.
    pub notes: &'a std::cell::RefCell<Notes>,
}

/// What compiling found that is no error.
#[derive(Debug, Default)]
pub struct Notes {
    /// Warnings for the author.
    pub warnings: Vec<String>,
    /// `${env.X}` whose X is set nowhere now: `run` refuses them (a dry run only warns).
    pub unset_env: Vec<String>,
}

/// Git's view of what a step, or the whole workflow so far, changed: `${step.*}` and
/// `${workflow.*}` (the original's git context variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Files added, sorted.
    pub added: Vec<String>,
    /// Files modified, sorted.
    pub modified: Vec<String>,
    /// Files deleted, sorted.
    pub deleted: Vec<String>,
    /// Commits, oldest first.
    pub commits: Vec<String>,
    /// Lines added.
    pub insertions: u64,
    /// Lines removed.
    pub deletions: u64,
}

/// Which changes a git variable reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitScope {
    /// The step before (`${step.*}`).
    Step,
    /// The workflow so far (`${workflow.*}`).
    Workflow,
}

/// A git context variable: what it reads, and how a list is written.
#[derive(Debug, Clone, PartialEq)]
pub struct GitVar {
    scope: GitScope,
    field: GitField,
    /// `:json`, `:lines`, `:comma`, or a glob the files must match (`:specs/*.md`).
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GitField {
    Added,
    Modified,
    Deleted,
    Changed,
    Commits,
    CommitCount,
    Insertions,
    Deletions,
}

const GIT_FIELDS: &str = "files_added, files_modified, files_deleted, files_changed, commits, \
                          commit_count, insertions, deletions";

#[derive(Debug, Clone, PartialEq)]
enum Var {
    Item(Vec<String>),
    ItemJson,
    ItemId,
    ItemIndex,
    MapTotal,
    MapSuccessful,
    MapFailed,
    MapResultsJson,
    Env(String),
    WorkflowName,
    JobId,
    Captured(String),
    CapturedField(String, Vec<String>),
    Git(GitVar),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    /// A variable and its default (`${name|default:value}`), used when it has no value.
    Var(Var, Option<String>, Use),
}

/// How a variable's value goes into the command.
#[derive(Debug, Clone, PartialEq)]
struct Use {
    /// What the author wrote between `${` and `}`, for messages.
    written: String,
    /// Where it stands in the shell text.
    slot: Slot,
    /// `|length`: the value's length stands in for it.
    length: bool,
}

/// What `${…}` refers to, with its modifiers.
struct Ref {
    var: Var,
    default: Option<String>,
    raw: bool,
    length: bool,
}

/// A compiled command.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    parts: Vec<Part>,
    /// The text as written.
    source: String,
}

/// The values a template is rendered with.
#[derive(Debug, Default)]
pub struct Vars<'a> {
    /// The work item.
    pub item: Option<&'a Value>,
    /// Its key.
    pub item_id: &'a str,
    /// Its index.
    pub item_index: usize,
    /// Items in the map phase.
    pub total: usize,
    /// Items done.
    pub successful: usize,
    /// Items failed.
    pub failed: usize,
    /// The map results as JSON.
    pub results_json: &'a str,
    /// The job's environment.
    pub env: Option<&'a BTreeMap<String, String>>,
    /// The workflow's name.
    pub workflow_name: &'a str,
    /// The job id.
    pub job_id: &'a str,
    /// Captured outputs.
    pub captured: Option<&'a BTreeMap<String, String>>,
    /// What the step before changed (`${step.*}`).
    pub step_changes: Option<&'a Changes>,
    /// What the workflow changed so far (`${workflow.*}`).
    pub workflow_changes: Option<&'a Changes>,
}

const RESERVED: [&str; 11] = [
    "last",
    "item",
    "item_json",
    "item_id",
    "item_index",
    "map",
    "env",
    "workflow",
    "job",
    "shell",
    "claude",
];

/// True for a name `capture_output` may use.
pub fn is_capture_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&name)
}

impl Template {
    /// Compiles `text`, a shell command, checking every variable of ours against `ctx` and
    /// placing it in the shell text ([`super::shell`]): where it stands decides how its
    /// value is quoted.
    pub fn compile(text: &str, ctx: &Context<'_>) -> Result<Template, String> {
        Template::compile_for(text, ctx, super::shell::sh_has_ansi_c())
    }

    /// Compiles `text` that is no shell command but one argument of a program (a Claude
    /// command): every variable is checked against `ctx` and its value pasted as it is.
    pub fn compile_text(text: &str, ctx: &Context<'_>) -> Result<Template, String> {
        let mut parts = Template::parts(text, ctx)?;
        for part in &mut parts {
            if let Part::Var(_, _, u) = part {
                u.slot = Slot::Raw;
            }
        }
        Ok(Template {
            parts,
            source: text.to_owned(),
        })
    }

    /// [`Self::compile`] for a shell that does (`ansi_c`) or does not read `$'…'`.
    pub fn compile_for(text: &str, ctx: &Context<'_>, ansi_c: bool) -> Result<Template, String> {
        let mut parts = Template::parts(text, ctx)?;
        // Raw values are code the author pastes in: the scanner cannot know what they do,
        // and skips them.
        let pieces: Vec<Piece<'_>> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Lit(s) => Some(Piece::Lit(s)),
                Part::Var(_, _, u) if u.slot == Slot::Raw => None,
                Part::Var(..) => Some(Piece::Var),
            })
            .collect();
        let mut slots = super::shell::place(&pieces, ansi_c)?.into_iter();
        super::shell::second_shell(&pieces)?;
        for part in &mut parts {
            if let Part::Var(_, _, u) = part
                && u.slot != Slot::Raw
            {
                u.slot = slots.next().ok_or("a variable was not placed")?;
            }
        }
        Ok(Template {
            parts,
            source: text.to_owned(),
        })
    }

    /// The literal text and variables of `text`, each variable checked against `ctx`;
    /// `${x|raw}` is marked raw, every other variable a word until it is placed.
    fn parts(text: &str, ctx: &Context<'_>) -> Result<Vec<Part>, String> {
        ASSIGNED.with(|a| *a.borrow_mut() = assigned(text));
        let parts = Template::parts_of(text, ctx);
        ASSIGNED.with(|a| a.borrow_mut().clear());
        parts
    }

    fn parts_of(text: &str, ctx: &Context<'_>) -> Result<Vec<Part>, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            lit.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else {
                lit.push_str(&rest[at..]);
                rest = "";
                break;
            };
            let whole = &after[..end];
            // `${HOME:-${item}}`: the outer is the shell's; ours inside is found next (and
            // placed inside the shell's own `${…}`, which the scanner refuses).
            if let Some(inner) = whole.find("${") {
                lit.push_str(&rest[at..at + 2 + inner]);
                rest = &after[inner..];
                continue;
            }
            match reference(whole, ctx)? {
                Some(r) => {
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    let slot = if r.raw { Slot::Raw } else { Slot::Word };
                    let written = whole.to_owned();
                    let length = r.length;
                    parts.push(Part::Var(
                        r.var,
                        r.default,
                        Use {
                            written,
                            slot,
                            length,
                        },
                    ));
                }
                None => lit.push_str(&rest[at..at + 2 + end + 1]),
            }
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(parts)
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when it reads any variable: rendered, its text is (partly) data.
    pub fn reads_variables(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(..)))
    }

    /// True when it reads `${step.*}` or `${workflow.*}` (git's view of the changes).
    pub fn reads_git(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(Var::Git(_), _, _)))
    }

    /// The item paths it reads.
    pub fn item_paths(&self) -> Vec<Vec<String>> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(Var::Item(path), _, _) if !path.is_empty() => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    /// The `${env.X}` names it reads.
    pub fn env_names(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(Var::Env(n), _, _) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    /// True when it reads the captured variable `name`.
    pub fn reads_captured(&self, name: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(Var::Captured(n), _, _) if n == name))
    }

    /// True when it reads `${map.results_json}`.
    pub fn reads_results(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(Var::MapResultsJson, _, _)))
    }

    /// True when the `${…}` at part `i` stands as whole words among a command's arguments
    /// (after `rendered`, what comes before it): after a word that is neither an
    /// assignment, an operator nor a keyword that starts a command, and followed by a
    /// blank, an operator or the end. Only there may a list become several words: as the
    /// command, in `X=${…}` or inside a word it stays one (`X=a b` would run `b`).
    fn arguments_at(&self, i: usize, rendered: &str) -> bool {
        const STARTS_COMMAND: [&str; 12] = [
            "then", "do", "else", "elif", "if", "while", "until", "!", "{", "time", "case", "exec",
        ];
        let ends = |c: char| c.is_whitespace() || ";&|)".contains(c);
        let after = match self.parts.get(i + 1) {
            None => true,
            Some(Part::Lit(s)) => s.chars().next().is_none_or(ends),
            Some(Part::Var(..)) => false,
        };
        if !after || !rendered.ends_with([' ', '\t']) {
            return false;
        }
        let line = rendered.rsplit('\n').next().unwrap_or_default();
        let Some(word) = line.split_whitespace().last() else {
            return false;
        };
        let assignment = word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        !assignment && !word.ends_with([';', '&', '|', '(']) && !STARTS_COMMAND.contains(&word)
    }

    /// Renders the command.
    pub fn render(&self, vars: &Vars<'_>) -> Result<String, String> {
        let mut out = String::new();
        for (i, part) in self.parts.iter().enumerate() {
            // A git list among a command's arguments: each file a word of its own (none,
            // nothing), a name like an option written as the path it is (`./-rf`).
            if let Part::Var(Var::Git(g), _, u) = part
                && u.slot == Slot::Word
                && !u.length
                && self.arguments_at(i, &out)
                && let Some(words) = g.words(g.changes(vars))
            {
                let quoted: Result<Vec<String>, _> = words
                    .iter()
                    .map(|w| match w.starts_with('-') {
                        true => format!("./{w}"),
                        false => w.clone(),
                    })
                    .map(|w| quote(&w, &Slot::Word).map(|q| q.into_owned()))
                    .collect();
                let quoted = quoted.map_err(|e| format!("${{{}}}: {e}", u.written))?;
                out.push_str(&quoted.join(" "));
                continue;
            }
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v, default, u) => {
                    let mut text = match (value(v, vars), default) {
                        (Ok(Some(s)), _) => s,
                        (Ok(None) | Err(_), Some(d)) => d.clone(),
                        (Ok(None), None) => String::new(),
                        (Err(e), None) => return Err(e),
                    };
                    if u.length {
                        text = length(&text).to_string();
                    }
                    let quoted =
                        quote(&text, &u.slot).map_err(|e| format!("${{{}}}: {e}", u.written))?;
                    out.push_str(&quoted);
                }
            }
        }
        Ok(out)
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Looks up `path` in an item; `Err` says why it cannot be read. A line of a command's
/// output (a string item) is also `${item.item}`, as the original made each line
/// `{"item": line}`.
pub fn lookup<'v>(item: &'v Value, path: &[String]) -> Result<&'v Value, String> {
    if let (Value::String(_), [only]) = (item, path)
        && only == "item"
    {
        return Ok(item);
    }
    let mut cur = item;
    for (i, key) in path.iter().enumerate() {
        let Value::Object(map) = cur else {
            let shown = if i == 0 {
                "the item".to_owned()
            } else {
                format!("item.{}", path[..i].join("."))
            };
            return Err(format!(
                "${{item.{}}} needs {shown} to be an object, but it is {}",
                path.join("."),
                kind(cur)
            ));
        };
        cur = map.get(key).ok_or_else(|| {
            format!(
                "${{item.{}}}: the item has no field {key:?}",
                path.join(".")
            )
        })?;
    }
    Ok(cur)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A variable's value; `None` for a captured name no step has set yet.
fn value(v: &Var, vars: &Vars<'_>) -> Result<Option<String>, String> {
    let item = || vars.item.ok_or("no item here".to_owned());
    Ok(Some(match v {
        Var::Item(path) => text(lookup(item()?, path)?),
        Var::ItemJson => item()?.to_string(),
        Var::ItemId => vars.item_id.to_owned(),
        Var::ItemIndex => vars.item_index.to_string(),
        Var::MapTotal => vars.total.to_string(),
        Var::MapSuccessful => vars.successful.to_string(),
        Var::MapFailed => vars.failed.to_string(),
        Var::MapResultsJson => vars.results_json.to_owned(),
        Var::Env(name) => vars
            .env
            .and_then(|e| e.get(name))
            .cloned()
            .ok_or_else(|| format!("${{env.{name}}} is not set"))?,
        Var::WorkflowName => vars.workflow_name.to_owned(),
        Var::JobId => vars.job_id.to_owned(),
        Var::Captured(name) => return Ok(vars.captured.and_then(|c| c.get(name)).cloned()),
        Var::CapturedField(name, path) => match captured_field(name, path, vars)? {
            None => return Ok(None),
            Some(Ok(found)) => text(&found),
            Some(Err(key)) => {
                return Err(format!("${{{name}.{}}}: no field {key:?}", path.join(".")));
            }
        },
        Var::Git(g) => g.render(g.changes(vars)),
    }))
}

impl GitVar {
    /// What git says its scope changed.
    fn changes<'v>(&self, vars: &Vars<'v>) -> &'v Changes {
        static NONE: std::sync::LazyLock<Changes> = std::sync::LazyLock::new(Changes::default);
        let changes = match self.scope {
            GitScope::Step => vars.step_changes,
            GitScope::Workflow => vars.workflow_changes,
        };
        changes.unwrap_or(&NONE)
    }
}

/// `${step.FIELD[:FORMAT]}` or `${workflow.FIELD[:FORMAT]}`.
fn git_var(head: &str, rest: &str) -> Result<GitVar, String> {
    let (field, format) = match rest.split_once(':') {
        Some((f, fmt)) => (f, Some(fmt.to_owned())),
        None => (rest, None),
    };
    let field = match field {
        "files_added" => GitField::Added,
        "files_modified" => GitField::Modified,
        "files_deleted" => GitField::Deleted,
        "files_changed" => GitField::Changed,
        "commits" => GitField::Commits,
        "commit_count" => GitField::CommitCount,
        "insertions" => GitField::Insertions,
        "deletions" => GitField::Deletions,
        other => {
            return Err(format!(
                "unknown variable ${{{head}.{other}}} ({head} has {GIT_FIELDS}{})",
                if head == "workflow" { ", name" } else { "" }
            ));
        }
    };
    if format.as_deref() == Some("") {
        return Err(format!("${{{head}.{rest}}}: an empty format after ':'"));
    }
    Ok(GitVar {
        scope: if head == "step" {
            GitScope::Step
        } else {
            GitScope::Workflow
        },
        field,
        format,
    })
}

impl GitVar {
    /// Its value: a list space-separated (or as `:json`, `:lines`, `:comma` say, or only the
    /// files a glob format matches), a count as a number.
    fn render(&self, c: &Changes) -> String {
        let Some(list) = self.list(c) else {
            return match self.field {
                GitField::CommitCount => c.commits.len().to_string(),
                GitField::Insertions => c.insertions.to_string(),
                _ => c.deletions.to_string(),
            };
        };
        match self.format.as_deref() {
            Some("json") => Value::from(list).to_string(),
            Some("lines" | "newline") => list.join("\n"),
            Some("comma") => list.join(","),
            _ => self.as_words(list).unwrap_or_default().join(" "),
        }
    }

    /// Its files (or commits) one by one, when it is a list written as words (no format,
    /// `:space`, or a glob's matches): an unquoted `${…}` in a shell command gives each a
    /// word of its own, as the original's space-joined list was split there, a name with
    /// spaces still one word.
    fn words(&self, c: &Changes) -> Option<Vec<String>> {
        self.as_words(self.list(c)?)
    }

    /// `list` as the words it is written as, by the format: all of it, a glob's matches,
    /// or `None` for a format that joins it otherwise.
    fn as_words(&self, list: Vec<String>) -> Option<Vec<String>> {
        match self.format.as_deref() {
            None | Some("space") => Some(list),
            Some("json" | "lines" | "newline" | "comma") => None,
            Some(glob) => Some(
                list.into_iter()
                    .filter(|f| super::glob::matches(glob, f))
                    .collect(),
            ),
        }
    }

    /// The list it names; `None` for a count.
    fn list(&self, c: &Changes) -> Option<Vec<String>> {
        Some(match self.field {
            GitField::Added => c.added.clone(),
            GitField::Modified => c.modified.clone(),
            GitField::Deleted => c.deleted.clone(),
            GitField::Changed => {
                let mut all: Vec<String> = c
                    .added
                    .iter()
                    .chain(&c.modified)
                    .chain(&c.deleted)
                    .cloned()
                    .collect();
                all.sort();
                all.dedup();
                all
            }
            GitField::Commits => c.commits.clone(),
            GitField::CommitCount | GitField::Insertions | GitField::Deletions => return None,
        })
    }
}

/// The field `path` of the JSON capture `name`: `None` when the capture is not made yet,
/// `Some(Err(key))` naming the first key it lacks; an error when it does not hold JSON.
fn captured_field<'p>(
    name: &str,
    path: &'p [String],
    vars: &Vars<'_>,
) -> Result<Option<Result<Value, &'p str>>, String> {
    let Some(raw) = vars.captured.and_then(|c| c.get(name)) else {
        return Ok(None);
    };
    let json: Value =
        serde_json::from_str(raw).map_err(|e| format!("${{{name}}} does not hold JSON: {e}"))?;
    let found = path.iter().try_fold(&json, |cur, key| {
        match cur {
            Value::Object(m) => m.get(key),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or(key.as_str())
    });
    Ok(Some(found.cloned()))
}

/// What `${whole}` refers to: one of our variables with its modifiers, or `None` for the
/// shell's own (`${HOME}`, `${f%.txt}`). Modifiers follow the name: `|raw`, `|length`,
/// then `|default:text` (the rest, `|` included, is the default).
fn reference(whole: &str, ctx: &Context<'_>) -> Result<Option<Ref>, String> {
    let (name, mut mods) = match whole.split_once('|') {
        Some((name, mods)) => (name.trim(), Some(mods)),
        None => (whole, None),
    };
    let mut raw = false;
    let mut length = false;
    let mut default = None;
    while let Some(m) = mods {
        if let Some(d) = m.strip_prefix("default:") {
            default = Some(d.to_owned());
            break;
        }
        let (this, next) = match m.split_once('|') {
            Some((this, next)) => (this, Some(next)),
            None => (m, None),
        };
        match this.split_once(':') {
            None if this == "raw" => raw = true,
            None if this == "length" => length = true,
            // `|length:N`, as one of the original's examples writes it: the argument has
            // no meaning here, and the author is told.
            Some(("length", arg)) => {
                length = true;
                ctx.notes.borrow_mut().warnings.push(format!(
                    "${{{whole}}}: |length is the value's length (characters, or the items of \
                     a JSON list); the argument {arg:?} is ignored"
                ));
            }
            // Not ours (`${a|b}` is no shell syntax either): as before, the shell's.
            _ => match parse_var(name, ctx) {
                Ok(Some(_)) => {
                    return Err(format!(
                        "${{{whole}}}: unknown modifier {m:?} (there are |raw, |length and \
                         |default:TEXT)"
                    ));
                }
                _ => return Ok(None),
            },
        }
        mods = next;
    }
    let var = match (&default, name.strip_prefix("env.")) {
        // With a default, an unset variable is fine: the default is its value.
        (Some(_), Some(var)) if !var.is_empty() => Some(Var::Env(var.to_owned())),
        _ => parse_var(name, ctx)?,
    };
    match var {
        Some(var) => Ok(Some(Ref {
            var,
            default,
            raw,
            length,
        })),
        None if default.is_some() || raw || length => Err(format!(
            "unknown variable ${{{name}}} in ${{{whole}}} (|raw, |length and |default go with \
             item…, env.X, map.…, workflow.name, job.id or a captured name)"
        )),
        None => Ok(None),
    }
}

thread_local! {
    /// The shell variables the command being compiled assigns itself ([`assigned`]).
    static ASSIGNED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The names a shell command assigns itself: `NAME=` at the start of a word, `for NAME`,
/// `read [-opts] NAME…`, `local|export|declare|readonly|typeset NAME`. Its `${NAME}` is
/// then the shell's own, not an unknown variable of ours.
fn assigned(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let word = |w: &str| -> Option<String> {
        let w = w.split('=').next()?;
        is_plain_name(w)
            .then(|| w.to_owned())
            .filter(|w| !w.contains('.'))
    };
    for line in text.split(['\n', ';', '&', '|', '(', '{', '`']) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            if let Some((name, _)) = w.split_once('=')
                && word(name).is_some()
            {
                names.push(name.to_owned());
                i += 1;
                continue;
            }
            match w {
                "for" | "local" | "export" | "declare" | "readonly" | "typeset" | "read" => {
                    for next in &words[i + 1..] {
                        if next.starts_with('-') {
                            continue;
                        }
                        match word(next) {
                            Some(n) => names.push(n),
                            None => break,
                        }
                        if w == "for" {
                            break;
                        }
                    }
                }
                _ => {}
            }
            break;
        }
    }
    names
}

/// `|length`: a JSON list's or object's items, else the text's characters.
fn length(text: &str) -> usize {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(a)) => a.len(),
        Ok(Value::Object(o)) => o.len(),
        _ => text.chars().count(),
    }
}

fn parse_var(name: &str, ctx: &Context<'_>) -> Result<Option<Var>, String> {
    let (head, tail) = match name.split_once('.') {
        Some((h, t)) => (h, Some(t)),
        None => (name, None),
    };
    let agent = ctx.scope == Scope::Agent;
    let only = |what: &str, ok: bool, var: Var| {
        if ok {
            Ok(Some(var))
        } else {
            Err(format!(
                "${{{name}}} is not available in {} steps ({what})",
                match ctx.scope {
                    Scope::Setup => "setup",
                    Scope::Agent => "agent_template",
                    Scope::Reduce => "reduce",
                }
            ))
        }
    };
    if ctx.captured.iter().any(|c| c == name) {
        return Ok(Some(Var::Captured(name.to_owned())));
    }
    if let Some(path) = tail
        && ctx.json.iter().any(|c| c == head)
    {
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("${{{name}}}: bad field path"));
        }
        return Ok(Some(Var::CapturedField(head.to_owned(), path)));
    }
    if tail.is_some() && ctx.captured.iter().any(|c| c == head) {
        return Err(format!(
            "${{{name}}}: {head} is not JSON: its own fields are {head}.exit_code, .success \
             and .duration (unless capture_streams turns them off); give its step \
             `capture_format: json` to read fields of its output"
        ));
    }
    if tail.is_some() && ctx.open.contains(&head) {
        return Ok(Some(Var::Captured(name.to_owned())));
    }
    if let ("step" | "workflow", Some(rest)) = (head, tail)
        && name != "workflow.name"
    {
        return git_var(head, rest).map(|g| Some(Var::Git(g)));
    }
    match (head, tail) {
        ("item", None) => only("only agents have an item", agent, Var::Item(Vec::new())),
        ("item", Some(path)) => {
            let path: Vec<String> = path.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(format!("${{{name}}}: bad field path"));
            }
            only("only agents have an item", agent, Var::Item(path))
        }
        ("item_json", None) => only("only agents have an item", agent, Var::ItemJson),
        ("item_id", None) => only("only agents have an item", agent, Var::ItemId),
        ("item_index", None) => only("only agents have an item", agent, Var::ItemIndex),
        ("map", Some("total")) => only(
            "the items are known after setup",
            ctx.scope != Scope::Setup,
            Var::MapTotal,
        ),
        ("map", Some("successful" | "failed" | "results_json" | "results")) => {
            let var = match tail {
                Some("successful") => Var::MapSuccessful,
                Some("failed") => Var::MapFailed,
                _ => Var::MapResultsJson,
            };
            only(
                "map results exist in reduce",
                ctx.scope == Scope::Reduce,
                var,
            )
        }
        ("map", _) => Err(format!(
            "unknown variable ${{{name}}} (map has total, successful, failed, results_json)"
        )),
        ("env", Some(var)) => {
            if !(ctx.env.contains_key(var) || std::env::var_os(var).is_some()) {
                // Read when the job runs: `run` refuses it while it is unset, a dry run
                // says so.
                ctx.notes.borrow_mut().unset_env.push(var.to_owned());
            }
            Ok(Some(Var::Env(var.to_owned())))
        }
        ("workflow", Some("name")) => Ok(Some(Var::WorkflowName)),
        ("job", Some("id")) => Ok(Some(Var::JobId)),
        ("shell", Some("output")) => Err(format!(
            "${{{name}}} is the output of the step before: a phase's first step has none"
        )),
        ("claude", Some("output")) => Err(format!(
            "${{{name}}} is the result of a claude: step before this one, and there is none"
        )),
        ("env" | "workflow" | "job" | "shell" | "claude", _) => {
            Err(format!("unknown variable ${{{name}}}"))
        }
        _ if head.starts_with("item") && head.len() > 4 => {
            Err(format!("unknown variable ${{{name}}}"))
        }
        // `${NAME}` set in the environment is the shell's (`${HOME}`); anything else that is
        // a plain name (or a dotted path) is a mistake: the shell would make it empty.
        _ if is_plain_name(name) => {
            // `--args` sets ARG for each session, after the file is read; a variable the
            // command assigns itself (`n=$((…)); echo ${n}`) is the shell's.
            if tail.is_none()
                && (name == "ARG"
                    || ctx.env.contains_key(name)
                    || std::env::var_os(name).is_some()
                    || ASSIGNED.with(|a| a.borrow().iter().any(|n| n == name)))
            {
                Ok(None)
            } else {
                Err(format!(
                    "unknown variable ${{{name}}}: not a workflow variable nor set in the \
                     environment (write ${name} for a variable the command itself sets)"
                ))
            }
        }
        // `${f%.txt}`, `${1}`, `${#a}`, …: shell syntax.
        _ => Ok(None),
    }
}

/// `NAME` or `a.b.c`: what a variable of ours looks like (not shell parameter syntax).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// A step's `when:`, parsed once when the workflow is loaded, in the filter language
/// ([`ItemFilter::parse_condition`]): each `${…}` is an operand with a typed value (an
/// item's number is a number), so no value can change the expression's structure — an
/// item `true || x` is a string that is not `'banana'`.
#[derive(Debug, Clone)]
pub struct Condition {
    expr: ItemFilter,
    vars: Vec<(Var, Option<String>)>,
    text: String,
}

impl Condition {
    /// Parses `text`, checking its variables against `ctx` as a command's.
    pub fn compile(text: &str, ctx: &Context<'_>) -> Result<Condition, String> {
        let mut vars = Vec::new();
        let expr = ItemFilter::parse_condition(text, &mut |whole| match reference(whole, ctx)? {
            Some(Ref { raw: true, .. }) => {
                Err(format!("${{{whole}}}: |raw has no place in a condition"))
            }
            Some(Ref { length: true, .. }) => {
                Err(format!("${{{whole}}}: |length has no place in a condition"))
            }
            Some(Ref { var, default, .. }) => {
                vars.push((var, default));
                Ok(vars.len() - 1)
            }
            None => Err(format!(
                "${{{whole}}} is not a workflow variable (the environment's are ${{env.NAME}})"
            )),
        })
        .map_err(|e| {
            format!(
                "when: {} at column {}: {}",
                preview(&e.expr),
                e.column,
                e.message
            )
        })?;
        Ok(Condition {
            expr,
            vars,
            text: text.to_owned(),
        })
    }

    /// Its value with `vars`; an error (the step fails) when it has none.
    pub fn eval(&self, vars: &Vars<'_>) -> Result<bool, String> {
        self.expr
            .eval_condition(&|i| {
                let (var, default) = &self.vars[i];
                match (typed(var, vars), default) {
                    (Ok(Some(v)), _) => Ok(v),
                    (Ok(None) | Err(_), Some(d)) => Ok(Value::String(d.clone())),
                    (Ok(None), None) => Ok(Value::Null),
                    (Err(e), None) => Err(e),
                }
            })
            .map_err(|e| format!("when: {e} in {}", preview(&self.text)))
    }

    /// The text as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True when it reads the captured variable `name`.
    pub fn reads_captured(&self, name: &str) -> bool {
        self.vars
            .iter()
            .any(|(v, _)| matches!(v, Var::Captured(n) if n == name))
    }

    /// The `${env.X}` names it reads.
    pub fn env_names(&self) -> Vec<String> {
        self.vars
            .iter()
            .filter_map(|(v, _)| match v {
                Var::Env(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A variable's typed value: an item's field as its JSON, counts as numbers, the rest as
/// text; `None` for a captured name not set yet.
fn typed(v: &Var, vars: &Vars<'_>) -> Result<Option<Value>, String> {
    Ok(Some(match v {
        Var::Item(path) => {
            let item = vars.item.ok_or("no item here")?;
            // A missing field has no value: its default, else null as in filters
            // (`${item.x} == null` asks for it).
            match lookup(item, path) {
                Ok(found) => found.clone(),
                Err(_) => return Ok(None),
            }
        }
        Var::ItemIndex => Value::from(vars.item_index),
        Var::MapTotal => Value::from(vars.total),
        Var::MapSuccessful => Value::from(vars.successful),
        Var::MapFailed => Value::from(vars.failed),
        Var::CapturedField(name, path) => match captured_field(name, path, vars)? {
            None => return Ok(None),
            Some(found) => found.unwrap_or(Value::Null),
        },
        _ => return Ok(value(v, vars)?.map(Value::String)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(scope: Scope) -> (BTreeMap<String, String>, Vec<String>, Scope) {
        let mut env = BTreeMap::new();
        env.insert("A".to_owned(), "a-value".to_owned());
        (env, vec!["out".to_owned()], scope)
    }

    #[test]
    fn renders_and_leaves_shell_variables() {
        let (env, captured, scope) = ctx(Scope::Agent);
        let warn = std::cell::RefCell::default();
        let c = Context {
            scope,
            captured: &captured,
            json: &[],
            env: &env,
            open: &[],
            notes: &warn,
        };
        let t =
            Template::compile("f ${item.a.b} ${item_json} ${HOME} $X ${env.A} ${out}", &c).unwrap();
        let item = json!({"a": {"b": "deep"}});
        let mut cap = BTreeMap::new();
        cap.insert("out".to_owned(), "o".to_owned());
        let s = t
            .render(&Vars {
                item: Some(&item),
                env: Some(&env),
                captured: Some(&cap),
                ..Vars::default()
            })
            .unwrap();
        assert_eq!(s, r#"f deep '{"a":{"b":"deep"}}' ${HOME} $X a-value o"#);
        assert_eq!(t.item_paths(), vec![vec!["a".to_owned(), "b".to_owned()]]);
    }

    #[test]
    fn refuses_what_a_phase_cannot_have() {
        let (env, captured, _) = ctx(Scope::Reduce);
        let warn = std::cell::RefCell::default();
        let c = |scope| Context {
            scope,
            captured: &captured,
            json: &[],
            env: &env,
            open: &[],
            notes: &warn,
        };
        assert!(Template::compile("${item.x}", &c(Scope::Reduce)).is_err());
        assert!(Template::compile("${map.total}", &c(Scope::Setup)).is_err());
        assert!(Template::compile("${map.nope}", &c(Scope::Reduce)).is_err());
        // A typo is an error before anything runs, not an empty string from the shell;
        // environment variables and shell parameter syntax stay the shell's.
        let e = Template::compile("${itme_id}", &c(Scope::Agent)).unwrap_err();
        assert!(e.contains("unknown variable ${itme_id}"), "{e}");
        assert!(Template::compile("${item.x.y}", &c(Scope::Agent)).is_ok());
        assert!(Template::compile("${nope.field}", &c(Scope::Agent)).is_err());
        assert!(Template::compile("${PATH} ${A} ${f%.txt} ${1} ${#x}", &c(Scope::Agent)).is_ok());
        assert!(Template::compile("${item_idx}", &c(Scope::Agent)).is_err());
        assert!(Template::compile("${map.results_json}", &c(Scope::Reduce)).is_ok());
    }

    #[test]
    fn defaults_stand_in_for_missing_values_only() {
        let (env, captured, scope) = ctx(Scope::Agent);
        let warn = std::cell::RefCell::default();
        let c = Context {
            scope,
            captured: &captured,
            json: &[],
            env: &env,
            open: &[],
            notes: &warn,
        };
        let t = Template::compile(
            "${item.a|default:none} ${item.b|default:none} ${env.PRODIGY_SURELY_UNSET|default:d} ${env.A|default:d} ${out|default:zz}",
            &c,
        )
        .unwrap();
        let item = json!({"a": 1});
        let s = t
            .render(&Vars {
                item: Some(&item),
                env: Some(&env),
                ..Vars::default()
            })
            .unwrap();
        assert_eq!(s, "1 none d a-value zz");
        // Without a default a missing field is still an error, and a default needs one of
        // our variables (the shell has no such syntax).
        let t = Template::compile("${item.b}", &c).unwrap();
        assert!(
            t.render(&Vars {
                item: Some(&item),
                ..Vars::default()
            })
            .is_err()
        );
        let e = Template::compile("${FOO|default:x}", &c).unwrap_err();
        assert!(e.contains("unknown variable ${FOO}"), "{e}");
        assert!(
            Template::compile(
                "${item.x|default:1}",
                &Context {
                    scope: Scope::Reduce,
                    captured: &captured,
                    json: &[],
                    env: &env,
                    open: &[],
                    notes: &warn,
                }
            )
            .is_err()
        );
    }

    #[test]
    fn conditions_are_parsed_once_and_values_stay_values() {
        let (env, captured, scope) = ctx(Scope::Agent);
        let warn = std::cell::RefCell::default();
        let c = Context {
            scope,
            captured: &captured,
            json: &[],
            env: &env,
            open: &[],
            notes: &warn,
        };
        let eval = |text: &str, item: Value| {
            let mut cap = BTreeMap::new();
            cap.insert("out".to_owned(), " 7 ".to_owned());
            Condition::compile(text, &c).unwrap().eval(&Vars {
                item: Some(&item),
                captured: Some(&cap),
                total: 4,
                ..Vars::default()
            })
        };
        for (text, item, want) in [
            ("true", json!(1), true),
            ("${item} == 'banana'", json!("banana"), true),
            ("${item} == 'banana'", json!("true || x"), false),
            ("${item} == ${item}", json!("a == a"), true),
            (
                "${item.n} > 2.5 && ${map.total} == 4",
                json!({"n": 3}),
                true,
            ),
            ("${out} == 7", json!(1), true),
            ("${item.flag}", json!({"flag": true}), true),
            ("!${item.flag}", json!({"flag": "false"}), true),
            ("${item.missing} == null", json!({}), true),
            ("${item.x|default:fine} == 'fine'", json!({}), true),
            ("${item} ~ '^ba'", json!("banana"), true),
        ] {
            assert_eq!(eval(text, item.clone()), Ok(want), "{text} with {item}");
        }
        // An item that looks like an expression is a value.
        let e = eval("${item}", json!("true || x")).unwrap_err();
        assert!(e.contains("neither true nor false"), "{e}");
        assert!(eval("${item} < 3", json!("abc")).is_err());
        for bad in ["maybe", "", "${nope} == 1", "${item|raw}", "${HOME} == 'x'"] {
            assert!(Condition::compile(bad, &c).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookup_explains() {
        let e = lookup(&json!("s"), &["x".to_owned()]).unwrap_err();
        assert!(
            e.contains("needs the item to be an object, but it is a string"),
            "{e}"
        );
        let e = lookup(&json!({"y": 1}), &["x".to_owned()]).unwrap_err();
        assert!(e.contains("no field \"x\""), "{e}");
        // A line is also `${item.item}`, as the original's `{"item": line}`; an object's
        // field `item` is its own.
        let item = ["item".to_owned()];
        assert_eq!(lookup(&json!("a line"), &item).unwrap(), "a line");
        assert_eq!(lookup(&json!({"item": 5}), &item).unwrap(), 5);
        assert!(lookup(&json!("a line"), &["item".to_owned(), "x".to_owned()]).is_err());
    }
}
