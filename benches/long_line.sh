#!/usr/bin/env bash
# A `claude:` step whose stream-json has one very long line (a tool's result of MiBs):
# the time of the whole `prodigy run` for a line of SMALL MiB and of LARGE MiB (4× as long
# by default), medians of RUNS. The work is linear when the ratio of the two is near
# LARGE/SMALL; a search of the whole line for each 16 KiB read made it quadratic (32 MiB
# took 14 s: BENCHMARKS.md, "A long line in a step's output").
#
# The program is a fake `claude` (PRODIGY_CLAUDE_PATH) that writes one `user` message
# holding the line, then a `result`; it is not the real CLI.
#
#   benches/long_line.sh                 # SMALL=8 LARGE=32 RUNS=3
#   PRODIGY=/path/to/prodigy benches/long_line.sh   # another binary, not built here
set -euo pipefail
SMALL=${SMALL:-8}
LARGE=${LARGE:-32}
RUNS=${RUNS:-3}
cd "$(dirname "$0")/.."
if [ -z "${PRODIGY:-}" ]; then
  cargo build --release --quiet
  PRODIGY=$PWD/target/release/prodigy
fi
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/prodigy-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
git init -q -b main "$WORK/repo"
cd "$WORK/repo"
git config user.email bench@example.com
git config user.name bench
printf 'name: long\ncommands:\n  - claude: "/x"\n    capture: c\n  - shell: echo "got ${c}"\n' > w.yml
git add -A
git commit -qm workflow
for mib in "$SMALL" "$LARGE"; do
  cat > "$WORK/claude-$mib" <<EOF
#!/bin/sh
exec python3 -c '
import json, sys
sys.stdout.write(json.dumps({"type": "user", "message": {"content": [{"type": "tool_result", "content": "A" * ($mib << 20)}]}}) + "\n")
sys.stdout.write(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "ok", "usage": {}}) + "\n")
'
EOF
  chmod +x "$WORK/claude-$mib"
done
n=0
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A took
for mib in "$SMALL" "$LARGE"; do
  for _ in $(seq "$RUNS"); do
    n=$((n + 1))
    export PRODIGY_HOME=$WORK/home-$n
    start=$(date +%s.%N)
    PRODIGY_CLAUDE_PATH=$WORK/claude-$mib "$PRODIGY" run w.yml --job-id "j$n" >/dev/null 2>&1
    echo "$(date +%s.%N) - $start" | bc
  done > "$WORK/times-$mib"
  took[$mib]=$(median < "$WORK/times-$mib")
  echo "line of $mib MiB: ${took[$mib]} s (median of $RUNS)"
done
echo "ratio: $(echo "scale=2; ${took[$LARGE]} / ${took[$SMALL]}" | bc) for a line $((LARGE / SMALL))x as long"
