//! Error classification and normalised error signatures, so similar failures group.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What kind of failure an item had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ErrorType {
    /// The agent or a step ran out of time.
    Timeout,
    /// A command exited non-zero.
    CommandFailed {
        /// Its exit code.
        exit_code: i32,
    },
    /// Creating, using or cleaning the agent's worktree failed.
    WorktreeError,
    /// Merging the agent's work failed on a conflict.
    MergeConflict,
    /// The item or the agent's output did not validate.
    ValidationFailed,
    /// Memory, disk, file handles or a rate limit ran out.
    ResourceExhausted,
    /// Anything else.
    Unknown,
}

impl ErrorType {
    /// The type's name without its data: `command_failed`, `timeout`, ….
    pub fn name(&self) -> &'static str {
        match self {
            ErrorType::Timeout => "timeout",
            ErrorType::CommandFailed { .. } => "command_failed",
            ErrorType::WorktreeError => "worktree_error",
            ErrorType::MergeConflict => "merge_conflict",
            ErrorType::ValidationFailed => "validation_failed",
            ErrorType::ResourceExhausted => "resource_exhausted",
            ErrorType::Unknown => "unknown",
        }
    }

    /// Failures that retrying cannot fix without a person: the item or the merge itself
    /// is wrong.
    pub fn needs_a_person(&self) -> bool {
        matches!(self, ErrorType::MergeConflict | ErrorType::ValidationFailed)
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorType::CommandFailed { exit_code } => write!(f, "command_failed({exit_code})"),
            other => f.write_str(other.name()),
        }
    }
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("built-in pattern {pattern:?}: {e}"))
}

static TIMEOUT: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)\btimed?[ -]?out\b|\btimeout\b|deadline exceeded"));
static MERGE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)merge conflict|\bCONFLICT \(|conflict in |automatic merge failed")
});
static RESOURCE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)out of memory|\boom\b|no space left|disk full|enospc|too many open files|resource (temporarily )?(exhausted|unavailable)|rate limit|\b429\b|quota exceeded|cannot allocate memory",
    )
});
static WORKTREE: LazyLock<Regex> = LazyLock::new(|| regex(r"(?i)worktree"));
static VALIDATION: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?i)validation|invalid|schema|malformed|failed to parse|parse error"));

/// Classifies a failure from its message and exit code. Rules, first match wins:
/// timeout (message says timed out / timeout / deadline exceeded, or exit code 124),
/// merge_conflict, resource_exhausted (memory, disk, file handles, rate limits),
/// worktree_error (mentions a worktree), validation_failed (validation, invalid, schema,
/// parse errors), command_failed (any other non-zero exit code), unknown.
pub fn classify(message: &str, exit_code: Option<i32>) -> ErrorType {
    if TIMEOUT.is_match(message) || exit_code == Some(124) {
        ErrorType::Timeout
    } else if MERGE.is_match(message) {
        ErrorType::MergeConflict
    } else if RESOURCE.is_match(message) {
        ErrorType::ResourceExhausted
    } else if WORKTREE.is_match(message) {
        ErrorType::WorktreeError
    } else if VALIDATION.is_match(message) {
        ErrorType::ValidationFailed
    } else if let Some(code) = exit_code.filter(|c| *c != 0) {
        ErrorType::CommandFailed { exit_code: code }
    } else {
        ErrorType::Unknown
    }
}

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
});
static TIME: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?|\b\d{2}:\d{2}:\d{2}(\.\d+)?\b",
    )
});
static PATH: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?:[A-Za-z]:)?(?:\.{0,2}/)?(?:[\w.@+-]+/)+[\w.@+-]+|/[\w.@+-]+"));
static HEX: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)\b(0x)?[0-9a-f]*[a-f][0-9a-f]*[0-9][0-9a-f]*\b|\b(0x)?[0-9a-f]*[0-9][0-9a-f]*[a-f][0-9a-f]*\b",
    )
});
static NUMBER: LazyLock<Regex> = LazyLock::new(|| regex(r"\d+(\.\d+)?"));
static SPACE: LazyLock<Regex> = LazyLock::new(|| regex(r"\s+"));

/// The longest normalised message kept in a signature.
const MAX_SIGNATURE_MESSAGE: usize = 160;

/// Normalises a message so that failures differing only in paths, numbers, hex, uuids or
/// timestamps compare equal: each is replaced by a placeholder (`<path>`, `<n>`, `<hex>`,
/// `<uuid>`, `<time>`), whitespace is collapsed, and the first line only is kept.
pub fn normalize_message(message: &str) -> String {
    let first = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let s = UUID.replace_all(first, "<uuid>");
    let s = TIME.replace_all(&s, "<time>");
    let s = PATH.replace_all(&s, "<path>");
    let s = HEX.replace_all(&s, |c: &regex::Captures<'_>| {
        let m = &c[0];
        if m.len() >= 6 {
            "<hex>".to_owned()
        } else {
            m.to_owned()
        }
    });
    let s = NUMBER.replace_all(&s, "<n>");
    let s = SPACE.replace_all(s.trim(), " ");
    s.chars().take(MAX_SIGNATURE_MESSAGE).collect()
}

/// The signature that groups similar failures: `<error type name>: <normalised message>`.
pub fn signature(error_type: &ErrorType, message: &str) -> String {
    format!("{}: {}", error_type.name(), normalize_message(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(
            classify("agent timed out after 600s", None),
            ErrorType::Timeout
        );
        assert_eq!(classify("whatever", Some(124)), ErrorType::Timeout);
        assert_eq!(
            classify("CONFLICT (content): Merge conflict in src/a.rs", Some(1)),
            ErrorType::MergeConflict
        );
        assert_eq!(
            classify("fatal: No space left on device", Some(1)),
            ErrorType::ResourceExhausted
        );
        assert_eq!(
            classify("API rate limit exceeded (429)", None),
            ErrorType::ResourceExhausted
        );
        assert_eq!(
            classify("failed to create worktree at /x", Some(128)),
            ErrorType::WorktreeError
        );
        assert_eq!(
            classify("schema validation failed: missing field", None),
            ErrorType::ValidationFailed
        );
        assert_eq!(
            classify("cargo test failed", Some(101)),
            ErrorType::CommandFailed { exit_code: 101 }
        );
        assert_eq!(classify("cargo test failed", None), ErrorType::Unknown);
    }

    #[test]
    fn signatures_group_similar_messages() {
        let t = ErrorType::Unknown;
        assert_eq!(
            signature(&t, "file /a/b.rs:12 not found"),
            signature(&t, "file /c/d.rs:99 not found")
        );
        assert_eq!(
            signature(&t, "file /a/b.rs:12 not found"),
            "unknown: file <path>:<n> not found"
        );
        assert_eq!(
            normalize_message(
                "session 4f1c2b3a-1111-4222-8333-123456789abc failed at 2025-01-09T14:32:53.346Z"
            ),
            "session <uuid> failed at <time>"
        );
        assert_eq!(
            normalize_message("commit d588c009f4ac76f7 rejected"),
            "commit <hex> rejected"
        );
        assert_eq!(normalize_message("  line one  \n line two"), "line one");
        assert_ne!(
            signature(&t, "file not found"),
            signature(&t, "permission denied")
        );
        assert_eq!(
            normalize_message("retry after 30 seconds (attempt 2 of 3)"),
            "retry after <n> seconds (attempt <n> of <n>)"
        );
    }
}
