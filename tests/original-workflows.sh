#!/usr/bin/env bash
# Loads every workflow file of a checkout of the original tool (iepathos/prodigy) with
# `prodigy run --dry-run`, and prints one line per file: its exit code and first message.
# Not part of the suite (CI has no copy of the original); run by hand:
#   tests/original-workflows.sh /path/to/prodigy-original [path/to/prodigy-binary]
set -uo pipefail
orig=${1:?usage: $0 ORIGINAL_CHECKOUT [PRODIGY]}
bin=${2:-$(dirname "$0")/../target/debug/prodigy}
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
cd "$orig" || exit 2
loaded=0 failed=0
while IFS= read -r f; do
  out=$(PRODIGY_HOME="$home" "$bin" run --dry-run "$f" 2>&1 >/dev/null)
  rc=$?
  if [ $rc -eq 0 ]; then loaded=$((loaded + 1)); else failed=$((failed + 1)); fi
  printf '%s %s %s\n' "$rc" "$f" "$(printf '%s' "$out" | grep -v '^dry run' | head -1 | cut -c1-160)"
done < <(git ls-files '*.yml' '*.yaml' | grep -vE '^\.|(^|/)mkdocs\.yml$|book-templates/')
echo "loaded $loaded, refused $failed"
