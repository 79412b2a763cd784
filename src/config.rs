//! `config.json` in the home: the settings that belong to the store rather than to one
//! command. `{"retention": {"default": POLICY, "repos": {"api": POLICY}}, "gc":
//! {"reflog_expire": "90d"}}`, a retention policy being `{"max_age": "30d", "max_events":
//! 100000, "max_size": "512MiB", "archive": true, "auto": true}`.
//!
//! No file means the defaults: no retention limits (nothing is removed unless asked), and
//! reflog entries expire after 90 days, as git's `gc.reflogExpire`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::home::Home;

/// A `config.json` that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("cannot use config '{}': {reason}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

impl crate::hint::Hint for ConfigError {
    fn hint(&self) -> Option<&'static str> {
        Some("fix or remove the home's config.json (its format: docs/retention-and-gc.md)")
    }
}

/// The home's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Retention policies.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// gc settings.
    #[serde(default)]
    pub gc: GcConfig,
    /// A remote store for the objects and refs (`s3://bucket/prefix`); see
    /// [`crate::storage::attach_store`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// The `retention` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// The policy of repositories not named in `repos`.
    #[serde(default)]
    pub default: Retention,
    /// Policies by repo name.
    #[serde(default)]
    pub repos: std::collections::BTreeMap<String, Retention>,
}

/// Reflog entries older than this are dropped by gc, 90 days unless set.
pub const DEFAULT_REFLOG_EXPIRE: Duration = Duration::from_secs(90 * 24 * 3600);

/// The `gc` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Reflog entries older than this are dropped by gc, so what only they named can be
    /// collected (a ref's value is a root of its own): `"90d"`, `"now"`, or `"never"`
    /// (`None`).
    #[serde(default = "default_reflog_expire", with = "expiry")]
    pub reflog_expire: Option<Duration>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            reflog_expire: default_reflog_expire(),
        }
    }
}

fn default_reflog_expire() -> Option<Duration> {
    Some(DEFAULT_REFLOG_EXPIRE)
}

impl Config {
    /// Reads `config.json` from `home` (absent: the defaults).
    pub fn load(home: &Home) -> Result<Config, ConfigError> {
        let path = home.root().join("config.json");
        let error = |reason: String| ConfigError {
            path: path.clone(),
            reason,
        };
        match crate::fsutil::read_nofollow(&path) {
            Ok(bytes) => {
                json_object(&bytes).map_err(error)?;
                // Parsed again from the text, so that an error names its line and column.
                serde_json::from_slice(&bytes).map_err(|e| error(e.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(error(e.to_string())),
        }
    }

    /// The retention policy of `repo`.
    pub fn policy(&self, repo: &str) -> &Retention {
        self.retention
            .repos
            .get(repo)
            .unwrap_or(&self.retention.default)
    }
}

/// `config.json`'s text as a JSON object. Anything else is refused: serde reads a struct
/// from an array by position, so `[{}, {"reflog_expire": "now"}]` would set gc's expiry.
fn json_object(bytes: &[u8]) -> Result<serde_json::Value, String> {
    match serde_json::from_slice(bytes).map_err(|e| e.to_string())? {
        value @ serde_json::Value::Object(_) => Ok(value),
        other => Err(format!(
            "the settings must be a JSON object ({{\"retention\": …, \"gc\": …, \"store\": …}}), not {}",
            kind_of(&other)
        )),
    }
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Just the `store` setting of `config.json`, read on every command: a mistake elsewhere in
/// the file is reported by the commands that use that part, but a file that is not JSON,
/// or a `store` that is not a string, is an error here (guessing the local store could
/// send writes to the wrong place).
pub fn store_setting(home: &Home) -> Result<Option<String>, ConfigError> {
    let path = home.root().join("config.json");
    let error = |reason: String| ConfigError {
        path: path.clone(),
        reason,
    };
    let bytes = match crate::fsutil::read_nofollow(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(e.to_string())),
    };
    let value = json_object(&bytes).map_err(error)?;
    match value.get("store") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(url)) => Ok(Some(url.clone())),
        Some(other) => Err(error(format!(
            "\"store\" must be an address such as \"s3://bucket/prefix\", not {other}"
        ))),
    }
}

/// Parses a reflog expiry: `never`, `now`, or a duration (`90d`, `12h`).
pub fn parse_expiry(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "never" => Ok(None),
        "now" => Ok(Some(Duration::ZERO)),
        t => humantime::parse_duration(t)
            .map(Some)
            .map_err(|e| format!("bad expiry {text:?} ({e}; examples: 90d, 12h, now, never)")),
    }
}

mod expiry {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_str("never"),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_expiry(&text).map_err(serde::de::Error::custom)
    }
}

/// A retention policy; `None` limits nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Drop events older than this (`30d`, `12h`).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Keep at most this many of the newest events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u64>,
    /// Keep at most this many bytes of the newest events (JSON Lines, uncompressed).
    #[serde(default, with = "opt_size", skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// Move what goes to the job's archive log instead of dropping it.
    #[serde(default)]
    pub archive: bool,
    /// Apply the policy to a job's log when the runner completes the job.
    #[serde(default)]
    pub auto: bool,
}

impl Retention {
    /// True when the policy limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.max_age.is_none() && self.max_events.is_none() && self.max_size.is_none()
    }
}

/// Parses a size: `500`, `10K`, `10KB`, `10KiB`, `5M`, `1G` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {text:?} (examples: 500, 10K, 5MB, 1GiB)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("bad size {text:?} (examples: 500, 10K, 5MB, 1GiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

pub(crate) mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(t.trim()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod opt_size {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => s.serialize_u64(*n),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            N(u64),
            Text(String),
        }
        match Option::<Size>::deserialize(d)? {
            None => Ok(None),
            Some(Size::N(n)) => Ok(Some(n)),
            Some(Size::Text(t)) => super::parse_size(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflog_expiry_defaults_to_90_days_and_reads_never_and_now() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c.gc.reflog_expire, Some(DEFAULT_REFLOG_EXPIRE));
        let c: Config = serde_json::from_str(r#"{"gc":{"reflog_expire":"never"}}"#).unwrap();
        assert_eq!(c.gc.reflog_expire, None);
        let c: Config = serde_json::from_str(r#"{"gc":{"reflog_expire":"now"}}"#).unwrap();
        assert_eq!(c.gc.reflog_expire, Some(Duration::ZERO));
        assert!(serde_json::from_str::<Config>(r#"{"gc":{"reflog_expire":"soon"}}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"gc":{"typo":"1d"}}"#).is_err());
    }
}
