#!/usr/bin/env bash
# The store end to end, on the default home (PRODIGY_HOME, else ~/.prodigy): two agents of
# one MapReduce job append events at once from separate processes; the job's log is read
# back verified, filtered and summed up; the plumbing underneath is inspected (the ref, its
# reflog, the log node object) and a stale compare-and-swap is refused; fsck checks it all.
#
# The main job of README.md is the MapReduce workflow examples/file-stats.yml; this is a
# tour of the plumbing underneath it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
prodigy="${CARGO_TARGET_DIR:-$PWD/target}/release/prodigy"
repo=$($prodigy repo-name .)
job=mr-$(date +%s)-$$

for agent in 1 2; do
  for item in 1 2 3; do
    printf '{"event_type":"agent_started","job_id":"%s","agent_id":"agent-%s","item_id":"item-%s-%s","worktree":"wt-%s","attempt":1}\n' \
      "$job" "$agent" "$agent" "$item" "$agent"
    printf '{"event_type":"agent_completed","job_id":"%s","agent_id":"agent-%s","item_id":"item-%s-%s","duration_ms":%s,"commits":[]}\n' \
      "$job" "$agent" "$agent" "$item" "$((agent * 100 + item))"
  done | $prodigy events append --job "$job" &
done
wait
$prodigy events show "$job" --type agent_completed
$prodigy events stats "$job"

# The plumbing underneath: the ref names the newest log node, verified on every read.
head=$($prodigy ref show "events/$repo/$job")
echo "events/$repo/$job -> $head ($($prodigy cat-object -t "${head:0:12}"))"
$prodigy ref log "events/$repo/$job"
other=$(echo "not the head" | $prodigy hash-object -w --stdin)
if $prodigy ref update "events/$repo/$job" "$other" --old "$other" 2>/dev/null; then
  echo "a stale compare-and-swap succeeded" >&2
  exit 1
fi
[ "$($prodigy ref show "events/$repo/$job")" = "$head" ]
$prodigy fsck
echo "ok: events/$repo/$job holds $($prodigy events show "$job" --json | wc -l) events"
