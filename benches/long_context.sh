#!/usr/bin/env bash
# Long prompts and decode at depth, moe-node beside llama.cpp on the same synth GGUF in one
# run: pp at several prompt sizes, tg at several depths (llama-bench's -d), same threads, and
# the ratios; plus the time for the largest prompt over the time for 4096 for both systems
# (how much worse than linear each grows).
#
# usage: benches/long_context.sh [LLAMA_DIR] [PRESET] [TYPE]
# environment: THREADS (nproc), PPS ("512 4096 16384"), DEPTHS ("0 4096 16384"), TG (32),
#              REPS (1), MODE (moe-node's numeric mode flag: --fast or --exact; default none)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_DIR="${1:-/work/llama}"
PRESET="${2:-small}"
TYPE="${3:-Q4_K}"
THREADS="${THREADS:-$(nproc)}"
PPS="${PPS:-512 4096 16384}"
DEPTHS="${DEPTHS:-0 4096 16384}"
TG="${TG:-32}"; REPS="${REPS:-1}"; MODE="${MODE:-}"
source "$ROOT/benches/common.sh"
prepare_llama_comparison "$LLAMA_DIR" "$PRESET" "$TYPE"
max_pp=0; for p in $PPS; do (( p > max_pp )) && max_pp=$p; done
max_d=0; for d in $DEPTHS; do (( d > max_d )) && max_d=$d; done

llama=""; moe=""
for p in $PPS; do
  llama+="$("$LLAMA_BIN/llama-bench" -m "$MODEL" -p "$p" -n 0 -r "$REPS" -t "$THREADS" -o json 2>/dev/null)"$'\n'
  moe+="$("$BIN" bench --model "$MODEL" -p "$p" -n 0 -r "$REPS" --threads "$THREADS" $MODE)"$'\n'
done
d_list="$(echo $DEPTHS | tr ' ' ',')"
llama+="$("$LLAMA_BIN/llama-bench" -m "$MODEL" -p 0 -n "$TG" -d "$d_list" -r "$REPS" -t "$THREADS" -o json 2>/dev/null)"$'\n'
moe+="$("$BIN" bench --model "$MODEL" -p 0 -n "$TG" -d "$d_list" -r "$REPS" --threads "$THREADS" $MODE)"$'\n'

python3 - "$llama" "$moe" <<'PY'
import json, re, sys
ll, mo = {}, {}
dec = json.JSONDecoder()
text = sys.argv[1]
i = 0
while i < len(text):
    j = text.find("[", i)
    if j < 0:
        break
    rows, i = dec.raw_decode(text, j)
    for r in rows:
        d = r.get("n_depth", 0)
        test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        ll[test + (f" @ d{d}" if d else "")] = r["avg_ts"]
for line in sys.argv[2].splitlines():
    m = re.match(r"\|[^|]*\|[^|]*\| ([\w@ ]+?) \| ([0-9.]+)", line)
    if m:
        mo[m.group(1)] = float(m.group(2))
print("| test | llama.cpp t/s | moe-node t/s | moe-node / llama.cpp |")
print("|---|---:|---:|---:|")
for test in mo:
    a, b = ll.get(test), mo.get(test)
    if a and b:
        print(f"| {test} | {a:.2f} | {b:.2f} | {b / a:.3f} |")
pps = sorted(int(t[2:]) for t in mo if t.startswith("pp") and "@" not in t)
if 4096 in pps and pps[-1] > 4096:
    big = pps[-1]
    def t(rate, n): return n / rate
    for name, d in (("llama.cpp", ll), ("moe-node", mo)):
        if f"pp{big}" in d and "pp4096" in d:
            print(f"{name}: time(pp{big}) / time(pp4096) = {t(d[f'pp{big}'], big) / t(d['pp4096'], 4096):.2f}")
PY
echo "model: $MODEL; threads: $THREADS; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
