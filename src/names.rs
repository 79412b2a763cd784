//! Validation of the names that become path components: repo names, job ids, agent ids.
//!
//! Every name that reaches the file system passes [`validate`] first, so a hostile id
//! (`..`, `a/b`, an absolute path, NUL, 200 characters) is refused before any file is touched.

use std::fmt;

/// The rule every name follows, as shown in error messages.
pub const NAME_RULE: &str = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}, not ending in .lock or .tmp";

/// The longest name allowed, in bytes (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// A name that cannot be used as a path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {shown}: {reason}", shown = Shown(.name))]
pub struct NameError {
    /// What the name was for: "repo name", "job id", "agent id", ….
    pub what: &'static str,
    /// The refused name, as given.
    pub name: String,
    /// Why it was refused.
    pub reason: String,
}

/// Quotes a name for an error message, escaping control characters and eliding long ones.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        let head: String = chars.by_ref().take(40).collect();
        let more = chars.count();
        if more == 0 {
            write!(f, "{head:?}")
        } else {
            write!(f, "{head:?}… ({} characters)", self.0.chars().count())
        }
    }
}

/// Checks that `name` may be used as one path component; `what` names it in the error.
pub fn validate(what: &'static str, name: &str) -> Result<(), NameError> {
    let refuse = |reason: String| {
        Err(NameError {
            what,
            name: name.to_owned(),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return refuse("it is empty".into());
    };
    if name.len() > MAX_NAME_LEN {
        return refuse(format!(
            "it is {} bytes long, the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if !first.is_ascii_alphanumeric() {
        return refuse(format!(
            "it must start with a letter or digit, not {first:?}"
        ));
    }
    if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
        return refuse(format!(
            "it contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if name.ends_with(".lock") || name.ends_with(".tmp") {
        return refuse("it must not end in .lock or .tmp".into());
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Turns any directory basename into a valid name: disallowed characters become `-`,
/// leading punctuation is dropped, a `.lock`/`.tmp` ending becomes `-lock`/`-tmp`, and the
/// result is cut to `max_len` bytes. An empty result becomes `repo`.
pub fn sanitize(raw: &str, max_len: usize) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| if is_name_char(c) { c } else { '-' })
        .collect();
    let mut name: String = mapped
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(max_len)
        .collect();
    for suffix in [".lock", ".tmp"] {
        if name.ends_with(suffix) {
            name.truncate(name.len() - suffix.len());
            name.push('-');
            name.push_str(&suffix[1..]);
            name.truncate(max_len);
        }
    }
    if name.is_empty() {
        name.push_str("repo");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["api", "mr-1", "a", "A.b_c-d", "0", &"x".repeat(128)] {
            assert_eq!(validate("job id", ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_hostile_names() {
        let long = "y".repeat(200);
        for bad in [
            "", "..", ".", "../x", "a/b", "/etc", "a\0b", "-x", "_x", "x.lock", "x.tmp", "a b",
            "é", &long,
        ] {
            let err = validate("job id", bad).unwrap_err();
            assert!(err.to_string().starts_with("invalid job id "), "{err}");
            assert!(!err.to_string().contains('\n'));
        }
        let err = validate("job id", &long).unwrap_err().to_string();
        assert!(err.contains("(200 characters)") && err.len() < 200, "{err}");
        let nul = validate("job id", "a\0b").unwrap_err().to_string();
        assert!(nul.contains("\\0"), "{nul}");
    }

    #[test]
    fn sanitize_always_gives_a_valid_name() {
        for raw in [
            "my project",
            ".hidden",
            "x.lock",
            "..",
            "",
            "ünïcode",
            &"z".repeat(300),
        ] {
            let name = sanitize(raw, 119);
            assert_eq!(validate("repo name", &name), Ok(()), "{raw:?} -> {name:?}");
        }
        assert_eq!(sanitize("my project", 119), "my-project");
        assert_eq!(sanitize("x.lock", 119), "x-lock");
    }
}
