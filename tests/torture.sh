#!/usr/bin/env bash
# The long torture suite (issue 8; RELIABILITY.md has the figures). Runs as root (loop
# mounts, tmpfs), installs what it needs, and exits non-zero on the first failure.
#
#   tests/torture.sh                 # the figures of RELIABILITY.md
#   TRIALS_SCALE=0.1 tests/torture.sh   # a tenth of every count
set -euo pipefail
cd "$(dirname "$0")/.."
scale() { python3 -c "import sys; print(max(1, int($1 * float(sys.argv[1]))))" "${TRIALS_SCALE:-1}"; }
need=()
command -v strace >/dev/null || need+=(strace)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CI=${CI:-true}   # the file-system tests must run, not skip
t() { echo "== $*" >&2; }
run() { cargo test --release --locked --test it "$@" -- --nocapture --test-threads=1; }

t "1. process crashes: 8 mixed writers, SIGKILL"
PRODIGY_MIXED_TRIALS=$(scale 1000) run eight_mixed_writers
PRODIGY_TORTURE_TRIALS=$(scale 2000) run sigkill_during_writes
t "2. power cuts on ext4 and xfs"
PRODIGY_POWERCUT_TRIALS=$(scale 200) run power_cuts
t "2b. the suite catches a build that skips fsync"
# (its own target directory, so the broken binary never replaces the real one)
PRODIGY_EXPECT_LOSS=1 PRODIGY_POWERCUT_TRIALS=$(scale 20) CARGO_TARGET_DIR=target/broken-durability \
  cargo test --release --locked --features broken-durability --test it power_cuts -- --nocapture --test-threads=1
t "3. syscall faults; 4. full disks, inodes, ulimit -f"
run faults
run a_full_disk
t "5. hostile store; 6. corruption"
run hostile
PRODIGY_CORRUPTION_TRIALS=$(scale 10000) run corruption
t "8. killed lock holders"
PRODIGY_LOCK_TRIALS=$(scale 100) run a_killed_lock_holder
echo "torture suite passed" >&2
