#!/usr/bin/env bash
# Peak resident memory of `moe-node run` against the size of the model file it maps.
#
# The runtime maps the GGUF read-only and touches only the pages a forward pass reads (one
# token-embedding row per token, the routed experts actually chosen), so peak RSS must stay at
# or below RSS_RATIO_MAX x the file size (the issue's bound: 1.1). This script:
#   1. builds moe-node --release;
#   2. synthesizes a 2-layer kimi-k25-full Q4_K model (about 11 GB) unless FILE exists,
#      after checking that the disk has room for it;
#   3. runs `moe-node run -m FILE -p PROMPT -n N_PREDICT` under /usr/bin/time -v
#      (installing the `time` package with apt-get when it is missing);
#   4. prints a markdown table: file bytes, peak RSS, ratio, prompt and generation tokens/s,
#      and the machine; exits 1 when the ratio exceeds RSS_RATIO_MAX.
#
# usage: benches/rss.sh [FILE]
#   FILE           the model to measure (default /tmp/moe-rss/kimi-k25-full-2L-Q4_K.gguf);
#                  synthesized there when absent and kept for the next run
# environment (all optional):
#   RSS_PRESET=kimi-k25-full RSS_LAYERS=2 RSS_TYPE=Q4_K   what to synthesize
#   N_PREDICT=8 PROMPT="..."                               what to run
#   RSS_DELETE=1                                           delete FILE afterwards
set -euo pipefail

RSS_RATIO_MAX=1.1
PRESET="${RSS_PRESET:-kimi-k25-full}"
LAYERS="${RSS_LAYERS:-2}"
TYPE="${RSS_TYPE:-Q4_K}"
N_PREDICT="${N_PREDICT:-8}"
PROMPT="${PROMPT:-The mixture of experts routes each token to eight of 384 experts.}"
FILE="${1:-/tmp/moe-rss/${PRESET}-${LAYERS}L-${TYPE}.gguf}"
# Free space demanded before synthesizing: the 2-layer Q4_K file plus a margin, in bytes.
SYNTH_FREE_BYTES_MIN=$((13 * 1000 * 1000 * 1000))

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release/moe-node"

echo "== building moe-node (release)" >&2
cargo build --release -p moe-node --manifest-path "$ROOT/Cargo.toml" >&2

mkdir -p "$(dirname "$FILE")"
if [ ! -s "$FILE" ]; then
    free_bytes="$(df -B1 --output=avail "$(dirname "$FILE")" | tail -n 1 | tr -d ' ')"
    if [ "$PRESET-$LAYERS-$TYPE" = "kimi-k25-full-2-Q4_K" ] && [ "$free_bytes" -lt "$SYNTH_FREE_BYTES_MIN" ]; then
        echo "error: $(dirname "$FILE") has $free_bytes bytes free; synthesizing needs $SYNTH_FREE_BYTES_MIN" >&2
        exit 2
    fi
    echo "== synthesizing $FILE ($PRESET, $LAYERS layers, $TYPE; $free_bytes bytes free)" >&2
    "$BIN" synth --preset "$PRESET" --layers "$LAYERS" --type "$TYPE" --out "$FILE" >&2
fi

if [ ! -x /usr/bin/time ]; then
    echo "== installing GNU time" >&2
    apt-get install -y time >&2 || { apt-get update >&2 && apt-get install -y time >&2; }
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "== running moe-node run -n $N_PREDICT on $FILE" >&2
/usr/bin/time -v -o "$work/time.txt" \
    "$BIN" run -m "$FILE" -p "$PROMPT" -n "$N_PREDICT" --ignore-eos \
    >"$work/stdout.txt" 2>"$work/stderr.txt" || {
    echo "error: moe-node run failed:" >&2
    cat "$work/stderr.txt" "$work/time.txt" >&2
    exit 2
}

file_bytes="$(stat -c %s "$FILE")"
rss_kib="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")"
rss_bytes=$((rss_kib * 1024))
ratio="$(awk -v r="$rss_bytes" -v f="$file_bytes" 'BEGIN {printf "%.3f", r / f}')"
# moe-node prints: "prompt: N tokens in X s (Y tokens/s) | generation: M tokens in ... (Z tokens/s)"
stats="$(grep '^prompt:' "$work/stderr.txt" | tail -n 1)"
prompt_tps="$(sed -E 's/^prompt: .*\(([0-9.]+) tokens\/s\) \| generation.*/\1/' <<<"$stats")"
gen_tps="$(sed -E 's/.*generation: .*\(([0-9.]+) tokens\/s\)$/\1/' <<<"$stats")"
prompt_tokens="$(sed -E 's/^prompt: ([0-9]+) tokens.*/\1/' <<<"$stats")"
cpu="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
mem_gib="$(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
verdict="$(awk -v x="$ratio" -v m="$RSS_RATIO_MAX" 'BEGIN {print (x <= m) ? "pass" : "FAIL"}')"

echo
echo "| model | file bytes | peak RSS bytes | RSS / file | prompt tok/s ($prompt_tokens tok) | gen tok/s ($N_PREDICT tok) | <= $RSS_RATIO_MAX | machine |"
echo "|---|---:|---:|---:|---:|---:|---|---|"
echo "| $(basename "$FILE") | $file_bytes | $rss_bytes | $ratio | $prompt_tps | $gen_tps | $verdict | $(nproc) cores, $cpu, $mem_gib GiB RAM |"

if [ "${RSS_DELETE:-0}" = 1 ]; then
    rm -f "$FILE"
    echo "(deleted $FILE)" >&2
fi
[ "$verdict" = pass ]
