#!/usr/bin/env bash
# The expert layer's overlap modes across shapes and links: `moe bench layer`
# over a grid (tokens per rank, hidden size, experts, top-k, ranks, link rate,
# uniform and skewed routing) on N emulated hosts (2 and 8 for the ranks axis), one JSON line per point,
# then a table (markdown) and, when gnuplot is there, a PNG of fine's and
# coarse's speed-up over none per point. Root (the emulated cluster).
#   perf/layer_sweep.sh [OUT_DIR] [HOSTS] [ITERS]   (defaults: perf-out/layer-<date> 4 5)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-perf-out/layer-$(date +%Y%m%d-%H%M)}
HOSTS=${2:-4}
ITERS=${3:-5}
mkdir -p "$OUT"
: > "$OUT/sweep.jsonl"
point() { # label, flags... (HOSTS_AT=N for another host count)
  local label=$1; shift
  local line
  line=$(build/bin/moe bench layer --hosts "${HOSTS_AT:-$HOSTS}" --iters "$ITERS" --json "$@" 2>/dev/null | tail -n 1) || true
  [ -n "$line" ] || { echo "layer_sweep: no result for $label ($*)" >&2; return 0; }
  printf '%s\n' "${line%\}}, \"label\": \"$label\"}" >> "$OUT/sweep.jsonl"
  echo "$label done" >&2
}
point base-1gbit --link-rate 1gbit
point base-200mbit --link-rate 200mbit
point base-unshaped --link-rate none
point skew1.2-1gbit --link-rate 1gbit --skew 1.2
point tokens1024 --link-rate 1gbit --tokens 1024
point tokens4096 --link-rate 1gbit --tokens 4096
point hidden1024 --link-rate 1gbit --hidden 1024 --ffn 896
point experts16 --link-rate 1gbit --experts 16
point top4 --link-rate 1gbit --topk 4
HOSTS_AT=2 point ranks2 --link-rate 1gbit
HOSTS_AT=8 point ranks8 --link-rate 1gbit --experts 16
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(out + "/sweep.jsonl") if l.strip()]
with open(out + "/sweep.md", "w") as f:
    f.write("| point | C ms | P ms | none ms | coarse ms (hidden) | fine ms (hidden) | fine / none |\n|---|---|---|---|---|---|---|\n")
    for r in rows:
        m = r["modes"]
        f.write("| %s | %.0f | %.0f | %.0f | %.0f (%.2f) | %.0f (%.2f) | %.2fx |\n" % (
            r["label"], r["c_ms"], r["p_ms"], m["none"]["t_ms"], m["coarse"]["t_ms"], m["coarse"]["hidden"],
            m["fine"]["t_ms"], m["fine"]["hidden"], m["none"]["t_ms"] / m["fine"]["t_ms"]))
with open(out + "/speedup.dat", "w") as f:
    for i, r in enumerate(rows):
        m = r["modes"]
        f.write("%d %s %.4f %.4f\n" % (i, r["label"], m["none"]["t_ms"] / m["coarse"]["t_ms"], m["none"]["t_ms"] / m["fine"]["t_ms"]))
PY
cat "$OUT/sweep.md"
if command -v gnuplot >/dev/null; then
  gnuplot -e "set terminal png size 900,400; set output '$OUT/speedup.png'; set style data histograms; \
    set style fill solid; set ylabel 'speed-up over none'; set xtics rotate by -30; \
    plot '$OUT/speedup.dat' using 3:xtic(2) title 'coarse', '' using 4 title 'fine'"
  echo "plot: $OUT/speedup.png"
fi
