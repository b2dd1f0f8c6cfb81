# perf/lib.sh: what the perf scripts share; each sources it after cd-ing to the
# repository root.

median() { # of the numbers on stdin (nan for none)
  sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

metric_median() { # metrics.jsonl field skip -> the field's median over the steps after the first `skip`
  sed -n "s/.*\"$2\": \([0-9.]*\).*/\1/p" "$1" | tail -n +"$(($3 + 1))" | median
}

need_kjv() { # script name -> exits 2 unless data/kjv is prepared
  [ -f data/kjv/train_000.tok ] ||
    { echo "$1: data/kjv is missing (scripts/main or perf/reproduce prepares it)" >&2; exit 2; }
}
