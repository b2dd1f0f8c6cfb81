#!/usr/bin/env bash
# Fuzzes the control plane's frame reader and envelope validation
# (tests/fuzz/fuzz_frame.c against runtime/base/frame.c) under ASan + UBSan.
#
#   tests/fuzz/run_fuzz.sh [SECONDS] [WORKDIR]
#
# SECONDS (default 60) bounds the run. WORKDIR receives the build, a generated
# seed corpus (valid streams and payloads of every message kind), the corpus
# the fuzzer grows (kept and reused by the next run with the same WORKDIR),
# the log, and any crashing input (crash-*, leak-*, timeout-*). Without
# WORKDIR a temporary directory is used, and removed after a clean run. Builds with clang
# (override with CC) straight from the sources it needs, so it works without
# a CMake tree. Exit status: 0 no crash; 1 a crash, leak, timeout or build
# failure; 77 when no clang with libFuzzer is available (ctest: skipped).
set -euo pipefail

secs=${1:-60}
src=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${2:-}" ]; then
  work=$2
  keep=1
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/moe-fuzz-frame-XXXXXX")
  keep=0
fi
CC=${CC:-clang}
case "$secs" in ''|*[!0-9]*) echo "run_fuzz: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;; esac

mkdir -p "$work/gen" "$work/seeds" "$work/corpus"

# No libFuzzer here is a skip, not a failure: probe with an empty target.
probe="$work/probe.c"
printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$probe"
if ! command -v "$CC" >/dev/null 2>&1 || ! "$CC" -fsanitize=fuzzer,address,undefined "$probe" -o "$work/probe" 2>/dev/null; then
  echo "run_fuzz: $CC with -fsanitize=fuzzer is not available; skipping (apt-get install clang)" >&2
  exit 77
fi

protoc-c --proto_path="$src" --c_out="$work/gen" "$src/proto/control.proto"

srcs=("$src/runtime/base/frame.c" "$work/gen/proto/control.pb-c.c" "$src/runtime/base/status.c"
      "$src/runtime/base/log.c" "$src/runtime/base/mem.c")
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Werror -Wno-unused-parameter
       -I"$src" -I"$work/gen")
read -r -a libs <<<"$(pkg-config --cflags --libs libprotobuf-c libsodium) -lm"
san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)

"$CC" "${flags[@]}" "${san[@]}" -fsanitize=fuzzer "$src/tests/fuzz/fuzz_frame.c" "${srcs[@]}" "${libs[@]}" \
  -o "$work/fuzz_frame"
"$CC" "${flags[@]}" "${san[@]}" -DFUZZ_FRAME_SEEDS "$src/tests/fuzz/fuzz_frame.c" "${srcs[@]}" "${libs[@]}" \
  -o "$work/fuzz_frame_seeds"
"$work/fuzz_frame_seeds" "$work/seeds"

# libFuzzer's own exit codes for a crash (77) and a timeout (70) would read as
# "skipped" or be missed; make every finding exit 1.
set +e
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  "$work/fuzz_frame" -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 -artifact_prefix="$work/" \
  "$work/corpus" "$work/seeds" >"$work/fuzz.log" 2>&1
rc=$?
set -e

execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log" | tail -1)
cov=$(grep -o 'cov: [0-9]*' "$work/fuzz.log" | tail -1 || true)
if [ "$rc" -ne 0 ]; then
  tail -n 60 "$work/fuzz.log" >&2
  echo "run_fuzz: FAILED (exit $rc) after ${execs:-?} executions; inputs and log in $work" >&2
  exit 1
fi
echo "run_fuzz: no crash in ${secs} s: ${execs:-?} executions, ${cov:-cov: ?} edges, corpus $(ls "$work/corpus" | wc -l) inputs"
[ "$keep" = 1 ] || rm -rf "$work"
