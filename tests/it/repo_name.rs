//! `repo-name` and §3 of DESIGN.md with real git repositories and worktrees.

use std::fs;
use std::path::Path;

use crate::common::{Env, git};

/// A repository with one commit (whose content makes its root commit unique).
fn repo(dir: &Path, seed: &str) {
    fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    fs::write(dir.join("README"), seed).unwrap();
    git(dir, &["add", "README"]);
    git(dir, &["commit", "-q", "-m", seed]);
}

fn name(env: &Env, path: &Path) -> String {
    env.ok(&["repo-name", path.to_str().unwrap()], b"")
        .trim()
        .to_owned()
}

#[test]
fn worktrees_subdirs_and_symlinks_map_to_the_main_repository() {
    let env = Env::new();
    let base = env.scratch();
    let api = base.join("api");
    repo(&api, "api");
    fs::create_dir_all(api.join("src/deep")).unwrap();
    git(
        &api,
        &[
            "worktree",
            "add",
            "-q",
            "../elsewhere/agent-1",
            "-b",
            "agent-1",
        ],
    );
    let wt = base.join("elsewhere/agent-1");
    fs::create_dir_all(wt.join("sub")).unwrap();
    std::os::unix::fs::symlink(api.join("src"), base.join("link")).unwrap();
    for path in [
        &api,
        &api.join("src/deep"),
        &wt,
        &wt.join("sub"),
        &base.join("link"),
    ] {
        assert_eq!(name(&env, path), "api", "{}", path.display());
    }
    // The default is the current directory.
    let out = env
        .cmd()
        .current_dir(&wt)
        .arg("repo-name")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "api");
    // A worktree whose main repository is gone from its place is still named by it: the
    // library's extract_repo_name is the plain basename rule.
    assert_eq!(prodigy::extract_repo_name(&wt).unwrap(), "api");
}

#[test]
fn nested_repositories_pick_the_innermost_and_plain_folders_their_basename() {
    let env = Env::new();
    let base = env.scratch();
    repo(&base.join("outer"), "outer");
    repo(&base.join("outer/vendor/inner"), "inner");
    fs::create_dir_all(base.join("outer/vendor/inner/x")).unwrap();
    fs::create_dir_all(base.join("plain dir/y")).unwrap();
    assert_eq!(name(&env, &base.join("outer/vendor")), "outer");
    assert_eq!(name(&env, &base.join("outer/vendor/inner/x")), "inner");
    assert_eq!(name(&env, &base.join("plain dir")), "plain-dir");
    // A hostile basename is made a valid name.
    fs::create_dir_all(base.join(".x.lock")).unwrap();
    assert_eq!(name(&env, &base.join(".x.lock")), "x-lock");
    let out = env.run(&["repo-name", "/no/such/path"], b"");
    crate::common::assert_one_line_error(&out, 1);
}

#[test]
fn same_basename_different_repositories_get_distinct_names() {
    let env = Env::new();
    let base = env.scratch();
    let one = base.join("a/api");
    let two = base.join("b/api");
    repo(&one, "first");
    repo(&two, "second");
    let n1 = name(&env, &one);
    let n2 = name(&env, &two);
    assert_eq!(n1, "api");
    assert!(n2.starts_with("api-") && n2.len() == 12, "{n2}");
    // Stable on every later call, from any worktree.
    git(&two, &["worktree", "add", "-q", "../wt", "-b", "wt"]);
    assert_eq!(name(&env, &base.join("b/wt")), n2);
    assert_eq!(name(&env, &one), "api");
    // Even a clone of the same history is a different checkout while the first exists.
    let clone = base.join("c/api");
    fs::create_dir_all(base.join("c")).unwrap();
    git(
        &base.join("c"),
        &["clone", "-q", one.to_str().unwrap(), "api"],
    );
    let n3 = name(&env, &clone);
    assert!(n3 != n1 && n3 != n2, "{n3}");
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(env.home().join("repos/api.json")).unwrap()).unwrap();
    assert_eq!(
        record["root"],
        fs::canonicalize(&one).unwrap().to_str().unwrap()
    );
}

#[test]
fn a_moved_or_renamed_repository_keeps_its_name() {
    let env = Env::new();
    let base = env.scratch();
    let old = base.join("svc");
    repo(&old, "service");
    assert_eq!(name(&env, &old), "svc");
    let moved = base.join("moved/svc-renamed");
    fs::create_dir_all(base.join("moved")).unwrap();
    fs::rename(&old, &moved).unwrap();
    assert_eq!(name(&env, &moved), "svc");
    // And a new, different repository now at the old place is someone else.
    repo(&old, "another service");
    assert_ne!(name(&env, &old), "svc");
    assert_eq!(name(&env, &moved), "svc");
}
