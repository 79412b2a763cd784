//! `claude:` steps: the Claude Code CLI run in the step's worktree, as the original tool
//! runs it.
//!
//! The program is `claude` on the `PATH`, or what [`PROGRAM_ENV`] names (a wrapper). Its
//! standard input is empty (not a terminal), the interpolated command is one argument.
//! Streaming (the default): `--output-format stream-json --verbose
//! --dangerously-skip-permissions <command>`; print mode (`PRODIGY_CLAUDE_STREAMING=false`
//! in the workflow's env or the process's): `--print --dangerously-skip-permissions
//! <command>`.
//!
//! A call's standard output is its transcript: kept whole in the store (a blob that the
//! `claude_call_finished` event names, and so its log node), readable by `prodigy logs`
//! after the worktree is gone. While it runs, each line of the stream becomes an event
//! (`claude_session_started`, `claude_message`, `claude_tool_invoked`), so `events follow`
//! shows progress. The stream's final `result` gives the step's output (`${claude.output}`,
//! captures), its token usage and cost; a call whose stream has no result, is not JSON,
//! or says `is_error`, fails its step whatever its exit code.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::exec::{Executor, LineHook, Program, StepOutcome, StepSpec};
use super::site::Site;
use crate::events::record::{ClaudeUsage, MapReduceEvent};
use crate::store::object::ObjectType;

/// The variable naming the program run for `claude:` steps (default `claude` on the
/// `PATH`).
pub const PROGRAM_ENV: &str = "PRODIGY_CLAUDE_PATH";

/// The variable that turns streaming off (`false`): the original's print mode.
pub const STREAMING_ENV: &str = "PRODIGY_CLAUDE_STREAMING";

/// The most of a transcript kept: a call that writes more fails rather than keep a part.
pub const MAX_TRANSCRIPT: usize = 256 << 20;

/// The most of an assistant message an event carries (the transcript has it whole).
const MAX_MESSAGE: usize = 4096;

/// How a call ended: the step's outcome (its output is the result's text) and, when it
/// failed for what its stream said rather than its exit, why.
pub(super) struct Called {
    pub outcome: StepOutcome,
    pub failure: Option<String>,
}

/// The program that runs `claude:` steps, found on the `PATH` of `env` (the step's) or the
/// process; an error that says what to do when it is not there.
fn program(env: &BTreeMap<String, String>) -> Result<PathBuf, String> {
    let named = env
        .get(PROGRAM_ENV)
        .map(OsString::from)
        .or_else(|| std::env::var_os(PROGRAM_ENV))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| OsString::from("claude"));
    let named = PathBuf::from(named);
    if named.components().count() > 1 {
        return match named.is_file() {
            true => Ok(named),
            false => Err(format!(
                "{PROGRAM_ENV} names '{}', which is not a file",
                named.display()
            )),
        };
    }
    let path = env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(&named))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            format!(
                "'{}' is not on the PATH: install Claude Code (npm install -g \
                 @anthropic-ai/claude-code), or set {PROGRAM_ENV} to the program",
                named.display()
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True unless the step's env or the process says `PRODIGY_CLAUDE_STREAMING=false`.
fn streaming(env: &BTreeMap<String, String>) -> bool {
    let value = env
        .get(STREAMING_ENV)
        .cloned()
        .or_else(|| std::env::var(STREAMING_ENV).ok());
    value.as_deref() != Some("false")
}

/// The arguments of a call, as the original gives them.
pub fn arguments(command: &str, streaming: bool) -> Vec<String> {
    let mut args: Vec<String> = if streaming {
        ["--output-format", "stream-json", "--verbose"]
            .map(String::from)
            .to_vec()
    } else {
        vec!["--print".into()]
    };
    args.push("--dangerously-skip-permissions".into());
    // A command starting with `-` (an item's text, say, `${item}` alone) would be read as
    // options by the CLI (`--settings=…`, `--mcp-config=…`); after `--` it is the prompt.
    if command.starts_with('-') {
        args.push("--".into());
    }
    args.push(command.to_owned());
    args
}

/// True for a command the CLI could take for one of its subcommands (`update`,
/// `install`, `mcp`, `doctor`… and any it adds later): one bare word. Its parser
/// (Commander) dispatches on the first operand whatever came before it, `--` included, so
/// an item's text alone must never be such a word.
fn subcommand_like(command: &str) -> bool {
    !command.is_empty()
        && !command.starts_with('-')
        && command
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b':')
}

