//! Helpers: a scratch home, the `prodigy` command with a pinned environment, and the one
//! snapshot helper.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// A scratch home (and a scratch HOME, so nothing touches the real `~/.prodigy`).
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `prodigy` with the environment pinned.
    pub fn cmd(&self) -> Command {
        Command::from_std(self.std_cmd())
    }

    /// The same as a plain `std::process::Command`, for spawning.
    pub fn std_cmd(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("prodigy"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PRODIGY_HOME", self.home())
            .env("HOME", self.dir.path())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .env("PRODIGY_LOCK_TIMEOUT", "10s")
            .current_dir(self.scratch());
        cmd
    }

    /// Runs `prodigy args…` with `stdin`.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.cmd()
            .args(args)
            .write_stdin(stdin.to_vec())
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "prodigy {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn store(&self) -> prodigy::RefStore {
        let home = prodigy::Home::at(self.home()).unwrap();
        prodigy::RefStore::new(&home, prodigy::lock::LockOptions::default())
    }
}

/// A workflow's `env:` block with a git identity for the commits its steps make.
pub const IDENTITY: &str = "env:
  GIT_AUTHOR_NAME: t
  GIT_AUTHOR_EMAIL: t@example.com
  GIT_COMMITTER_NAME: t
  GIT_COMMITTER_EMAIL: t@example.com
";

/// A repository at `dir` (made if missing) with one commit on `main`; returns `dir`.
pub fn init_repo(dir: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README"), "hello\n").unwrap();
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "init"]);
    dir
}

