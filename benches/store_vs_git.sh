#!/usr/bin/env bash
# Writes then reads N distinct ~200-byte objects with prodigy and with git, on the same
# files, in the same run, and prints a Markdown table (medians of RUNS runs).
#
#   benches/store_vs_git.sh            # N=100000, RUNS=3
#   N=20000 RUNS=5 benches/store_vs_git.sh
#
# Measured: wall time (s), objects/s, peak RSS (KiB, /usr/bin/time), bytes per object
# (apparent size of the object files, and disk blocks they use).
set -euo pipefail
N=${N:-100000}
RUNS=${RUNS:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet
PRODIGY=$PWD/target/release/prodigy
command -v /usr/bin/time >/dev/null || { apt-get install -y time >/dev/null; }
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/prodigy-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# N files of ~200 bytes each: an index and pseudo-random hex, all distinct.
mkdir -p "$WORK/files"
python3 - "$WORK/files" "$N" <<'PY'
import hashlib, os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = os.path.join(d, f"{i % 256:02x}")
    os.makedirs(sub, exist_ok=True)
    body = f'{{"event_type":"agent_completed","seq":{i},"item_id":"item-{i}","h":"{hashlib.sha256(str(i).encode()).hexdigest()}"}}'
    body += " " * max(0, 200 - len(body))
    with open(os.path.join(sub, f"f{i}"), "w") as f:
        f.write(body + "\n")
PY
find "$WORK/files" -type f | sort > "$WORK/paths"

# timed LABEL CMD…: runs CMD with stdin from $IN, appends "label seconds maxrss_kb".
timed() {
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" < "$IN" > "$WORK/out"
  echo "$label $(cat "$WORK/time")" >> "$WORK/results"
}

: > "$WORK/results"
for run in $(seq "$RUNS"); do
  # Each writer starts in a new directory on an idle disk: what the previous step left
  # dirty is flushed first, so no one pays for another's writeback. Nothing is deleted
  # until the end: ext4 skips recently deleted inodes when it allocates new ones, which
  # made whichever store was written right after a deletion several times slower.
  git init -q --bare "$WORK/git-$run" && sync
  IN=$WORK/paths timed git-write git --git-dir="$WORK/git-$run" hash-object -w --stdin-paths
  cp "$WORK/out" "$WORK/git-ids"
  git init -q --bare "$WORK/gitfs-$run" && sync
  IN=$WORK/paths timed git-fsync-write git --git-dir="$WORK/gitfs-$run" -c core.fsync=loose-object hash-object -w --stdin-paths
  sync
  IN=$WORK/paths timed prodigy-write env PRODIGY_HOME="$WORK/home-$run" "$PRODIGY" hash-object -w --stdin-paths
  sync
  cp "$WORK/out" "$WORK/prodigy-ids"
  IN=$WORK/git-ids timed git-read git --git-dir="$WORK/git-$run" cat-file --batch
  IN=$WORK/prodigy-ids timed prodigy-read env PRODIGY_HOME="$WORK/home-$run" "$PRODIGY" cat-object --batch
  if grep -q " missing$" "$WORK/out"; then echo "prodigy read reported missing objects" >&2; exit 1; fi
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
stat_of() { awk -v l="$1" -v c="$2" '$1==l {print $c}' "$WORK/results" | median; }
# Loose objects and packs (with their indexes): prodigy writes the objects of one call as
# a pack when there are at least 100 of them, as git keeps a fetched pack that large.
stored() { find "$1" -type f \( -path '*/objects/??/*' -o -path '*/objects/pack/pack-*' \) -printf "$2\n"; }
bytes() { stored "$1" '%s' | awk -v n="$N" '{s+=$1} END {printf "%.0f", s/n}'; }
blocks() { stored "$1" '%b' | awk -v n="$N" '{s+=$1*512} END {printf "%.0f", s/n}'; }

echo "| operation | seconds (median of $RUNS) | objects/s | peak RSS KiB |"
echo "|---|---|---|---|"
for label in git-write git-fsync-write prodigy-write git-read prodigy-read; do
  s=$(stat_of "$label" 2); m=$(stat_of "$label" 3)
  echo "| $label | $s | $(awk -v n="$N" -v s="$s" 'BEGIN {printf "%.0f", (s>0? n/s : 0)}') | $m |"
done
echo
echo "| store | bytes per object (file size) | bytes per object (disk blocks) |"
echo "|---|---|---|"
echo "| git | $(bytes "$WORK/git-1") | $(blocks "$WORK/git-1") |"
echo "| prodigy | $(bytes "$WORK/home-1") | $(blocks "$WORK/home-1") |"
echo
gw=$(stat_of git-write 2); gf=$(stat_of git-fsync-write 2); pw=$(stat_of prodigy-write 2)
gr=$(stat_of git-read 2); pr=$(stat_of prodigy-read 2)
awk -v gw="$gw" -v gf="$gf" -v pw="$pw" -v gr="$gr" -v pr="$pr" 'BEGIN {
  printf "write: prodigy (durable) is %.2fx faster than git default, %.2fx faster than git with fsync\n", gw/pw, gf/pw
  printf "read:  prodigy is %.2fx the speed of git cat-file --batch\n", gr/pr
}'
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(df -T "$WORK" | awk 'NR==2 {print $2}') at $WORK; git $(git --version | cut -d' ' -f3)"
