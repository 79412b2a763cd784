//! The git the runner needs, through the `git` command: the base commit, worktrees on
//! branches, an agent's commits, merges.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A git command that failed.
#[derive(Debug, thiserror::Error)]
#[error("git {op} in '{}' failed: {message}", .dir.display())]
pub struct GitError {
    /// What was attempted (`worktree add`, `merge`, …).
    pub op: String,
    /// Where.
    pub dir: std::path::PathBuf,
    /// git's own words (its last line of standard error).
    pub message: String,
    /// True when a merge stopped on conflicts.
    pub conflict: bool,
}

impl crate::hint::Hint for GitError {
    /// git has no typed errors: its own words are read here, where its errors are made.
    fn hint(&self) -> Option<&'static str> {
        let said = |words: &[&str]| words.iter().any(|w| self.message.contains(w));
        if said(&["Needed a single revision"]) {
            Some(
                "the repository has no commit to start from: make one first (`git commit --allow-empty -m init`)",
            )
        } else if said(&[
            "is already used by worktree at",
            "is already checked out at",
        ]) {
            Some(
                "the job's branch is checked out there: switch that worktree to another branch, then retry",
            )
        } else {
            None
        }
    }
}

/// Runs `git -C dir args…`; standard output on success.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    git_env(dir, args, &BTreeMap::new())
}

/// Forgets the registrations of the worktrees in `paths` (or below them) whose directories
/// are gone, as `git worktree prune` forgets a missing worktree, but only these: prune
/// forgets every missing worktree of the repository, a user's on an unmounted disk among
/// them. A locked registration is kept, as prune keeps it.
pub fn forget_worktrees(repo: &Path, paths: &[PathBuf]) -> Result<(), GitError> {
    if paths.is_empty() {
        return Ok(());
    }
    // git records a worktree's real path; the caller's may run through a symlink.
    let real = |p: &Path| {
        std::fs::canonicalize(p).ok().or_else(|| {
            Some(
                std::fs::canonicalize(p.parent()?)
                    .ok()?
                    .join(p.file_name()?),
            )
        })
    };
    let mut ours: Vec<PathBuf> = paths.to_vec();
    ours.extend(paths.iter().filter_map(|p| real(p)));
    let common = repo.join(git(repo, &["rev-parse", "--git-common-dir"])?);
    let Ok(entries) = std::fs::read_dir(common.join("worktrees")) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let admin = entry.path();
        if admin.join("locked").exists() {
            continue;
        }
        let Ok(gitdir) = std::fs::read_to_string(admin.join("gitdir")) else {
            continue;
        };
        let gitdir = Path::new(gitdir.trim());
        if ours.iter().any(|p| gitdir.starts_with(p)) && std::fs::symlink_metadata(gitdir).is_err()
        {
            let _ = std::fs::remove_dir_all(&admin);
        }
    }
    Ok(())
}

/// The worktree of `repo` that has `branch` checked out, if one has (git allows one):
/// `for-each-ref`'s `worktreepath` (git 2.23), one path whatever bytes it holds.
pub fn checked_out_at(repo: &Path, branch: &str) -> Result<Option<PathBuf>, GitError> {
    use std::os::unix::ffi::OsStrExt;
    let refname = format!("refs/heads/{branch}");
    let out = git_bytes(
        repo,
        &["for-each-ref", "--format=%(worktreepath)", &refname],
        &BTreeMap::new(),
    )?;
    let path = out.strip_suffix(b"\n").unwrap_or(&out);
    Ok((!path.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(path))))
}

