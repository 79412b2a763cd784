//! Repository names (DESIGN.md §3): every worktree of one repository maps to one name, two
//! different repositories with one basename get distinct names, and a moved repository
//! keeps its name. `repos/<name>.json` records the identity behind each name.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fsutil::{self, FsError, IoContext};
use crate::home::Home;
use crate::names::{self, NameError};

/// Failures of repository naming.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A file-system operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A name that is not a valid path component.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A `.git` file that does not say where the repository is.
    #[error("cannot understand the git file '{}': {reason}", path.display())]
    BadGitFile {
        /// The `.git` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `repos/<name>.json` record that cannot be read.
    #[error("the repo record '{}' is corrupt: {reason}", path.display())]
    BadRecord {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Every candidate name is taken by another repository.
    #[error("no free repo name for '{}': {name} and its hashed form are taken", root.display())]
    NoFreeName {
        /// The repository root.
        root: PathBuf,
        /// The base name.
        name: String,
    },
}

impl crate::hint::Hint for RepoError {
    fn hint(&self) -> Option<&'static str> {
        match self {
            RepoError::Fs(e) => e.hint(),
            RepoError::BadRecord { .. } => Some(crate::hint::DAMAGED),
            RepoError::Name(_) | RepoError::BadGitFile { .. } | RepoError::NoFreeName { .. } => {
                None
            }
        }
    }
}

/// Where a path lives: the root of its main repository, or itself outside git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoLocation {
    /// The canonical root of the main repository (for a linked worktree, the repository it
    /// belongs to), or the canonical path itself outside git.
    pub root: PathBuf,
    /// True when `root` is a git repository.
    pub is_git: bool,
}

impl RepoLocation {
    /// The name this location would have with no collision: its basename, made valid.
    pub fn base_name(&self) -> String {
        let raw = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let raw = raw
            .strip_suffix(".git")
            .filter(|s| !s.is_empty())
            .unwrap_or(&raw);
        names::sanitize(raw, names::MAX_NAME_LEN - 9)
    }

    /// The name used when the base name belongs to another repository:
    /// `<base>-<8 hex of blake3(root)>`.
    pub fn hashed_name(&self) -> String {
        let hash = blake3::hash(self.root.as_os_str().as_encoded_bytes());
        format!("{}-{}", self.base_name(), &hash.to_hex()[..8])
    }
}

/// Finds the repository `path` belongs to (see [`RepoLocation`]).
pub fn locate(path: &Path) -> Result<RepoLocation, RepoError> {
    let canonical = fs::canonicalize(path).at("resolve", path)?;
    let start = if canonical.is_dir() {
        canonical.clone()
    } else {
        canonical
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| canonical.clone())
    };
    for dir in start.ancestors() {
        let dot_git = dir.join(".git");
        let meta = match fs::symlink_metadata(&dot_git) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(FsError::new("inspect", dot_git, e).into()),
        };
        let root = if meta.is_file() {
            main_root_from_git_file(dir, &dot_git)?
        } else {
            dir.to_path_buf()
        };
        return Ok(RepoLocation { root, is_git: true });
    }
    Ok(RepoLocation {
        root: canonical,
        is_git: false,
    })
}

