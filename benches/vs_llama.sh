#!/usr/bin/env bash
# moe-node beside llama.cpp on the same synth GGUF, in one run: llama-bench's pp/tg and
# `moe-node bench`'s, same thread count, then the ratio moe-node / llama.cpp.
#
# usage: benches/vs_llama.sh [LLAMA_DIR] [PRESET] [TYPE]
#   LLAMA_DIR  where benches/llama_baseline.sh builds llama.cpp (default /work/llama)
#   PRESET     synth preset (default small), TYPE its tensor type (default Q4_K)
# environment: THREADS (default: nproc), PP (512), TG (128), REPS (2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_DIR="${1:-/work/llama}"
PRESET="${2:-small}"
TYPE="${3:-Q4_K}"
THREADS="${THREADS:-$(nproc)}"
PP="${PP:-512}"; TG="${TG:-128}"; REPS="${REPS:-2}"
source "$ROOT/benches/common.sh"
prepare_llama_comparison "$LLAMA_DIR" "$PRESET" "$TYPE"

llama_json="$("$LLAMA_BIN/llama-bench" -m "$MODEL" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" -o json 2>/dev/null)"
moe_md="$("$BIN" bench --model "$MODEL" -p "$PP" -n "$TG" -r "$REPS" --threads "$THREADS")"
python3 - "$PP" "$TG" "$llama_json" "$moe_md" <<'PY'
import json, re, sys
pp, tg, llama, moe = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
ll = {}
for r in llama:
    test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
    ll[test] = r["avg_ts"]
mo = {}
for line in moe.splitlines():
    m = re.match(r"\|[^|]*\|[^|]*\| (\w+) \| ([0-9.]+)", line)
    if m:
        mo[m.group(1)] = float(m.group(2))
print("| test | llama.cpp t/s | moe-node t/s | moe-node / llama.cpp |")
print("|---|---:|---:|---:|")
for test in (f"pp{pp}", f"tg{tg}"):
    a, b = ll.get(test), mo.get(test)
    if a and b:
        print(f"| {test} | {a:.2f} | {b:.2f} | {b / a:.3f} |")
PY
echo "model: $MODEL; threads: $THREADS; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