/// [`git`] with extra environment (the job's, so that `GIT_AUTHOR_NAME` and friends in a
/// workflow's `env` also sign the runner's merge commits).
pub fn git_env(
    dir: &Path,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> Result<String, GitError> {
    let out = git_bytes(dir, args, env)?;
    Ok(String::from_utf8_lossy(&out).trim_end().to_owned())
}

/// Runs `git -C dir args…` with `env`; standard output as bytes on success (file names
/// are bytes), else git's own words.
fn git_bytes(
    dir: &Path,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> Result<Vec<u8>, GitError> {
    let out = Command::new("git")
        .envs(env)
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| GitError {
            op: args.first().copied().unwrap_or("").to_owned(),
            dir: dir.to_owned(),
            message: format!("cannot run git: {e}"),
            conflict: false,
        })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let message = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(GitError {
        op: args.iter().take(2).copied().collect::<Vec<_>>().join(" "),
        dir: dir.to_owned(),
        conflict: stdout.contains("CONFLICT") || stderr.contains("CONFLICT"),
        message: if message.is_empty() {
            format!("exit status {}", out.status)
        } else {
            message
        },
    })
}

/// The commit `HEAD` names in `dir`.
pub fn head(dir: &Path) -> Result<String, GitError> {
    git(dir, &["rev-parse", "--verify", "HEAD^{commit}"])
}

/// True when `commit` is in the repository of `dir`.
pub fn commit_exists(dir: &Path, commit: &str) -> bool {
    git(dir, &["cat-file", "-e", &format!("{commit}^{{commit}}")]).is_ok()
}

/// True when a tracked file in the worktree at `dir` has changes no commit holds (staged
/// or not; untracked files do not count).
pub fn tracked_changes(dir: &Path) -> Result<bool, GitError> {
    git(dir, &["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty())
}

/// True when `branch` exists.
pub fn branch_exists(dir: &Path, branch: &str) -> bool {
    git(
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ],
    )
    .is_ok()
}

/// The worktrees of one repository, changed under one lock: `git worktree add` reads
/// every other worktree's admin directory (to refuse a branch checked out twice) and fails
/// on one that a concurrent `add` or `remove` has half made or half removed. The lock is a
/// mutex inside this process and an OS file lock (in the store's home, never in the
/// repository) between processes, so two jobs of one repository do not race either.
#[derive(Debug, Clone)]
pub struct Worktrees {
    repo: PathBuf,
    lock: PathBuf,
}

static IN_PROCESS: Mutex<()> = Mutex::new(());

struct Guard {
    _file: crate::lock::LockGuard,
    _mutex: MutexGuard<'static, ()>,
}

impl Worktrees {
    /// The worktrees of the repository at `repo`, locked with the file `lock`.
    pub fn new(repo: &Path, lock: &Path) -> Worktrees {
        Worktrees {
            repo: repo.to_owned(),
            lock: lock.to_owned(),
        }
    }

    /// The repository.
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    fn guard(&self) -> Result<Guard, GitError> {
        let mutex = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        let opts = crate::lock::LockOptions {
            timeout: Duration::from_secs(600),
            on_wait: None,
        };
        let file = crate::lock::lock(&self.lock, crate::lock::LockMode::Exclusive, &opts).map_err(
            |e| GitError {
                op: "worktree lock".into(),
                dir: self.repo.clone(),
                message: e.to_string(),
                conflict: false,
            },
        )?;
        Ok(Guard {
            _file: file,
            _mutex: mutex,
        })
    }

    /// Creates a worktree at `path` on `branch`: checked out as it is when it exists, else
    /// created at `start`.
    pub fn add_on_branch(&self, path: &Path, branch: &str, start: &str) -> Result<(), GitError> {
        let path_s = path.to_string_lossy();
        let _guard = self.guard()?;
        if branch_exists(&self.repo, branch) {
            git(&self.repo, &["worktree", "add", "-q", &path_s, branch])?;
        } else {
            git(
                &self.repo,
                &["worktree", "add", "-q", "-b", branch, &path_s, start],
            )?;
        }
        Ok(())
    }

    /// Creates an agent's worktree at `path`, on a detached `HEAD` at `start`. Only the
    /// registration holds the lock; the files are checked out after it, in parallel with
    /// other agents.
    pub fn add_detached(&self, path: &Path, start: &str) -> Result<(), GitError> {
        {
            let _guard = self.guard()?;
            git(
                &self.repo,
                &[
                    "worktree",
                    "add",
                    "-q",
                    "--no-checkout",
                    "--detach",
                    &path.to_string_lossy(),
                    start,
                ],
            )?;
        }
        git(path, &["reset", "-q", "--hard"]).map(|_| ())
    }

    /// Makes the worktree at `path` (made by [`Self::add_detached`] and [`reusable`] now)
    /// what `add_detached` would make at `start`: untracked and ignored files removed,
    /// tracked files, the index and the detached `HEAD` reset. Two git processes and no
    /// file written that is already right, where a new worktree checks out every file.
    /// No lock: only this worktree's own files change.
    pub fn reset_detached(&self, path: &Path, start: &str) -> Result<(), GitError> {
        git(path, &["clean", "-q", "-ffdx"])?;
        git(path, &["reset", "-q", "--hard", start]).map(|_| ())
    }

    /// Moves the worktree at `from` to `to` (its registration too), under the lock.
    pub fn move_to(&self, from: &Path, to: &Path) -> Result<(), GitError> {
        let _guard = self.guard()?;
        git(
            &self.repo,
            &[
                "worktree",
                "move",
                &from.to_string_lossy(),
                &to.to_string_lossy(),
            ],
        )
        .map(|_| ())
    }

    /// Points `branch` at `commit` (see [`set_branch`]), under the lock.
    pub fn set_branch(&self, branch: &str, commit: &str) -> Result<(), GitError> {
        let _guard = self.guard()?;
        set_branch(&self.repo, branch, commit)
    }

    /// Deletes `branch` (missing is fine), under the lock.
    pub fn delete_branch(&self, branch: &str) {
        if let Ok(_guard) = self.guard() {
            delete_branch(&self.repo, branch);
        }
    }

    /// Removes the worktree at `path` if its directory exists (a half-made one too).
    pub fn remove(&self, path: &Path) {
        if !path.exists() {
            return;
        }
        let Ok(_guard) = self.guard() else { return };
        let r = git(
            &self.repo,
            &[
                "worktree",
                "remove",
                "--force",
                "--force",
                &path.to_string_lossy(),
            ],
        );
        if r.is_err() {
            // Half made (git was killed while adding it): remove it and its registration.
            let _ = std::fs::remove_dir_all(path);
            if path.exists() {
                set_aside(path);
            }
            let _ = forget_worktrees(&self.repo, &[path.to_path_buf()]);
        }
    }

    /// Repairs the registrations of worktrees in `under` (a job's directory) or named
    /// like this job's (`own_name`), then forgets those whose directories are gone. `git
    /// worktree add` locks a registration while it makes it and writes its files one by
    /// one; killed meanwhile, it leaves a lock (`prune` skips locked entries, so the path
    /// stays "already used") or a half-written entry (which makes every later `add` fail
    /// reading it). Locks are removed; a half-written entry is removed with its directory.
    pub fn repair(&self, under: &Path, own_name: impl Fn(&str) -> bool) -> Result<(), GitError> {
        let common = self
            .repo
            .join(git(&self.repo, &["rev-parse", "--git-common-dir"])?);
        let _guard = self.guard()?;
        if let Ok(entries) = std::fs::read_dir(common.join("worktrees")) {
            let nonempty = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
            for entry in entries.flatten() {
                let admin = entry.path();
                let gitdir = std::fs::read_to_string(admin.join("gitdir")).ok();
                let ours = match &gitdir {
                    Some(g) => Path::new(g.trim()).starts_with(under),
                    None => own_name(&entry.file_name().to_string_lossy()),
                };
                if !ours {
                    continue;
                }
                let _ = std::fs::remove_file(admin.join("locked"));
                let whole = ["gitdir", "commondir", "HEAD"]
                    .iter()
                    .all(|f| nonempty(&admin.join(f)));
                if !whole {
                    if let Some(g) = &gitdir
                        && let Some(dir) = Path::new(g.trim()).parent()
                        && dir.starts_with(under)
                    {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    let _ = std::fs::remove_dir_all(&admin);
                }
            }
        }
        forget_worktrees(&self.repo, &[under.to_path_buf()])
    }
}

/// Clears what git processes killed with an earlier runner left behind in refs and a
/// worktree only this job's runner touches (the caller holds the job's run lock): lock
/// files on the job's branch and in `agent_refs` (the directory of its agents' branches),
/// and in the job's worktree any top-level `*.lock` (`index.lock`, `AUTO_MERGE.lock`, …)
/// or an unfinished merge, which is undone (`git reset --merge`, as `merge --abort` does)
/// so that the next step starts from the last commit.
pub fn recover(
    repo: &Path,
    branch: &str,
    agent_refs: &str,
    worktree: &Path,
) -> Result<(), GitError> {
    let common = repo.join(git(repo, &["rev-parse", "--git-common-dir"])?);
    let _ = std::fs::remove_file(common.join(format!("refs/heads/{branch}.lock")));
    remove_locks(&common.join("refs/heads").join(agent_refs));
    if !worktree.join(".git").exists() {
        return Ok(());
    }
    let gitdir = worktree.join(git(worktree, &["rev-parse", "--git-dir"])?);
    let interrupted = remove_locks(&gitdir);
    if (gitdir.join("MERGE_HEAD").exists() || interrupted)
        && git(worktree, &["reset", "-q", "--merge", "HEAD"]).is_err()
    {
        git(worktree, &["reset", "-q", "--hard", "HEAD"])?;
    }
    Ok(())
}

/// Removes the `*.lock` files directly in `dir`; true if there were any.
fn remove_locks(dir: &Path) -> bool {
    let mut found = false;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".lock")
                && std::fs::remove_file(e.path()).is_ok()
            {
                found = true;
            }
        }
    }
    found
}

