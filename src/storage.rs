//! Where the store is: the default home (`PRODIGY_HOME`, else `~/.prodigy`), the deprecated
//! repo-local store (`PRODIGY_USE_LOCAL_STORAGE=true`, DESIGN.md §11) and the fallback to it
//! when the global home cannot be created; and the directory API of the original tool's
//! spec (where a repository's events, DLQs and job state live).

use std::path::{Path, PathBuf};

use crate::home::{HOME_ENV, Home, HomeError};
use crate::names::{self, NameError};
use crate::repo::{self, RepoError};
use crate::store::refs::RefKind;

/// The environment variable that keeps the store in `<repo>/.prodigy` (deprecated).
pub const LOCAL_STORAGE_ENV: &str = "PRODIGY_USE_LOCAL_STORAGE";

/// The directory of a repo-local store (and of the original tool's runtime data).
pub const LOCAL_DIR: &str = ".prodigy";

/// Failures of the directory API.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No home could be found.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The repo name is not a valid path component.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The repository of the current directory could not be found (local store).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The current directory is unknown.
    #[error("cannot read the current directory")]
    Cwd(#[source] std::io::Error),
    /// `config.json` cannot be read (it may name the store).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl crate::hint::Hint for StorageError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            StorageError::Repo(e) => e.hint(),
            StorageError::Config(e) => e.hint(),
            StorageError::Cwd(e) => crate::hint::of_io(e),
            StorageError::Home(_) | StorageError::Name(_) => None,
        }
    }
}

/// How the home was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeSource {
    /// `PRODIGY_HOME`.
    Env,
    /// `~/.prodigy`.
    Default,
    /// `PRODIGY_USE_LOCAL_STORAGE=true`: `<repo>/.prodigy` (deprecated).
    Local,
    /// The global home could not be created, so `<repo>/.prodigy` is used.
    Fallback {
        /// The global home that was wanted.
        wanted: Option<PathBuf>,
        /// Why it could not be used.
        reason: String,
    },
}

/// A home and how it was chosen (the front end says so for the local kinds).
#[derive(Debug, Clone)]
pub struct ChosenHome {
    /// The home.
    pub home: Home,
    /// Why this one.
    pub source: HomeSource,
}

/// True when `PRODIGY_USE_LOCAL_STORAGE` asks for the repo-local store (`true`, `1`, `yes`).
pub fn local_storage_requested() -> bool {
    std::env::var(LOCAL_STORAGE_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        )
    })
}

/// The repo-local store of the repository holding `cwd`: `<main repository root>/.prodigy`
/// (every worktree of a repository shares it).
pub fn local_home(cwd: &Path) -> Result<Home, StorageError> {
    let root = repo::locate(cwd)?.root;
    Ok(Home::at(root.join(LOCAL_DIR))?)
}

/// Chooses the home for a process running in `cwd`: `PRODIGY_USE_LOCAL_STORAGE=true` →
/// `<repo>/.prodigy`; else `PRODIGY_HOME`; else `~/.prodigy`, created if missing — and when
/// there is no home directory or `~/.prodigy` cannot be created, `<repo>/.prodigy`.
/// An explicit `PRODIGY_HOME` never falls back: the user named it.
pub fn choose_home(cwd: &Path) -> Result<ChosenHome, StorageError> {
    if local_storage_requested() {
        return Ok(ChosenHome {
            home: local_home(cwd)?,
            source: HomeSource::Local,
        });
    }
    if std::env::var_os(HOME_ENV).is_some_and(|d| !d.is_empty()) {
        return Ok(ChosenHome {
            home: Home::from_env()?,
            source: HomeSource::Env,
        });
    }
    let fallback = |wanted: Option<PathBuf>, reason: String| -> Result<ChosenHome, StorageError> {
        Ok(ChosenHome {
            home: local_home(cwd)?,
            source: HomeSource::Fallback { wanted, reason },
        })
    };
    let Some(user_home) = std::env::home_dir() else {
        return fallback(None, "no home directory is known (HOME is not set)".into());
    };
    let wanted = user_home.join(LOCAL_DIR);
    match std::fs::create_dir_all(&wanted) {
        Ok(()) => Ok(ChosenHome {
            home: Home::at(&wanted)?,
            source: HomeSource::Default,
        }),
        Err(e) => {
            let reason = format!("cannot create '{}': {e}", wanted.display());
            fallback(Some(wanted), reason)
        }
    }
}

/// The home library calls use: [`choose_home`] for the current directory, with the store
/// of [`attach_store`].
pub fn default_home() -> Result<Home, StorageError> {
    let cwd = std::env::current_dir().map_err(StorageError::Cwd)?;
    attach_store(choose_home(&cwd)?.home, None)
}

/// Where the objects and refs of `home` live: `flag` (`--store`), else `PRODIGY_STORE`,
/// else `config.json`'s `store`, else the home itself. An empty value (`--store ""`,
/// `PRODIGY_STORE=`) means the home itself, overriding what comes after it.
pub fn attach_store(home: Home, flag: Option<String>) -> Result<Home, StorageError> {
    let chosen = match flag {
        Some(url) => Some(url),
        None => match std::env::var(crate::store::STORE_ENV) {
            Ok(url) => Some(url),
            Err(_) => crate::config::store_setting(&home)?,
        },
    };
    Ok(home.with_store(chosen))
}

fn kind_dir(kind: RefKind, repo: &str) -> Result<PathBuf, StorageError> {
    names::validate("repo name", repo)?;
    Ok(default_home()?.kind_dir(kind.as_str()).join(repo))
}

/// `<home>/events/<repo>`: the event-log refs of every job of `repo`.
pub fn get_global_events_dir(repo: &str) -> Result<PathBuf, StorageError> {
    kind_dir(RefKind::Events, repo)
}

/// `<home>/dlq/<repo>`: the dead-letter-queue refs of every job of `repo`.
pub fn get_global_dlq_dir(repo: &str) -> Result<PathBuf, StorageError> {
    kind_dir(RefKind::Dlq, repo)
}

/// `<home>/state/<repo>`: the checkpoint refs of every job of `repo`.
pub fn get_global_state_dir(repo: &str) -> Result<PathBuf, StorageError> {
    kind_dir(RefKind::State, repo)
}

pub use crate::repo::extract_repo_name;
