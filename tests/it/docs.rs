//! Generated documentation stays in step with the clap definitions, and help and error
//! output is snapshotted.

use std::fs;
use std::path::Path;

use crate::common::{Env, snapshot};

#[test]
fn man_pages_are_current() {
    let dir = tempfile::tempdir().unwrap();
    clap_mangen::generate_to(prodigy::cli::manual::command(), dir.path()).unwrap();
    // Each page gains EXAMPLES (where there are some), EXIT STATUS, ENVIRONMENT, FILES.
    for entry in fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut page = fs::read_to_string(&path).unwrap();
        page.push_str(&prodigy::cli::manual::extra_sections(&stem));
        fs::write(&path, page).unwrap();
    }
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    if std::env::var_os("PRODIGY_UPDATE_MAN").is_some() {
        let _ = fs::remove_dir_all(&committed);
        fs::create_dir_all(&committed).unwrap();
        for entry in fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), committed.join(entry.file_name())).unwrap();
        }
    }
    let list = |d: &Path| {
        let mut v: Vec<_> = fs::read_dir(d)
            .map(|r| {
                r.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let fresh = list(dir.path());
    assert!(
        fresh.contains(&"prodigy-ref-update.1".to_owned()),
        "{fresh:?}"
    );
    assert_eq!(
        list(&committed),
        fresh,
        "man/ is stale: run PRODIGY_UPDATE_MAN=1 cargo test man_pages"
    );
    for page in fresh {
        assert_eq!(
            fs::read_to_string(committed.join(&page)).unwrap(),
            fs::read_to_string(dir.path().join(&page)).unwrap(),
            "man/{page} is stale: run PRODIGY_UPDATE_MAN=1 cargo test man_pages"
        );
    }
}

#[test]
fn help_output() {
    let env = Env::new();
    for (name, args) in [
        ("help", vec!["--help"]),
        ("help_hash_object", vec!["hash-object", "--help"]),
        ("help_cat_object", vec!["cat-object", "--help"]),
        ("help_ref", vec!["ref", "--help"]),
        ("help_ref_update", vec!["ref", "update", "--help"]),
        ("help_fsck", vec!["fsck", "--help"]),
        ("usage_error", vec!["cat-object"]),
        ("unknown_command", vec!["frobnicate"]),
    ] {
        let out = env.run(&args, b"");
        snapshot(name, &out, &env.home());
    }
}

#[test]
fn completions_are_generated_and_complete_job_ids() {
    let env = Env::new();
    let out = env.ok(&["completions", "bash"], b"");
    assert!(
        out.contains("PRODIGY_COMPLETE") && out.contains("complete -o"),
        "{out}"
    );
    let out = env.run(&["completions", "nosuchshell"], b"");
    assert_eq!(out.status.code(), Some(2));
    // The script asks the binary: commands, and the jobs of the repository you are in.
    let repo = crate::common::init_repo(env.scratch().join("proj"));
    std::fs::write(repo.join("w.yml"), "- shell: \"true\"\n").unwrap();
    crate::common::git(&repo, &["add", "."]);
    crate::common::git(&repo, &["commit", "-qm", "w"]);
    let ran = env
        .cmd()
        .current_dir(&repo)
        .args(["run", "w.yml", "--job-id", "nightly-7"])
        .output()
        .unwrap();
    assert!(ran.status.success());
    let complete = |words: &[&str]| {
        let out = env
            .cmd()
            .current_dir(&repo)
            .env("PRODIGY_COMPLETE", "bash")
            .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
            .env("_CLAP_IFS", "\n")
            .arg("--")
            .args(words)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        complete(&["prodigy", "wor"])
            .lines()
            .any(|l| l == "worktree")
    );
    let jobs = complete(&["prodigy", "jobs", "show", ""]);
    assert!(jobs.lines().any(|l| l == "nightly-7"), "{jobs}");
    let jobs = complete(&["prodigy", "logs", "night"]);
    assert!(jobs.lines().any(|l| l == "nightly-7"), "{jobs}");
}

#[test]
fn a_closed_pipe_exits_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let env = Env::new();
    let mut child = env
        .std_cmd()
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The workflow README.md shows is one the runner accepts.
#[test]
fn readme_workflow_parses() {
    let readme = include_str!("../../README.md");
    let start = readme.find("```yaml\n").expect("a yaml block") + 8;
    let len = readme[start..].find("```").unwrap();
    let plan = prodigy::workflow::Plan::parse(
        std::path::Path::new("README.md"),
        &readme[start..start + len],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.name(), "file-stats");
    assert_eq!(plan.retry.max_attempts, 3);
}

/// Every relative link in README.md and the guide under docs/ names a file that exists.
#[test]
fn doc_links_resolve() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    let link = regex::Regex::new(r"\]\(([^)#\s]+)(#[^)]*)?\)").unwrap();
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for cap in link.captures_iter(&text) {
            let target = &cap[1];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let path = page.parent().unwrap().join(target);
            if !path.exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    // The hints name guide pages: they exist.
    for page in ["troubleshooting.md", "workflows.md", "retention-and-gc.md"] {
        assert!(root.join("docs").join(page).is_file(), "{page}");
    }
}

/// Every YAML block of the workflow guides is a workflow the loader takes, warnings and
/// all: what the guide shows, the runner reads.
#[test]
fn guide_workflows_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut blocks = 0;
    for page in ["docs/workflows.md", "docs/claude.md"] {
        let text = std::fs::read_to_string(root.join(page)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("```yaml\n") {
            let body = &rest[at + 8..];
            let end = body.find("```").unwrap();
            let line = text[..text.len() - rest.len() + at].lines().count() + 1;
            prodigy::workflow::Plan::parse(std::path::Path::new(page), &body[..end])
                .unwrap_or_else(|e| panic!("the block at {page}:{line}: {e}"));
            blocks += 1;
            rest = &body[end..];
        }
    }
    assert!(blocks >= 4, "{blocks} blocks");
}

/// The shell blocks of a page (```sh), with their first lines.
fn shell_blocks(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("```sh\n") {
        let body = &rest[at + 6..];
        let end = body.find("```").unwrap();
        let line = text[..text.len() - rest.len() + at].lines().count() + 1;
        out.push((line, body[..end].to_owned()));
        rest = &body[end..];
    }
    out
}

/// A clone like the one README.md's tour runs in: the examples and the project's Rust
/// files, committed, in a fresh directory with its own HOME (so `~/.prodigy` is new).
fn sandbox() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = crate::common::init_repo(root.path().join("clone"));
    let mut todo = vec![project.join("src"), project.join("examples")];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else if path
                .extension()
                .is_some_and(|x| x == "rs" || x == "yml" || x == "sh")
            {
                let to = repo.join(path.strip_prefix(project).unwrap());
                fs::create_dir_all(to.parent().unwrap()).unwrap();
                fs::copy(&path, &to).unwrap();
            }
        }
    }
    crate::common::git(&repo, &["add", "."]);
    crate::common::git(&repo, &["commit", "-qm", "a clone"]);
    let bin = root.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(assert_cmd::cargo::cargo_bin("prodigy"), bin.join("prodigy"))
        .unwrap();
    (root, repo)
}

