//! The torture suite (issue 8), power cuts: the home on a loop-mounted ext4 or xfs image,
//! writers appending events and moving a ref, then the file system shut down without
//! flushing its log (`FS_IOC_SHUTDOWN` with `NOLOGFLUSH`, what xfstests' godown does: the
//! disk keeps only what reached it, as after a power failure), the writers killed, the
//! image unmounted and mounted again. Every acknowledged event and ref update must be
//! there, every ref readable, fsck without errors.
//!
//! 3 trials per file system in the suite; `PRODIGY_POWERCUT_TRIALS=N` for more.
//! `PRODIGY_EXPECT_LOSS=1` (with `--features broken-durability`, a build that skips every
//! fsync) turns the check around: the test then passes only if it saw a loss, showing the
//! suite catches one (`tests/torture.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use prodigy::fsck::{self, Severity};
use prodigy::lock::LockOptions;
use prodigy::{Home, RefName, RefStore};

use crate::common::{Env, Rng, can_mount, env_knob, need_tool};
use crate::worker;

/// A loop-mounted image, unmounted and removed on drop.
struct Image {
    file: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Image {
    fn new(dir: &Path, fs: &'static str) -> Image {
        let file = dir.join(format!("{fs}.img"));
        let mnt = dir.join(format!("{fs}-mnt"));
        std::fs::create_dir_all(&mnt).unwrap();
        let f = std::fs::File::create(&file).unwrap();
        // xfs wants at least 300 MiB; both are sparse.
        f.set_len(512 << 20).unwrap();
        drop(f);
        match fs {
            "ext4" => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&file)),
            _ => run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&file)),
        }
        let mut image = Image {
            file,
            mnt,
            mounted: false,
        };
        image.mount();
        image
    }

    fn mount(&mut self) {
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&self.file)
            .arg(&self.mnt));
        self.mounted = true;
    }

    fn umount(&mut self) {
        run(Command::new("umount").arg(&self.mnt));
        self.mounted = false;
    }

    /// The power cut: the file system stops at once; its log is not flushed.
    fn shut_down(&self) {
        run(Command::new("python3")
            .args([
                "-c",
                "import fcntl, os, struct, sys\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))  # FS_IOC_SHUTDOWN, NOLOGFLUSH",
            ])
            .arg(&self.mnt));
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// Checks one trial's store after the remount; returns the losses found.
fn losses(home: &Path, env: &Env, writers: u64) -> Vec<String> {
    let mut lost = Vec::new();
    let home = Home::at(home).unwrap();
    let refs = RefStore::new(&home, LockOptions::default());
    // Event writers: every acknowledged seq of each writer is in the job's log.
    for w in 0..writers {
        let acked = lines(&env.dir.path().join(format!("events-{w}")));
        let Some(writer) = acked.first().and_then(|l| l.strip_prefix("writer ")) else {
            continue;
        };
        let Some(last) = acked.last().and_then(|l| l.parse::<u64>().ok()) else {
            continue;
        };
        let log = prodigy::events::EventLog::new(refs.clone(), "api", &format!("job-{w}")).unwrap();
        let mut seqs = std::collections::HashSet::new();
        let read = prodigy::events::query::stream(
            &log,
            &prodigy::events::Filter::default(),
            true,
            true,
            |line| {
                let r = line.record.unwrap();
                if r.writer == writer {
                    seqs.insert(r.seq);
                }
                Ok(true)
            },
        );
        match read {
            Ok(skipped) => lost.extend(skipped.iter().map(|e| format!("job-{w}: {e}"))),
            Err(e) => lost.push(format!("job-{w}: {e}")),
        }
        let missing = (0..=last).filter(|s| !seqs.contains(s)).count();
        if missing > 0 {
            lost.push(format!(
                "job-{w}: {missing} of {} acknowledged events missing",
                last + 1
            ));
        }
    }
    // The ref mover: the ref is at its last acknowledged update or the one after.
    let acked = lines(&env.dir.path().join("refs"));
    if let Some(last) = acked.last().and_then(|l| l.parse::<u64>().ok()) {
        let name: RefName = "state/api/moved".parse().unwrap();
        match refs.read(&name) {
            Ok(Some(id)) => match refs.objects().read(&id) {
                Ok(object) => {
                    let seq = serde_json::from_slice::<serde_json::Value>(&object.payload).unwrap()
                        ["seq"]
                        .as_u64()
                        .unwrap();
                    if seq != last && seq != last + 1 {
                        lost.push(format!("ref at seq {seq}, last acknowledged {last}"));
                    }
                }
                Err(e) => lost.push(format!("ref names a bad object: {e}")),
            },
            Ok(None) => lost.push("acknowledged ref lost".into()),
            Err(e) => lost.push(format!("ref unreadable: {e}")),
        }
    }
    match fsck::fsck(&home, &refs) {
        Ok(report) => lost.extend(
            report
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| format!("fsck: {f:?}")),
        ),
        Err(e) => lost.push(format!("fsck: {e}")),
    }
    lost
}