/// What changed from commit `from` to `to` (`${step.*}`, `${workflow.*}`, `outputs:`):
/// files added, modified and deleted (no rename detection: a rename is a deletion and an
/// addition), the commits between, lines added and removed.
pub fn changes(
    dir: &Path,
    from: &str,
    to: &str,
) -> Result<crate::workflow::template::Changes, GitError> {
    let mut c = crate::workflow::template::Changes::default();
    let status = git(
        dir,
        &["diff", "--name-status", "-z", "--no-renames", from, to],
    )?;
    let mut fields = status.split('\0').filter(|f| !f.is_empty());
    while let (Some(kind), Some(path)) = (fields.next(), fields.next()) {
        let list = match kind.chars().next() {
            Some('A') => &mut c.added,
            Some('D') => &mut c.deleted,
            _ => &mut c.modified,
        };
        list.push(path.to_owned());
    }
    for list in [&mut c.added, &mut c.modified, &mut c.deleted] {
        list.sort();
    }
    let range = format!("{from}..{to}");
    c.commits = git(dir, &["rev-list", "--reverse", &range])?
        .lines()
        .map(str::to_owned)
        .collect();
    for line in git(dir, &["diff", "--numstat", from, to])?.lines() {
        let mut cols = line.split('\t');
        let (Some(a), Some(d)) = (cols.next(), cols.next()) else {
            continue;
        };
        c.insertions += a.parse::<u64>().unwrap_or(0);
        c.deletions += d.parse::<u64>().unwrap_or(0);
    }
    Ok(c)
}

