//! The directory API of the original tool's spec: where a repository's events, DLQs and
//! job state live in the global store (the default home, see [`Home::from_env`]).

use std::path::PathBuf;

use crate::home::{Home, HomeError};
use crate::names::{self, NameError};
use crate::refs::RefKind;

/// Failures of the directory API.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No home could be found.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The repo name is not a valid path component.
    #[error(transparent)]
    Name(#[from] NameError),
}

fn kind_dir(kind: RefKind, repo: &str) -> Result<PathBuf, StorageError> {
    names::validate("repo name", repo)?;
    Ok(Home::from_env()?.kind_dir(kind.as_str()).join(repo))
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