/// Exit code, stdout and stderr as one text, for snapshots and assertions.
pub fn transcript(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().map_or("signal".into(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `out` exited with `code` and printed exactly one `error:` line.
pub fn assert_one_line_error(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{}", transcript(out));
    let errors: Vec<_> = stderr.lines().filter(|l| !l.starts_with("hint:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].starts_with("error: "), "{stderr}");
    stderr
}

/// Snapshots a transcript into the top-level `snapshots/`, with the home, ids and times
/// redacted.
pub fn snapshot(name: &str, out: &Output, home: &Path) {
    let text = transcript(out).replace(&home.display().to_string(), "[HOME]");
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.add_filter(r"\b[0-9a-f]{64}\b", "[ID]");
    settings.add_filter(r"\b[0-9a-f]{2}/[0-9a-f]{62}\b", "[OBJECT FILE]");
    settings.add_filter(r"\(\d+s old", "([AGE] old");
    settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]");
    settings.add_filter(r"/tmp/\.tmp[A-Za-z0-9]+", "[TMP]");
    settings.bind(|| insta::assert_snapshot!(name, text));
}

/// The id of a stored object whose payload is `text`.
pub fn blob(env: &Env, text: &str) -> String {
    env.ok(&["hash-object", "-w", "--stdin"], text.as_bytes())
        .trim()
        .to_owned()
}

/// Runs git in `dir` with a pinned identity; panics naming the command on failure.
pub fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small deterministic generator (xorshift), so a failing trial can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A number from the environment, else `default`.
pub fn env_knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Makes sure `tool` is on the PATH: as root, installs Debian's `package` when it is
/// missing (what `.ci/run` does up front); otherwise panics saying what to install.
pub fn need_tool(tool: &str, package: &str) {
    let have = |t: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have(tool) {
        return;
    }
    if rustix::process::geteuid().is_root() {
        let _ = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "apt-get install -y -qq {package} >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq {package} >/dev/null)"
                ),
            ])
            .status();
    }
    assert!(
        have(tool),
        "{tool} is needed by this test: apt-get install {package}"
    );
}

/// The power-cut tests remount a loop image and expect a fresh file system; while a
/// network namespace exists (the remote tests' hosts), the remount found the old,
/// shut-down one instead (every read EIO), so those tests hold this exclusively and the
/// remote tests' hosts hold it shared.
pub static NETNS_VS_REMOUNTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// True when this process may mount file systems (root); under CI it must.
pub fn can_mount() -> bool {
    let root = rustix::process::geteuid().is_root();
    assert!(
        root || std::env::var_os("CI").is_none(),
        "CI must run the file-system tests as root"
    );
    root
}

/// Runs `f` with a tmpfs of `options` (`size=1m,nr_inodes=…`) mounted at `dir` (created),
/// unmounting it whatever `f` does. Only root can mount; an ordinary user (never CI) skips
/// the test, and `f` does not run.
pub fn on_tmpfs(dir: &Path, options: &str, f: impl FnOnce()) {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(!can_mount(), "mount of a tmpfs failed as root");
        return;
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let _ = std::process::Command::new("umount").arg(dir).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Bytes zstd cannot compress, different for each seed.
pub fn noise(seed: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies a directory tree (a committed fixture into a scratch place).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Writes `count` small `item` objects (numbered from `first`, about 100 bytes each and
/// alike, as DLQ items are) and a DLQ snapshot of 16 shards naming them under the ref
/// `dlq/api/<job>`, through the library as the gc benchmark does: enough for gc to train
/// a pack dictionary. Returns every object written, the snapshot's too, with its payload.
pub fn small_objects(
    env: &Env,
    job: &str,
    first: u64,
    count: u64,
) -> Vec<(prodigy::ObjectId, Vec<u8>)> {
    use prodigy::ObjectType;
    let refs = env.store();
    let store = refs.objects();
    let mut written = Vec::new();
    let mut batch = store.batch();
    for i in first..first + count {
        let payload = format!(
            r#"{{"item":{i},"error":"command failed with exit code {}","path":"src/module_{}.rs"}}"#,
            i % 7,
            i % 40
        )
        .into_bytes();
        let id = batch.add(ObjectType::Item, &payload).unwrap();
        written.push((id, payload));
    }
    batch.commit().unwrap();
    let mut shards: std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>> =
        Default::default();
    for (id, _) in &written {
        let hex = id.to_string();
        shards
            .entry(hex[..1].to_owned())
            .or_default()
            .insert(hex.clone(), serde_json::json!({ "object": hex }));
    }
    let mut shard_ids = serde_json::Map::new();
    for (key, items) in shards {
        let payload = serde_json::json!({"shard": key, "items": items})
            .to_string()
            .into_bytes();
        let id = store.write(ObjectType::Dlq, &payload).unwrap();
        shard_ids.insert(key, serde_json::Value::String(id.to_string()));
        written.push((id, payload));
    }
    let root = serde_json::json!({"parent": null, "items": count, "shards": shard_ids})
        .to_string()
        .into_bytes();
    let id = store.write(ObjectType::Dlq, &root).unwrap();
    written.push((id, root));
    let name: prodigy::RefName = format!("dlq/api/{job}").parse().unwrap();
    refs.update(&name, id, prodigy::Expect::Absent, "test")
        .unwrap();
    written
}

/// Reads every object through a fresh store (packs opened again) and checks its payload.
pub fn assert_all_read(env: &Env, objects: &[(prodigy::ObjectId, Vec<u8>)], context: &str) {
    let home = prodigy::Home::at(env.home()).unwrap();
    let store = prodigy::ObjectStore::new(&home);
    for (id, payload) in objects {
        match store.read(id) {
            Ok(o) => assert_eq!(&o.payload, payload, "{context}: wrong bytes for {id}"),
            Err(e) => panic!("{context}: {id}: {e}"),
        }
    }
}

/// The packs of the home, opened.
pub fn packs(env: &Env) -> Vec<std::sync::Arc<prodigy::store::pack::Pack>> {
    let home = prodigy::Home::at(env.home()).unwrap();
    prodigy::ObjectStore::new(&home).packs(true)
}

/// `events append` to job `j` of repo `api`, `size` records a batch.
pub fn append_in_batches_of(size: &str) -> [&str; 8] {
    [
        "events",
        "append",
        "--job",
        "j",
        "--repo",
        "api",
        "--batch-size",
        size,
    ]
}

/// Where the loose copy of object `id` (64 hex) is.
pub fn loose_path(env: &Env, id: &str) -> PathBuf {
    env.home().join("objects").join(&id[..2]).join(&id[2..])
}