/// Moves a directory nothing could delete (a file in it its owner may not remove, an
/// immutable one) out of the way, to `.<name>.removed-<time>` beside it, so that its path
/// can be used again: a worker's worktree is made there for its next agent.
fn set_aside(path: &Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = parent.join(format!(".{}.removed-{nanos}", name.to_string_lossy()));
    let _ = std::fs::rename(path, aside);
}

/// A worktree's own git directory (`<common>/worktrees/<name>`), read from its `.git` file
/// and checked against the directory's pointer back to the worktree (the same file, by
/// device and inode: git writes the real path, which a symlink in the home's differs from).
fn admin_dir(worktree: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dotgit_path = worktree.join(".git");
    let dotgit = std::fs::read_to_string(&dotgit_path).ok()?;
    let admin = PathBuf::from(dotgit.strip_prefix("gitdir:")?.trim());
    let back = std::fs::read_to_string(admin.join("gitdir")).ok()?;
    let (a, b) = (
        std::fs::metadata(back.trim()).ok()?,
        std::fs::metadata(&dotgit_path).ok()?,
    );
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(admin)
}

/// The commit a worktree's detached `HEAD` names, read from its files (no git process).
pub fn detached_head(worktree: &Path) -> Option<String> {
    head_in(&admin_dir(worktree)?)
}

