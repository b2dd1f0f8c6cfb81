# Prepares the King James Bible (Debian's bible-kjv) as token shards for the
# other integration tests.
source "$(dirname "$0")/lib.sh"
command -v bible >/dev/null || fail "bible (package bible-kjv) is not installed"
if [ ! -f "$KJV/train_000.tok" ]; then
  bible -f gen1:1-rev22:21 > "$SCRATCH/kjv.txt"
  [ "$(wc -c < "$SCRATCH/kjv.txt")" -gt 4000000 ] || fail "bible printed too little text"
  "$MOE" data prepare --input "$SCRATCH/kjv.txt" --out "$KJV"
fi
[ -f "$KJV/val_000.tok" ] || fail "no validation shard"
echo "kjv data ready in $KJV"