/// Runs one call of `command` (step `step`, e.g. `map/2`) where `site` says.
pub(super) fn call(
    exec: &Executor,
    site: &Site<'_>,
    step: &str,
    command: &str,
    timeout: Option<Duration>,
) -> std::io::Result<Called> {
    let (cwd, env, log) = (site.cwd, site.env, site.log);
    if subcommand_like(command) {
        return Err(std::io::Error::other(format!(
            "the command {command:?} is one bare word, which the CLI would run as its own \
             subcommand (`claude {command}`), not as a prompt; write a sentence or a \
             /command"
        )));
    }
    let program = program(env).map_err(std::io::Error::other)?;
    let streaming = streaming(env);
    let args = arguments(command, streaming);
    site.event(MapReduceEvent::ClaudeCallStarted {
        job_id: site.job_id.to_owned(),
        agent_id: site.agent_id.to_owned(),
        item_id: site.item_id.map(str::to_owned),
        step: step.to_owned(),
        command: site.mask.text(command),
        attempt: site.attempt,
    });
    let hook: Option<LineHook> = streaming.then(|| {
        let logger = Arc::clone(site.logger);
        let agent = site.agent_id.to_owned();
        let metadata = site.metadata.clone();
        let tee = site.tee.clone();
        Arc::new(move |line: &[u8]| {
            for event in live_events(&agent, line) {
                // The terminal's copy is what the assistant says.
                if let (Some(tee), MapReduceEvent::ClaudeMessage { content, .. }) = (&tee, &event) {
                    for text in content.lines() {
                        tee(text.as_bytes());
                    }
                }
                let _ = logger.log_with_metadata(event, metadata.clone());
            }
        }) as LineHook
    });
    let mut outcome = exec.run(&StepSpec {
        program: Program::Exec(&program, &args),
        cwd,
        env,
        timeout,
        capture: Some(MAX_TRANSCRIPT + 1),
        log,
        lines: hook,
        clear_env: false,
        keep_stderr: false,
        mask: Some(Arc::clone(site.mask)),
        // Print mode's output is the result text; a stream is told by its messages.
        tee: if streaming { None } else { site.tee.clone() },
    })?;
    let transcript = std::mem::take(&mut outcome.stdout);
    let whole = transcript.len() <= MAX_TRANSCRIPT;
    // The transcript is named by the event below; gc must not come between its write and
    // the event's durable append.
    let guard = site.refs.write_guard();
    let stored = guard
        .as_ref()
        .map_err(|e| crate::error_line(e))
        .and_then(|_| {
            site.refs
                .objects()
                .write(
                    ObjectType::Blob,
                    &transcript[..transcript.len().min(MAX_TRANSCRIPT)],
                )
                .map_err(|e| crate::error_line(&e))
        });
    let read = if streaming {
        read_stream(&transcript)
    } else {
        Ok(Stream {
            result: Some(Final {
                result: Some(String::from_utf8_lossy(&transcript).trim_end().to_owned()),
                ..Final::default()
            }),
        })
    };
    let shown = || one_line(&site.mask.text(command));
    let mut failure = match (&stored, &read) {
        _ if outcome.timed_out || outcome.interrupted => None,
        (Err(e), _) => Some(format!(
            "cannot keep the transcript of claude {}: {e}",
            shown()
        )),
        _ if !whole => Some(format!(
            "claude {} wrote more than {} MiB; nothing past that is kept",
            shown(),
            MAX_TRANSCRIPT >> 20
        )),
        _ if outcome.exit_code != 0 => None,
        (_, Err(why)) => Some(format!("claude {}: {why}", shown())),
        (_, Ok(stream)) => match &stream.result {
            None => Some(format!(
                "claude {} ended without a result (its stream stopped early)",
                shown()
            )),
            Some(r) if r.is_error => Some(format!(
                "claude {} reported an error ({}): {}",
                shown(),
                r.subtype.as_deref().unwrap_or("is_error"),
                one_line(r.result.as_deref().unwrap_or(""))
            )),
            Some(_) => None,
        },
    };
    let result = read.as_ref().ok().and_then(|s| s.result.clone());
    let usage = result.as_ref().map(|r| r.usage).unwrap_or_default();
    if outcome.exit_code != 0 && !outcome.timed_out && !outcome.interrupted {
        let last = super::last_line(&outcome.stderr_tail);
        failure = Some(match last.is_empty() {
            true => format!("claude {} exited with code {}", shown(), outcome.exit_code),
            false => format!(
                "claude {} exited with code {}: {last}",
                shown(),
                outcome.exit_code
            ),
        });
    }
    if result.is_some() && streaming {
        site.event(MapReduceEvent::ClaudeTokenUsage {
            agent_id: site.agent_id.to_owned(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_tokens: usage.cache_creation_input_tokens + usage.cache_read_input_tokens,
        });
    }
    site.event(MapReduceEvent::ClaudeCallFinished {
        job_id: site.job_id.to_owned(),
        agent_id: site.agent_id.to_owned(),
        item_id: site.item_id.map(str::to_owned),
        step: step.to_owned(),
        attempt: site.attempt,
        exit_code: outcome.exit_code,
        duration_ms: outcome.duration.as_millis() as u64,
        num_turns: result.as_ref().and_then(|r| r.num_turns),
        is_error: failure.is_some() || outcome.timed_out,
        error: failure.clone(),
        usage,
        total_cost_usd: result.as_ref().and_then(|r| r.total_cost_usd),
        session_id: result.as_ref().and_then(|r| r.session_id.clone()),
        transcript: stored.ok(),
    });
    let _ = site.logger.flush();
    drop(guard);
    let text = result.and_then(|r| r.result).unwrap_or_default();
    outcome.stdout_bytes = text.len() as u64;
    // What the call printed is its result text, not the stream it came in.
    let from = text.len().saturating_sub(super::exec::STDOUT_TAIL + 1);
    outcome.stdout_tail = text.as_bytes()[from..].to_vec();
    outcome.stdout = text.into_bytes();
    Ok(Called { outcome, failure })
}

/// A command as messages show it: one line, at most 200 characters.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// What a stream says, as far as the runner needs.
#[derive(Debug, Default)]
pub struct Stream {
    /// The final `result` message.
    pub result: Option<Final>,
}

/// The final `result` message of a stream (the CLI's field names).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Final {
    /// `success`, `error_max_turns`, `error_during_execution`…
    #[serde(default)]
    pub subtype: Option<String>,
    /// True when the call failed.
    #[serde(default)]
    pub is_error: bool,
    /// The final text.
    #[serde(default)]
    pub result: Option<String>,
    /// Turns taken.
    #[serde(default)]
    pub num_turns: Option<u64>,
    /// What the call cost.
    #[serde(default)]
    pub total_cost_usd: Option<f64>,
    /// Its tokens.
    #[serde(default)]
    pub usage: ClaudeUsage,
    /// The session.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Reads a whole stream: every line must be a JSON object; the last `result` counts.
pub fn read_stream(bytes: &[u8]) -> Result<Stream, String> {
    let mut stream = Stream::default();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: Value = serde_json::from_slice(line).map_err(|e| {
            let shown: String = String::from_utf8_lossy(&line[..line.len().min(80)])
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            format!(
                "its output is not stream-json: line {} is not JSON ({e}): {shown:?}",
                n + 1
            )
        })?;
        if value.get("type").and_then(Value::as_str) == Some("result") {
            let result: Final = serde_json::from_value(value)
                .map_err(|e| format!("its result (line {}) is malformed: {e}", n + 1))?;
            stream.result = Some(result);
        }
    }
    Ok(stream)
}