/// The commit `HEAD` names in a worktree's own git directory, if it is detached.
fn head_in(admin: &Path) -> Option<String> {
    let head = std::fs::read_to_string(admin.join("HEAD")).ok()?;
    let head = head.trim();
    (head.len() >= 40 && head.bytes().all(|b| b.is_ascii_hexdigit())).then(|| head.to_owned())
}

/// Whether the worktree at `path` may be reset for another agent
/// ([`Worktrees::reset_detached`]): it is registered as the one there, its `HEAD` is
/// detached (a reset would move a branch) and git has no operation in progress in it
/// (a merge, rebase, cherry-pick, revert or bisect, which a reset does not end).
pub fn reusable(path: &Path) -> bool {
    let Some(admin) = admin_dir(path) else {
        return false;
    };
    head_in(&admin).is_some()
        && [
            "MERGE_HEAD",
            "CHERRY_PICK_HEAD",
            "REVERT_HEAD",
            "BISECT_LOG",
            "rebase-merge",
            "rebase-apply",
            "sequencer",
            "index.lock",
        ]
        .iter()
        .all(|f| !admin.join(f).exists())
}

/// The commits on `HEAD` since `base`, oldest first.
pub fn commits_since(dir: &Path, base: &str) -> Result<Vec<String>, GitError> {
    if detached_head(dir).as_deref() == Some(base) {
        return Ok(Vec::new());
    }
    let out = git(dir, &["rev-list", "--reverse", &format!("{base}..HEAD")])?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// The trailer a squashed agent's commit carries, naming the agent's last commit: how a
/// resume tells that the squash already happened (the commit is not in `HEAD`'s history).
pub const SQUASHED: &str = "Prodigy-Squashed-Commit";

/// Squashes `commit`'s changes into one new commit in the worktree at `dir` (`map.merge:
/// squash`), its message `message` with the [`SQUASHED`] trailer. A conflict leaves the
/// worktree for the caller to restore (the error says `conflict`). Changes already there
/// (a squash done before a crash) make no commit.
pub fn squash(
    dir: &Path,
    commit: &str,
    message: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), GitError> {
    git_env(dir, &["merge", "--squash", "--no-commit", commit], env)?;
    if git(dir, &["diff", "--cached", "--quiet"]).is_ok() {
        return Ok(());
    }
    let message = format!("{message}\n\n{SQUASHED}: {commit}");
    git_env(dir, &["commit", "-q", "--no-verify", "-m", &message], env).map(|_| ())
}

/// True when a commit of `HEAD`'s history says it squashed `commit`.
pub fn is_squashed(dir: &Path, commit: &str) -> bool {
    git(
        dir,
        &[
            "log",
            "-1",
            "--format=%H",
            "--fixed-strings",
            &format!("--grep={SQUASHED}: {commit}"),
        ],
    )
    .is_ok_and(|out| !out.trim().is_empty())
}

/// True when `commit` is already in `HEAD`'s history.
pub fn is_merged(dir: &Path, commit: &str) -> bool {
    git(dir, &["merge-base", "--is-ancestor", commit, "HEAD"]).is_ok()
}

/// Merges `commit` into the worktree at `dir`; on a conflict the merge is aborted and the
/// error says so. A merge that stops half-way (killed, or a full disk) can leave files
/// git wrote but never recorded: the caller records what was untracked before
/// ([`untracked`]) and puts the worktree back with [`restore`].
pub fn merge(
    dir: &Path,
    commit: &str,
    message: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), GitError> {
    let args = ["merge", "--no-edit", "-m", message, commit];
    git_env(dir, &args, env).map(|_| ()).inspect_err(|_| {
        let _ = git(dir, &["merge", "--abort"]);
    })
}

/// True when `older` is an ancestor of (or the same as) `newer`.
pub fn is_ancestor(dir: &Path, older: &str, newer: &str) -> bool {
    git(dir, &["merge-base", "--is-ancestor", older, newer]).is_ok()
}

/// True while a merge is under way in the worktree at `dir` (`MERGE_HEAD` exists).
pub fn in_merge(dir: &Path) -> bool {
    git(dir, &["rev-parse", "-q", "--verify", "MERGE_HEAD"]).is_ok()
}

/// The untracked files in the worktree at `dir` that git does not ignore (the ones a
/// merge refuses to overwrite), relative to `dir`, as bytes of their names.
pub fn untracked(dir: &Path) -> Result<BTreeSet<PathBuf>, GitError> {
    let args = ["ls-files", "-z", "--others", "--exclude-standard"];
    Ok(git_bytes(dir, &args, &BTreeMap::new())?
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(std::ffi::OsStr::from_bytes(name)))
        .collect())
}

