//! Settings read from the process environment that are durations (`PRODIGY_LOCK_TIMEOUT`,
//! `PRODIGY_KILL_GRACE`): one reader, one message. A leaf: it imports nothing of the crate.

use std::time::Duration;

/// The duration the variable `name` gives (`30s`, `500ms`, `2m`), `None` when it is unset,
/// or an error naming it and its value.
pub fn duration(name: &str) -> Result<Option<Duration>, String> {
    let Some(v) = std::env::var_os(name) else {
        return Ok(None);
    };
    match v.to_str().map(|v| humantime::parse_duration(v.trim())) {
        Some(Ok(d)) => Ok(Some(d)),
        _ => Err(format!(
            "{name}={:?} is not a duration (give one such as 30s, 500ms or 2m)",
            v.to_string_lossy()
        )),
    }
}
