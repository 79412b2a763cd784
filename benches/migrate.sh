#!/usr/bin/env bash
# Imports a legacy repo-local .prodigy/ of JOBS per-job event files of EVENTS records each
# (lines in the original's format, cloned from the committed fixture with fresh ids), plus
# the fixture's DLQ items and checkpoints, and prints a Markdown table (medians of RUNS):
#
#   migrate-events          a first import into an empty home
#   migrate-events (again)  the idempotent second run (reads everything, writes nothing)
#   events append (baseline) the same events, as bare event objects, appended per job with
#                            `events append` (the ordinary ingestion path) into an empty home
#
#   benches/migrate.sh                    # JOBS=20 EVENTS=10000 RUNS=3
#   JOBS=4 EVENTS=1000 RUNS=1 benches/migrate.sh
set -euo pipefail
JOBS=${JOBS:-20}
EVENTS=${EVENTS:-10000}
RUNS=${RUNS:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet
PRODIGY=$PWD/target/release/prodigy
command -v /usr/bin/time >/dev/null || { apt-get install -y time >/dev/null; }
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/prodigy-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/repo"
cp -a tests/fixtures/legacy-local/repo/dot-prodigy "$WORK/repo/.prodigy"
python3 - "$WORK" "$JOBS" "$EVENTS" <<'PY'
import json, os, sys, uuid
work, jobs, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
src = [json.loads(l) for l in open(f"{work}/repo/.prodigy/mapreduce/events/global/events.jsonl")]
os.makedirs(f"{work}/bare", exist_ok=True)
for j in range(jobs):
    job = f"mapreduce-bench-{j:03d}"
    d = f"{work}/repo/.prodigy/events/{job}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/events-20250109_143000.jsonl", "w") as f, open(f"{work}/bare/{job}", "w") as b:
        for i in range(events):
            r = dict(src[i % len(src)])
            r["id"] = str(uuid.UUID(int=(j << 64) | i, version=4))
            r["event"] = dict(r["event"], job_id=job)
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
            e = dict(r["event"])
            e["event_type"] = e["event_type"].replace("d_l_q_", "dlq_")
            if isinstance(e.get("duration"), list):
                s, n = e.pop("duration")
                e["duration_ms"] = s * 1000 + n // 1000000
            b.write(json.dumps(e, separators=(",", ":")) + "\n")
PY
TOTAL=$(cat "$WORK"/repo/.prodigy/events/*/*.jsonl* "$WORK"/repo/.prodigy/mapreduce/events/global/*.jsonl | wc -l)
BARE=$(cat "$WORK"/bare/* | wc -l)
BYTES=$(du -sb "$WORK/repo/.prodigy" | cut -f1)

timed() { # LABEL CMD…: appends "label seconds maxrss_kb"
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > /dev/null
  echo "$label $(cat "$WORK/time")" >> "$WORK/results"
}
append_all() {
  for f in "$WORK"/bare/*; do
    "$PRODIGY" events append --repo bench --job "$(basename "$f")" "$f"
  done
}
export -f append_all
export PRODIGY WORK
: > "$WORK/results"
for run in $(seq "$RUNS"); do
  rm -rf "$WORK/home"
  PRODIGY_HOME=$WORK/home timed migrate "$PRODIGY" migrate-events -q "$WORK/repo"
  PRODIGY_HOME=$WORK/home timed again "$PRODIGY" migrate-events -q "$WORK/repo"
  rm -rf "$WORK/home"
  PRODIGY_HOME=$WORK/home timed append bash -c append_all
done
rm -rf "$WORK/home"

echo "legacy tree: $TOTAL event records in $((JOBS + 4)) files, 6 DLQ items, 3 checkpoints, $BYTES bytes; $RUNS runs, medians"
echo
echo "| what | wall s | events/s | peak RSS KiB |"
echo "|---|---:|---:|---:|"
for label in migrate again append; do
  n=$TOTAL; [ "$label" = append ] && n=$BARE
  python3 - "$WORK/results" "$label" "$n" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.split()[0] == sys.argv[2]]
wall = max(statistics.median(float(r[1]) for r in rows), 0.01)
rss = statistics.median(int(r[2]) for r in rows)
name = {"migrate": "migrate-events (first run)", "again": "migrate-events (second run, writes nothing)",
        "append": "events append per job (baseline, same events)"}[sys.argv[2]]
print(f"| {name} | {wall:.2f} | {int(sys.argv[3]) / wall:,.0f} | {rss:,} |")
PY
done