/// Brings the worktree at `dir` back to its `HEAD`: the index and every tracked file as
/// `HEAD` has them, and every untracked file not in `keep` removed (with the directories
/// that held only such files). What a merge stopped half-way wrote is gone; what job
/// steps left untracked before it (`keep`) stays.
pub fn restore(dir: &Path, keep: &BTreeSet<PathBuf>) -> Result<(), GitError> {
    git(dir, &["reset", "-q", "--hard", "HEAD"])?;
    for file in untracked(dir)?.difference(keep) {
        let path = dir.join(file);
        std::fs::remove_file(&path).map_err(|e| GitError {
            op: "restore".into(),
            dir: dir.to_owned(),
            message: format!("cannot remove '{}': {e}", path.display()),
            conflict: false,
        })?;
        // Directories the merge made for the file, up to the first one that holds more.
        let mut parent = path.parent();
        while let Some(p) = parent.filter(|p| *p != dir && p.starts_with(dir)) {
            if std::fs::remove_dir(p).is_err() {
                break;
            }
            parent = p.parent();
        }
    }
    Ok(())
}

/// Points `branch` at `commit`. The branch is the caller's alone (an agent's, under the
/// job's run lock), so a lock file left on it by a git process killed with an earlier
/// runner is stale: it is removed and the update tried once more.
///
/// Called on [`Worktrees`] because git reads every worktree's `HEAD` to refuse a branch
/// checked out elsewhere: beside a `worktree add` writing one, it failed ("failed to read
/// …: Success").
fn set_branch(repo: &Path, branch: &str, commit: &str) -> Result<(), GitError> {
    let args = ["branch", "-f", branch, commit];
    match git(repo, &args) {
        Ok(_) => Ok(()),
        Err(e) => {
            let suffix = format!("refs/heads/{branch}.lock");
            let stale = e
                .message
                .split('\'')
                .find(|p| p.ends_with(&suffix) && Path::new(p).is_absolute());
            match stale {
                Some(lock) => {
                    let _ = std::fs::remove_file(lock);
                    git(repo, &args).map(|_| ())
                }
                None => Err(e),
            }
        }
    }
}

/// Deletes a branch (missing is fine); on [`Worktrees`] for the reason of [`set_branch`].
fn delete_branch(repo: &Path, branch: &str) {
    let _ = git(repo, &["branch", "-q", "-D", branch]);
}