/// The events one line of a stream makes while the call runs: the session's start, each
/// assistant text (cut to [`MAX_MESSAGE`]), each tool call. Lines that are not JSON make
/// none here; the whole stream is judged when the call ends.
pub fn live_events(agent: &str, line: &[u8]) -> Vec<MapReduceEvent> {
    let Ok(value) = serde_json::from_slice::<Value>(line) else {
        return Vec::new();
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match value.get("type").and_then(Value::as_str) {
        Some("system") if value.get("subtype").and_then(Value::as_str) == Some("init") => {
            vec![MapReduceEvent::ClaudeSessionStarted {
                agent_id: agent.to_owned(),
                session_id: text(&value["session_id"]),
                model: text(&value["model"]),
                tools: value["tools"]
                    .as_array()
                    .map(|t| t.iter().map(text).collect())
                    .unwrap_or_default(),
            }]
        }
        Some("assistant") => {
            let content = value["message"]["content"].as_array().cloned();
            content
                .unwrap_or_default()
                .iter()
                .filter_map(|c| match c.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let mut content = text(&c["text"]);
                        if content.len() > MAX_MESSAGE {
                            let mut cut = MAX_MESSAGE;
                            while !content.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            content.truncate(cut);
                            content.push('…');
                        }
                        Some(MapReduceEvent::ClaudeMessage {
                            agent_id: agent.to_owned(),
                            content,
                            message_type: "assistant".into(),
                            json_log_location: None,
                        })
                    }
                    Some("tool_use") => Some(MapReduceEvent::ClaudeToolInvoked {
                        agent_id: agent.to_owned(),
                        tool_name: text(&c["name"]),
                        tool_id: text(&c["id"]),
                        parameters: c.get("input").cloned().unwrap_or(Value::Null),
                        timestamp: crate::events::record::now_timestamp(),
                    }),
                    _ => None,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The assistant's text in a transcript, in order (what `prodigy logs` shows), with the
/// final result; a print-mode transcript is its text.
pub fn assistant_text(transcript: &[u8]) -> String {
    let mut out = String::new();
    let mut json = false;
    for line in transcript.split(|b| *b == b'\n') {
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        json = true;
        match value.get("type").and_then(Value::as_str) {
            Some("assistant") => {
                for c in value["message"]["content"].as_array().into_iter().flatten() {
                    match c.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            out.push_str(c["text"].as_str().unwrap_or_default());
                            out.push('\n');
                        }
                        Some("tool_use") => {
                            out.push_str(&format!(
                                "[tool {}: {}]\n",
                                c["name"].as_str().unwrap_or_default(),
                                c.get("input").cloned().unwrap_or(Value::Null)
                            ));
                        }
                        _ => {}
                    }
                }
            }
            Some("result") => {
                out.push_str(&format!(
                    "[result{}: {}]\n",
                    if value["is_error"].as_bool() == Some(true) {
                        " (error)"
                    } else {
                        ""
                    },
                    value["result"].as_str().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }
    if !json {
        return String::from_utf8_lossy(transcript).into_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = r#"{"type":"system","subtype":"init","session_id":"s1","model":"claude-sonnet-4","tools":["Bash","Read"]}
{"type":"assistant","message":{"content":[{"type":"text","text":"Looking."},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}],"usage":{"input_tokens":3,"output_tokens":5}}}
{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"a\nb"}]}}
{"type":"result","subtype":"success","is_error":false,"duration_ms":12,"num_turns":2,"result":"done","session_id":"s1","total_cost_usd":0.0123,"usage":{"input_tokens":10,"output_tokens":20,"cache_creation_input_tokens":30,"cache_read_input_tokens":40}}
"#;

    #[test]
    fn a_stream_gives_its_result_usage_and_live_events() {
        let stream = read_stream(STREAM.as_bytes()).unwrap();
        let r = stream.result.unwrap();
        assert_eq!(r.result.as_deref(), Some("done"));
        assert_eq!(r.num_turns, Some(2));
        assert_eq!(r.total_cost_usd, Some(0.0123));
        assert_eq!(r.usage.cache_read_input_tokens, 40);
        let lines: Vec<&str> = STREAM.lines().collect();
        assert!(matches!(
            &live_events("a", lines[0].as_bytes())[..],
            [MapReduceEvent::ClaudeSessionStarted { model, .. }] if model == "claude-sonnet-4"
        ));
        let second = live_events("a", lines[1].as_bytes());
        assert_eq!(second.len(), 2);
        assert!(live_events("a", lines[2].as_bytes()).is_empty());
        assert!(assistant_text(STREAM.as_bytes()).contains("Looking.\n[tool Bash"));
    }

    #[test]
    fn garbage_is_named_by_its_line() {
        let e = read_stream(b"{\"type\":\"system\"}\nnot json\n").unwrap_err();
        assert!(e.contains("line 2 is not JSON"), "{e}");
    }

    #[test]
    fn bare_words_are_never_run() {
        for word in ["update", "install", "mcp", "setup-token", "doctor", "x_1"] {
            assert!(subcommand_like(word), "{word}");
        }
        for prompt in ["/fix a", "update the docs", "--version", "hello?", ""] {
            assert!(!subcommand_like(prompt), "{prompt}");
        }
    }

    #[test]
    fn arguments_are_the_originals() {
        assert_eq!(
            arguments("/x a", true),
            [
                "--output-format",
                "stream-json",
                "--verbose",
                "--dangerously-skip-permissions",
                "/x a"
            ]
        );
        assert_eq!(
            arguments("/x", false),
            ["--print", "--dangerously-skip-permissions", "/x"]
        );
        assert_eq!(
            arguments("--settings={}", false),
            [
                "--print",
                "--dangerously-skip-permissions",
                "--",
                "--settings={}"
            ]
        );
    }
}