#[allow(clippy::print_stderr)] // the figures of a run
fn power_cuts(fs: &'static str) {
    if !can_mount() {
        return;
    }
    need_tool("python3", "python3");
    if fs == "xfs" {
        need_tool("mkfs.xfs", "xfsprogs");
    }
    // No network namespace may exist meanwhile (see `common::NETNS_VS_REMOUNTS`).
    let _alone = crate::common::NETNS_VS_REMOUNTS
        .write()
        .unwrap_or_else(|p| p.into_inner());
    let trials = env_knob("PRODIGY_POWERCUT_TRIALS", 3);
    let expect_loss = std::env::var_os("PRODIGY_EXPECT_LOSS").is_some();
    let mut rng = Rng(env_knob("PRODIGY_TORTURE_SEED", 0xc0ffee) | 1);
    let writers = 3;
    let mut lossy = Vec::new();
    for trial in 0..trials {
        let env = Env::new();
        // The image lives on the host's disk, not in a tmpfs.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let mut image = Image::new(dir.path(), fs);
        let home = image.mnt.join("home");
        let mut children: Vec<_> = (0..writers)
            .map(|w| {
                worker::spawn(
                    "events-crash",
                    &home,
                    &env.dir.path().join(format!("events-{w}")),
                    &[("PRODIGY_IT_JOB", format!("job-{w}"))],
                )
            })
            .collect();
        children.push(worker::spawn(
            "crash",
            &home,
            &env.dir.path().join("refs"),
            &[
                ("PRODIGY_IT_REF", "state/api/moved".into()),
                ("PRODIGY_IT_ID", trial.to_string()),
            ],
        ));
        let wanted = 10 + rng.below(60) as usize;
        let started = Instant::now();
        let acked = || {
            (0..writers)
                .map(|w| lines(&env.dir.path().join(format!("events-{w}"))).len())
                .sum::<usize>()
                + lines(&env.dir.path().join("refs")).len()
        };
        while acked() < wanted {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{fs} trial {trial}: no progress"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(5_000)));
        image.shut_down();
        for mut child in children {
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
        }
        image.umount();
        image.mount();
        let lost = losses(&home, &env, writers);
        if !lost.is_empty() {
            lossy.push(format!(
                "{fs} trial {trial} (seed {:#x}): {}",
                rng.0,
                lost.join("; ")
            ));
        }
        drop(image);
    }
    if expect_loss {
        eprintln!(
            "{fs}: {} of {trials} trials lost acknowledged data, as this build should",
            lossy.len()
        );
        assert!(
            !lossy.is_empty(),
            "{fs}: the build that skips fsync lost nothing in {trials} trials"
        );
    } else {
        assert!(
            lossy.is_empty(),
            "{} of {trials} {fs} trials lost data:\n{}",
            lossy.len(),
            lossy.join("\n")
        );
    }
}

#[test]
fn power_cuts_on_ext4_lose_nothing_acknowledged() {
    power_cuts("ext4");
}

#[test]
fn power_cuts_on_xfs_lose_nothing_acknowledged() {
    power_cuts("xfs");
}
