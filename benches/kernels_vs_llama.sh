#!/usr/bin/env bash
# moe-node's Fast and Exact numeric modes beside llama.cpp, per weight type, in one run: for
# each TYPE a synth GGUF of PRESET (written once to /tmp/moe-vs-llama/), llama-bench's pp/tg
# and `moe-node bench --fast` / `--exact` on it with the same thread count, then the ratios
# moe-node / llama.cpp. A type synth cannot write, or a run that fails, is reported as such in
# its row (never skipped silently).
#
# usage: benches/kernels_vs_llama.sh [LLAMA_DIR] [PRESET]
#   LLAMA_DIR  where benches/llama_baseline.sh builds llama.cpp (default /work/llama)
#   PRESET     synth preset (default small)
# environment: TYPES (default the issue's list: "Q2_K Q3_K Q4_K Q5_K Q6_K Q8_0 IQ4_XS IQ2_XXS
#   IQ1_S"), THREADS (default 2),
#   PP (512), TG (128), REPS (2), ROUNDS (1), CARGO_TARGET_DIR (default ROOT/target)
# ROUNDS > 1 runs the three benchmarks of a type that many times, interleaved, and keeps each
# one's best mean t/s: on a shared machine the best round is the least disturbed one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_DIR="${1:-/work/llama}"
PRESET="${2:-small}"
TYPES="${TYPES:-Q2_K Q3_K Q4_K Q5_K Q6_K Q8_0 IQ4_XS IQ2_XXS IQ1_S}"
THREADS="${THREADS:-2}"
PP="${PP:-512}"; TG="${TG:-128}"; REPS="${REPS:-2}"; ROUNDS="${ROUNDS:-1}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET/release/moe-node"
cargo build --release -p moe-node --manifest-path "$ROOT/Cargo.toml" >&2
LLAMA_BENCH="$LLAMA_DIR/llama.cpp/build/bin/llama-bench"
if [[ ! -x "$LLAMA_BENCH" ]]; then
    LLAMA_BENCH="$("$ROOT/benches/llama_baseline.sh" "$LLAMA_DIR" | tail -n 1)/llama-bench"
fi
mkdir -p /tmp/moe-vs-llama

rows=()
SEP=$'\x1f' # between the fields of a row (the tables contain '|')
for TYPE in $TYPES; do
    MODEL="/tmp/moe-vs-llama/${PRESET}-${TYPE}.gguf"
    if [[ ! -f "$MODEL" ]] && ! "$BIN" synth --preset "$PRESET" --type "$TYPE" --out "$MODEL" >&2; then
        rows+=("$TYPE${SEP}synth cannot write this type${SEP}${SEP}")
        continue
    fi
    llama_json=""; fast_md=""; exact_md=""
    for _ in $(seq "$ROUNDS"); do
        llama_json+="$("$LLAMA_BENCH" -m "$MODEL" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" -o json 2>/dev/null || echo '[]')"$'\n'
        fast_md+="$("$BIN" bench --model "$MODEL" -p "$PP" -n "$TG" -r "$REPS" --threads "$THREADS" --fast || true)"$'\n'
        exact_md+="$("$BIN" bench --model "$MODEL" -p "$PP" -n "$TG" -r "$REPS" --threads "$THREADS" --exact || true)"$'\n'
    done
    rows+=("$TYPE${SEP}$llama_json${SEP}$fast_md${SEP}$exact_md")
done

python3 - "$PP" "$TG" "${rows[@]}" <<'PY'
import json, re, sys
pp, tg = sys.argv[1], sys.argv[2]

def moe(md):
    # Best mean over the rounds.
    out = {}
    for line in md.splitlines():
        m = re.match(r"\|[^|]*\|[^|]*\| (\w+) \| ([0-9.]+)", line)
        if m:
            out[m.group(1)] = max(out.get(m.group(1), 0.0), float(m.group(2)))
    return out

def fmt(v):
    return f"{v:.2f}" if v else "n/a"

def ratio(a, b):
    return f"{a / b:.3f}" if a and b else "n/a"

print("| type | test | llama.cpp t/s | moe-node fast t/s | moe-node exact t/s | fast / llama.cpp | exact / llama.cpp | fast / exact |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for row in sys.argv[3:]:
    ty, llama, fast, exact = row.split("\x1f")
    if llama.startswith("synth cannot"):
        print(f"| {ty} | - | {llama} | | | | | |")
        continue
    ll = {}
    # One JSON array per round (llama-bench prints it over several lines).
    dec, text, i = json.JSONDecoder(), llama.strip(), 0
    while i < len(text):
        try:
            arr, j = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        for r in arr:
            test = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
            ll[test] = max(ll.get(test, 0.0), r["avg_ts"])
        i = j
        while i < len(text) and text[i].isspace():
            i += 1
    fa, ex = moe(fast), moe(exact)
    for test in (f"pp{pp}", f"tg{tg}"):
        l, f, e = ll.get(test), fa.get(test), ex.get(test)
        print(f"| {ty} | {test} | {fmt(l)} | {fmt(f)} | {fmt(e)} | {ratio(f, l)} | {ratio(e, l)} | {ratio(f, e)} |")
PY
echo "preset: $PRESET; threads: $THREADS; reps: $REPS; rounds (best kept): $ROUNDS; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), AVX2: $(grep -qw avx2 /proc/cpuinfo && echo yes || echo no)"
