#!/usr/bin/env bash
# Expert-node memory in a 1 router + 3 expert cluster on the 2-layer kimi-k25-full model.
#
# Each expert node maps the GGUF read-only and touches only the bytes of the experts it owns
# (plus metadata and norms), so its peak RSS must stay within
#   owned experts' bytes x 1.1 + 200 MB.
# The router touches no routed-expert bytes at all (every expert is remote here); its peak RSS
# is printed beside the file's non-expert bytes.
#
# usage: benches/cluster_rss.sh [FILE]   (default: the file benches/rss.sh synthesizes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release/moe-node"
FILE="${1:-/tmp/moe-rss/kimi-k25-full-2L-Q4_K.gguf}"
EXPERT_SLACK_BYTES=$((200 * 1000 * 1000))
cargo build --release -p moe-node --manifest-path "$ROOT/Cargo.toml" >&2
if [[ ! -f "$FILE" ]]; then
  mkdir -p "$(dirname "$FILE")"
  "$BIN" synth --preset kimi-k25-full --layers 2 --type Q4_K --out "$FILE" >&2
fi
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
head -c 48 /dev/urandom | base64 > "$WORK/secret"
SHARDS=(0-127 128-255 256-383)
: > "$WORK/p.toml"
for i in 0 1 2; do
  "$BIN" --role expert --model "$FILE" --shards "${SHARDS[$i]}" --node "e$i" --secret-file "$WORK/secret" \
    --listen 127.0.0.1:0 > "$WORK/e$i.out" 2> "$WORK/e$i.err" &
  PIDS+=($!)
done
for i in 0 1 2; do
  deadline=$((SECONDS + 120))
  until grep -q "listening on" "$WORK/e$i.out"; do
    (( SECONDS < deadline )) || { echo "expert e$i did not start" >&2; cat "$WORK/e$i.err" >&2; exit 1; }
    sleep 0.2
  done
  printf '[[node]]\nname = "e%s"\naddr = "%s"\nshards = "%s"\n' "$i" "$(awk '{print $3}' "$WORK/e$i.out")" "${SHARDS[$i]}" >> "$WORK/p.toml"
done
/usr/bin/time -v "$BIN" run -m "$FILE" -p "The mixture of experts routes each token to eight of 384 experts." -n 8 \
  --placement "$WORK/p.toml" --secret-file "$WORK/secret" > "$WORK/run.out" 2> "$WORK/run.err"
router_rss=$(( $(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$WORK/run.err") * 1024 ))
# Expert bytes per expert, from the file itself (the three stacked expert tensors of every MoE layer).
expert_bytes=$(python3 - "$FILE" <<'PY'
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
total = sum(int(t.n_bytes) for t in r.tensors if "_exps." in t.name)
n_exp = int(r.fields["deepseek2.expert_count"].contents())
print(total // n_exp)
PY
)
file_bytes=$(stat -c %s "$FILE")
echo
echo "| node | experts | owned expert bytes | peak RSS | bound (x1.1 + 200 MB) | within |"
echo "|---|---|---|---|---|---|"
status=0
for i in 0 1 2; do
  rss=$(( $(awk '/VmHWM/ {print $2}' "/proc/${PIDS[$i]}/status") * 1024 ))
  owned=$(( 128 * expert_bytes ))
  bound=$(( owned * 11 / 10 + EXPERT_SLACK_BYTES ))
  ok=yes; (( rss <= bound )) || { ok=NO; status=1; }
  echo "| e$i | ${SHARDS[$i]} | $owned | $rss | $bound | $ok |"
done
echo "| router | none | 0 | $router_rss | (file $file_bytes, of which experts $((384 * expert_bytes))) | - |"
echo
grep -E "tokens/s" "$WORK/run.err" || true
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
exit $status
