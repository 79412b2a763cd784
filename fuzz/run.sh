#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) with cargo-fuzz (nightly), starting from
# the committed seeds in fuzz/corpus/<target>/ and growing a scratch corpus beside them.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
#
#   fuzz/run.sh            # 60 s each
#   SECONDS_EACH=600 fuzz/run.sh
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
scratch=$(mktemp -d "${TMPDIR:-/var/tmp}/prodigy-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$target"
  echo "== $target" >&2
  cargo +nightly fuzz run -O "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="${SECONDS_EACH:-60}" -rss_limit_mb=2048 -max_len=65536 2>&1 |
    grep -E '^(#[0-9]+.*(DONE|pulse)|==[0-9]+==|SUMMARY|Done)' | tail -3
done
