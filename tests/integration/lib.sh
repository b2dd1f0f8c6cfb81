# Shared helpers for the integration scripts. Usage: source lib.sh BIN SCRATCH SRC
set -euo pipefail
BIN=$1
SCRATCH=$2
SRC=$3
MOE=$BIN/moe
mkdir -p "$SCRATCH"
KJV=$SCRATCH/kjv

fail() { echo "FAIL: $*" >&2; exit 1; }

# expect_status CODE CMD...: runs CMD, requires exit status CODE, keeps output in $OUT.
expect_status() {
  local want=$1; shift
  set +e
  OUT=$("$@" 2>&1)
  local got=$?
  set -e
  [ "$got" = "$want" ] || fail "'$*' exited $got, expected $want. Output:
$OUT"
}

# expect_output TEXT: the last command's output contains TEXT.
expect_output() {
  grep -qF -- "$1" <<<"$OUT" || fail "output lacks '$1'. Output:
$OUT"
}

# A small, fast model for tests; callers add flags.
TINY=(--config "$SRC/configs/tiny.yaml" --data-path "$KJV" --log-interval 1000)