/// Every shell block of README.md and the guide runs as it is written, in a fresh clone
/// with a fresh home (`bash -e -o pipefail`), but README's first: its two commands are
/// `cargo run … examples/file-stats.yml` (that workflow runs in the examples tests) and
/// `cargo test` (what `.ci/run` runs). Reference listings with placeholders are `text`.
#[test]
fn doc_shell_blocks_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for e in fs::read_dir(root.join("docs")).unwrap() {
        pages.push(e.unwrap().path());
    }
    pages.sort();
    let mut ran = 0;
    for page in pages {
        let text = fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(root).unwrap().display().to_string();
        for (line, block) in shell_blocks(&text) {
            if name == "README.md" && block.trim_start().starts_with("cargo run") {
                continue;
            }
            let (dir, repo) = sandbox();
            let home = dir.path().join("home");
            fs::create_dir_all(&home).unwrap();
            let out = std::process::Command::new("bash")
                .args(["-e", "-o", "pipefail", "-c", &block])
                .current_dir(&repo)
                .env_remove("PRODIGY_HOME")
                .env_remove("PRODIGY_STORE")
                .env("HOME", &home)
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        dir.path().join("bin").display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .env("GIT_AUTHOR_NAME", "doc")
                .env("GIT_AUTHOR_EMAIL", "doc@example.com")
                .env("GIT_COMMITTER_NAME", "doc")
                .env("GIT_COMMITTER_EMAIL", "doc@example.com")
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}:{line} failed:\n{block}\n{}",
                crate::common::transcript(&out)
            );
            ran += 1;
        }
    }
    assert!(ran >= 6, "{ran} blocks ran");
}

/// The configuration examples of the guide are configurations the home reads.
#[test]
fn doc_config_examples_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = fs::read_to_string(root.join("docs/retention-and-gc.md")).unwrap();
    let start = text.find("```json\n").unwrap() + 8;
    let body = &text[start..start + text[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), body).unwrap();
    let home = prodigy::Home::at(dir.path()).unwrap();
    let config = prodigy::config::Config::load(&home).unwrap();
    assert!(!config.policy("api").is_unlimited());
    // It does not send every command to a bucket by the way.
    assert_eq!(prodigy::config::store_setting(&home).unwrap(), None);
}

/// The guide's shell-only workflows run to completion, not only parse: the MapReduce
/// reference (in a repository of three Rust files) and the environment example (with the
/// env file and the variables its secrets name). The Claude ones run in the claude tests'
/// shapes; here they parse (`guide_workflows_parse`).
#[test]
fn guide_workflows_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = fs::read_to_string(root.join("docs/workflows.md")).unwrap();
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("```yaml\n") {
        let body = &rest[at + 8..];
        let end = body.find("```").unwrap();
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    let reference = blocks
        .iter()
        .find(|b| b.contains("mode: mapreduce") && !b.contains("claude:"))
        .expect("the MapReduce reference");
    let environment = blocks
        .iter()
        .find(|b| b.contains("env_files:"))
        .expect("the environment example");

    let env = Env::new();
    let repo = crate::common::init_repo(env.scratch().join("repo"));
    for n in ["a", "b", "c"] {
        fs::write(repo.join(format!("{n}.rs")), format!("fn {n}() {{}}\n")).unwrap();
    }
    fs::write(repo.join(".env.production"), "FROM_FILE=yes\n").unwrap();
    crate::common::git(&repo, &["add", "."]);
    crate::common::git(&repo, &["commit", "-qm", "three files"]);
    fs::write(repo.join("reference.yml"), reference).unwrap();
    fs::write(repo.join("environment.yml"), environment).unwrap();

    let out = env
        .std_cmd()
        .args(["run", "reference.yml", "-y"])
        .current_dir(&repo)
        .output()
        .unwrap();
    let all = crate::common::transcript(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("3 of 3 done, 0 failed"), "{all}");

    let out = env
        .std_cmd()
        .args(["run", "environment.yml"])
        .current_dir(&repo)
        .env("GITHUB_TOKEN", "tok-123")
        .env("SECRET_API_KEY", "key-456")
        .output()
        .unwrap();
    let all = crate::common::transcript(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("production with "), "{all}");
    assert!(
        !all.contains("tok-123") && !all.contains("key-456"),
        "{all}"
    );
}