/// A `.git` file says `gitdir: <dir>`. In a linked worktree that directory has a
/// `commondir` naming the main repository's git directory, whose parent is the main root.
/// Without `commondir` (a submodule, `--separate-git-dir`), the worktree is its own root.
fn main_root_from_git_file(worktree: &Path, dot_git: &Path) -> Result<PathBuf, RepoError> {
    let bad = |reason: String| RepoError::BadGitFile {
        path: dot_git.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(dot_git).at("read", dot_git)?;
    let gitdir = text
        .lines()
        .find_map(|l| l.strip_prefix("gitdir:"))
        .map(str::trim)
        .ok_or_else(|| bad("no 'gitdir:' line".into()))?;
    let gitdir = worktree.join(gitdir);
    let commondir_file = gitdir.join("commondir");
    let common = match fs::read_to_string(&commondir_file) {
        Ok(text) => gitdir.join(text.trim()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(worktree.to_path_buf()),
        Err(e) => return Err(FsError::new("read", commondir_file, e).into()),
    };
    let common = fs::canonicalize(&common).at("resolve", &common)?;
    match common.file_name() {
        Some(n) if n == ".git" => Ok(common.parent().map(Path::to_path_buf).unwrap_or(common)),
        // A bare main repository: the git directory is the repository.
        _ => Ok(common),
    }
}

/// The git worktree `path` is in: the innermost directory holding a `.git` (for a linked
/// worktree, the worktree itself, not its main repository).
pub fn worktree_root(path: &Path) -> Option<PathBuf> {
    let canonical = fs::canonicalize(path).ok()?;
    canonical
        .ancestors()
        .find(|dir| fs::symlink_metadata(dir.join(".git")).is_ok())
        .map(Path::to_path_buf)
}

/// The name `path` maps to before any collision handling: the basename of its main
/// repository's root (or of itself outside git), made a valid name. This is what every
/// worktree of one repository shares; [`resolve_repo_name`] adds the identity check.
pub fn extract_repo_name(path: &Path) -> Result<String, RepoError> {
    Ok(locate(path)?.base_name())
}

/// The identity recorded behind a repo name in `repos/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepoRecord {
    /// The name.
    pub name: String,
    /// The canonical root of the repository.
    pub root: PathBuf,
    /// The root commits of its history (sorted; empty outside git or before the first
    /// commit). A moved repository is recognised by these.
    pub root_commits: Vec<String>,
}

fn record_path(home: &Home, name: &str) -> PathBuf {
    home.repos_dir().join(format!("{name}.json"))
}

/// Reads `repos/<name>.json`; `None` when absent.
pub fn read_record(home: &Home, name: &str) -> Result<Option<RepoRecord>, RepoError> {
    let path = record_path(home, name);
    let bytes = match fsutil::read_nofollow(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FsError::new("read", path, e).into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RepoError::BadRecord {
            path,
            reason: e.to_string(),
        })
}

/// Every record in `repos/`, sorted by name. Unreadable records are errors.
pub fn list_records(home: &Home) -> Result<Vec<RepoRecord>, RepoError> {
    let dir = home.repos_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("list", dir, e).into()),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.at("list", &dir)?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_suffix(".json")
            && let Some(record) = read_record(home, name)?
        {
            records.push(record);
        }
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

/// The root commits of the git repository at `root`, sorted (empty when git is missing or
/// there is no commit yet).
pub fn root_commits(root: &Path) -> Vec<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-list", "--max-parents=0", "HEAD"])
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_COMMON_DIR")
        .env_remove("GIT_INDEX_FILE")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    if !output.status.success() {
        return Vec::new();
    }
    let mut commits: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    commits.sort();
    commits
}

/// The repo name `path` maps to in this home, registering it on first use:
///
/// 1. the name whose record has this root (the base name or its hashed form first, then
///    any record, for a repository renamed in place);
/// 2. else a record sharing a root commit whose root no longer holds a repository (the
///    repository was moved or renamed): that name, with the record updated;
/// 3. else the base name if free, else `<base>-<8 hex>`.
pub fn resolve_repo_name(home: &Home, path: &Path) -> Result<String, RepoError> {
    let location = locate(path)?;
    let candidates = [location.base_name(), location.hashed_name()];
    for name in &candidates {
        if let Some(record) = read_record(home, name)?
            && record.root == location.root
        {
            return Ok(record.name);
        }
    }
    // A renamed repository keeps its record under its old name.
    let records = list_records(home)?;
    if let Some(record) = records.iter().find(|r| r.root == location.root) {
        return Ok(record.name.clone());
    }
    let commits = if location.is_git {
        root_commits(&location.root)
    } else {
        Vec::new()
    };
    if !commits.is_empty() {
        for mut record in records {
            let shares_history = record.root_commits.iter().any(|c| commits.contains(c));
            if shares_history && !holds_repository(&record.root) {
                record.root = location.root.clone();
                record.root_commits = commits;
                write_record(home, &record, true)?;
                return Ok(record.name);
            }
        }
    }
    for name in candidates {
        names::validate("repo name", &name)?;
        let record = RepoRecord {
            name: name.clone(),
            root: location.root.clone(),
            root_commits: commits.clone(),
        };
        match write_record(home, &record, false) {
            Ok(true) => return Ok(name),
            Ok(false) => {}
            // A read-only home records nothing: the first free name is the one this
            // repository would be given, and nothing can be stored under it meanwhile.
            Err(RepoError::Fs(e)) if e.is_read_only() && read_record(home, &name)?.is_none() => {
                return Ok(name);
            }
            Err(e) => return Err(e),
        }
        // Lost a race to another process registering the same repository?
        if read_record(home, &name)?.is_some_and(|r| r.root == location.root) {
            return Ok(name);
        }
    }
    Err(RepoError::NoFreeName {
        name: location.base_name(),
        root: location.root,
    })
}

fn holds_repository(root: &Path) -> bool {
    root.join(".git").exists() || root.join("HEAD").is_file() && root.join("objects").is_dir()
}

/// Writes a record durably: replacing when `replace`, else only if the name is free
/// (returns `false` when taken).
fn write_record(home: &Home, record: &RepoRecord, replace: bool) -> Result<bool, RepoError> {
    let dir = home.repos_dir();
    fsutil::ensure_dir(home.root(), &dir)?;
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| RepoError::BadRecord {
        path: record_path(home, &record.name),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    let path = record_path(home, &record.name);
    if replace {
        fsutil::write_atomic(&path, &dir, &bytes, 0o644)?;
        Ok(true)
    } else {
        Ok(fsutil::create_new_atomic(&path, &dir, &bytes, 0o644)?)
    }
}
