//! The git the runner needs, through the `git` command: the base commit, worktrees on
//! branches, an agent's commits, merges.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

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

/// Runs `git -C dir args…`; standard output on success.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    git_env(dir, args, &BTreeMap::new())
}

/// [`git`] with extra environment (the job's, so that `GIT_AUTHOR_NAME` and friends in a
/// workflow's `env` also sign the runner's merge commits).
pub fn git_env(
    dir: &Path,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> Result<String, GitError> {
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
        return Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned());
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

/// Serialises this process's changes to the repository's worktree list: `git worktree
/// add` reads every other worktree's admin directory (to refuse a branch checked out
/// twice) and fails on one that a concurrent `add` or `remove` has half made or half
/// removed.
static WORKTREES: Mutex<()> = Mutex::new(());

fn worktrees_lock() -> std::sync::MutexGuard<'static, ()> {
    WORKTREES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Creates a worktree at `path` on `branch`: checked out as it is when it exists, else
/// created at `start`.
pub fn add_worktree(repo: &Path, path: &Path, branch: &str, start: &str) -> Result<(), GitError> {
    let path_s = path.to_string_lossy();
    let _guard = worktrees_lock();
    if branch_exists(repo, branch) {
        git(repo, &["worktree", "add", "-q", &path_s, branch])?;
    } else {
        git(
            repo,
            &["worktree", "add", "-q", "-b", branch, &path_s, start],
        )?;
    }
    Ok(())
}

/// Creates an agent's worktree at `path`, on a detached `HEAD` at `start`. Only the
/// registration holds this process's worktree guard; the files are checked out after it,
/// in parallel with other agents.
pub fn add_detached_worktree(repo: &Path, path: &Path, start: &str) -> Result<(), GitError> {
    {
        let _guard = worktrees_lock();
        git(
            repo,
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

/// Points `branch` at `commit`. The branch is the caller's alone (an agent's, under the
/// job's run lock), so a lock file left on it by a git process killed with an earlier
/// runner is stale: it is removed and the update tried once more.
pub fn set_branch(repo: &Path, branch: &str, commit: &str) -> Result<(), GitError> {
    let args = ["branch", "-f", branch, commit];
    match git(repo, &args) {
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
        Ok(_) => Ok(()),
    }
}

/// Removes the worktree at `path` if its directory exists. A registration whose directory
/// is gone is left to [`prune`], which must not run while other worktrees are being added
/// (it would take their half-made registrations for stale ones).
pub fn remove_worktree(repo: &Path, path: &Path) {
    if path.exists() {
        let _guard = worktrees_lock();
        let r = git(
            repo,
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
            // Safe here: this process's other worktree changes wait for the guard.
            let _ = std::fs::remove_dir_all(path);
            let _ = git(repo, &["worktree", "prune"]);
        }
    }
}

/// Repairs the registrations of worktrees under `under` (a job's directory, whose
/// worktrees only the job's runner makes). `git worktree add` locks a registration while
/// it makes it and writes its files one by one; killed meanwhile, it leaves a lock (and
/// `prune` skips locked entries, so the path stays "already used") or a half-written
/// entry (which makes every later `add` fail reading it). Locks are removed; a
/// half-written entry is removed with its directory.
pub fn repair_registrations(repo: &Path, under: &Path) -> Result<(), GitError> {
    let common = repo.join(git(repo, &["rev-parse", "--git-common-dir"])?);
    let Ok(entries) = std::fs::read_dir(common.join("worktrees")) else {
        return Ok(());
    };
    let _guard = worktrees_lock();
    let nonempty = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    for entry in entries.flatten() {
        let admin = entry.path();
        let gitdir = std::fs::read_to_string(admin.join("gitdir")).ok();
        let ours = match &gitdir {
            Some(g) => Path::new(g.trim()).starts_with(under),
            // Killed before it wrote `gitdir`: still "initializing", named like ours.
            None => {
                let name = entry.file_name().to_string_lossy().into_owned();
                let locked = std::fs::read_to_string(admin.join("locked")).unwrap_or_default();
                locked.contains("initializing")
                    && (name.starts_with("agent-") || name.starts_with("parent"))
            }
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
    Ok(())
}

/// Clears what git processes killed with an earlier runner left behind, in refs and a
/// worktree only this job's runner touches (the caller holds the job's run lock): lock
/// files on the job's branch and its agents' branches, and in the job's worktree a stale
/// `*.lock` (`index.lock`, `AUTO_MERGE.lock`, …) or an unfinished merge, which is undone (`git reset --merge`, as `merge
/// --abort` does) so that the next step starts from the last commit.
pub fn recover(repo: &Path, branch: &str, worktree: &Path) -> Result<(), GitError> {
    let common = repo.join(git(repo, &["rev-parse", "--git-common-dir"])?);
    let heads = common.join("refs/heads");
    let own = |name: &str| {
        name.strip_suffix(".lock").is_some_and(|base| {
            base == branch.rsplit('/').next().unwrap_or(branch)
                || base.starts_with(&format!("{}-agent-", branch.rsplit('/').next().unwrap_or(branch)))
        })
    };
    let dir = match branch.rsplit_once('/') {
        Some((d, _)) => heads.join(d),
        None => heads.clone(),
    };
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if own(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if !worktree.join(".git").exists() {
        return Ok(());
    }
    let gitdir = worktree.join(git(worktree, &["rev-parse", "--git-dir"])?);
    let mut interrupted = false;
    // index.lock, HEAD.lock, AUTO_MERGE.lock, ORIG_HEAD.lock, …
    if let Ok(entries) = std::fs::read_dir(&gitdir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".lock")
                && std::fs::remove_file(e.path()).is_ok()
            {
                interrupted = true;
            }
        }
    }
    if gitdir.join("MERGE_HEAD").exists() || interrupted {
        if git(worktree, &["reset", "-q", "--merge", "HEAD"]).is_err() {
            git(worktree, &["reset", "-q", "--hard", "HEAD"])?;
        }
    }
    Ok(())
}

/// Forgets registered worktrees whose directories are gone.
pub fn prune(repo: &Path) -> Result<(), GitError> {
    let _guard = worktrees_lock();
    git(repo, &["worktree", "prune"]).map(|_| ())
}

/// The commits on `HEAD` since `base`, oldest first.
pub fn commits_since(dir: &Path, base: &str) -> Result<Vec<String>, GitError> {
    let out = git(dir, &["rev-list", "--reverse", &format!("{base}..HEAD")])?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// True when `commit` is already in `HEAD`'s history.
pub fn is_merged(dir: &Path, commit: &str) -> bool {
    git(dir, &["merge-base", "--is-ancestor", commit, "HEAD"]).is_ok()
}

/// Merges `commit` into the worktree at `dir`; on a conflict the merge is aborted and the
/// error says so.
pub fn merge(
    dir: &Path,
    commit: &str,
    message: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), GitError> {
    match git_env(dir, &["merge", "--no-edit", "-m", message, commit], env) {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = git(dir, &["merge", "--abort"]);
            Err(e)
        }
    }
}

/// Deletes a branch (missing is fine).
pub fn delete_branch(repo: &Path, branch: &str) {
    let _ = git(repo, &["branch", "-q", "-D", branch]);
}
