#!/usr/bin/env bash
# The seed's four-machine topology in miniature, on loopback: llama.cpp RPC (one llama-bench
# controller, three ggml-rpc-server, layers split across them) against moe-node (a router and
# three expert nodes, experts split; and a router computing a quarter of the experts itself
# plus three nodes, what four equal machines would run), the same GGUF and threads per
# process, in one run. Also each system in one process, for reference, and the router + 3
# nodes with `--wire-dtype q8` (int8 hidden states out, bf16 partial sums back).
#
# Prints, per system: pp512 and tg (tokens/s), time to first token of a PROMPT_LONG-token
# prompt (seconds: PROMPT_LONG / its prompt speed), and bytes on the wire per decoded token
# (the loopback bytes of the benchmark's own network namespace, headers included, between a
# TG_SHORT- and a TG_LONG-token decode run, divided by the difference: weight uploads and
# set-up cancel out), then the moe-node / llama.cpp RPC ratios.
#
# Everything runs inside a network namespace of its own (root and iproute2 needed), so the
# counters see only this benchmark. RATE=5gbit shapes that namespace's loopback with `tc tbf`:
# every byte between the processes crosses one 5 Gbit/s bottleneck, which is what a star of
# nodes around the router (moe-node) or a chain of layer hops (RPC) get from the router's or
# controller's one 5 GbE port. (No latency: this kernel has no netem.)
#
# usage: benches/cluster_vs_rpc.sh [LLAMA_DIR]
#   env: PRESET (small), LAYERS (8), TYPE (Q4_K), THREADS per process (1), TG (64),
#        PROMPT_LONG (4096; 0 skips), TG_SHORT/TG_LONG (16/48), RATE (unset: unshaped),
#        LLAMA_BIN (a built bin dir)
# Every process binds 127.0.0.1 of the namespace only; all are killed on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/benches/common.sh"
LLAMA_DIR="${1:-/tmp/llama-baseline}"
PRESET="${PRESET:-small}" LAYERS="${LAYERS:-8}" TYPE="${TYPE:-Q4_K}" THREADS="${THREADS:-1}"
TG="${TG:-64}" PROMPT_LONG="${PROMPT_LONG:-4096}" TG_SHORT="${TG_SHORT:-16}" TG_LONG="${TG_LONG:-48}"

BIN="$ROOT/target/release/moe-node"
if [[ -z "${IN_BENCH_NETNS:-}" ]]; then
  cargo build --release -p moe-node --manifest-path "$ROOT/Cargo.toml" >&2
  LLAMA_BIN="${LLAMA_BIN:-$("$ROOT/benches/llama_baseline.sh" "$LLAMA_DIR" | tail -n 1)}"
  NS="moebench$$"
  ip netns add "$NS"
  trap 'ip netns del "$NS"' EXIT
  ip netns exec "$NS" ip link set lo up
  if [[ -n "${RATE:-}" ]]; then
    ip netns exec "$NS" tc qdisc add dev lo root tbf rate "$RATE" burst 1mb latency 50ms
  fi
  IN_BENCH_NETNS=1 LLAMA_BIN="$LLAMA_BIN" ip netns exec "$NS" "$0" "$@"
  exit
fi
[[ -x "$LLAMA_BIN/ggml-rpc-server" ]] || { echo "no $LLAMA_BIN/ggml-rpc-server (benches/llama_baseline.sh builds it)" >&2; exit 1; }
MODEL="/tmp/moe-vs-llama/${PRESET}-${LAYERS}L-${TYPE}.gguf"
mkdir -p "$(dirname "$MODEL")"
[[ -f "$MODEL" ]] || "$BIN" synth --preset "$PRESET" --layers "$LAYERS" --type "$TYPE" --out "$MODEL" >&2

WORK="$(mktemp -d)"
PIDS=()
stop_all() { local p; for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap 'stop_all; rm -rf "$WORK"' EXIT
head -c 48 /dev/urandom | base64 > "$WORK/secret"

# Bytes carried by this namespace's loopback so far (each byte sent is received once).
io_bytes() { awk '/^ *lo:/ {sub(/^ *lo:/, ""); print $1}' /proc/net/dev; }
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    ss -ltnH "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

# --- llama.cpp ---------------------------------------------------------------------------
# llama-bench's JSON lines -> "tokens/s" of the test with n_prompt $2 / n_gen $3.
llama_tps() { python3 -c '
import json, sys
for r in json.load(open(sys.argv[1])):
    if r["n_prompt"] == int(sys.argv[2]) and r["n_gen"] == int(sys.argv[3]):
        print(round(r["avg_ts"], 2))' "$@"; }
llama_run() { # NAME EXTRA_ARGS...
  local name="$1"; shift
  local tests=(-p 512 -n "$TG")
  "$LLAMA_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -r 1 "${tests[@]}" -o json "$@" > "$WORK/$name.json" 2> "$WORK/$name.err"
  PP["$name"]=$(llama_tps "$WORK/$name.json" 512 0)
  TGS["$name"]=$(llama_tps "$WORK/$name.json" 0 "$TG")
  if (( PROMPT_LONG > 0 )); then
    "$LLAMA_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -r 1 -p "$PROMPT_LONG" -n 0 -o json "$@" > "$WORK/$name-long.json" 2>> "$WORK/$name.err"
    LONG["$name"]=$(llama_tps "$WORK/$name-long.json" "$PROMPT_LONG" 0)
  fi
  if (( ${#PIDS[@]} > 0 )); then
    local b0 b1 b2
    b0=$(io_bytes)
    "$LLAMA_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -r 1 -p 0 -n "$TG_SHORT" "$@" > /dev/null 2>> "$WORK/$name.err"
    b1=$(io_bytes)
    "$LLAMA_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -r 1 -p 0 -n "$TG_LONG" "$@" > /dev/null 2>> "$WORK/$name.err"
    b2=$(io_bytes)
    WIRE["$name"]=$(( ((b2 - b1) - (b1 - b0)) / (TG_LONG - TG_SHORT) ))
  fi
}

# --- moe-node ----------------------------------------------------------------------------
# `moe-node bench` prints a llama-bench-style markdown table: "| model | backend | test | t/s |".
moe_tps() { awk -F'|' -v t="$2" '$4 ~ "^ *"t" *$" {split($5, a, " "); print a[1]}' "$1"; }
moe_run() { # NAME EXTRA_ARGS...
  local name="$1"; shift
  "$BIN" bench -m "$MODEL" -t "$THREADS" -r 1 -p 512 -n "$TG" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  PP["$name"]=$(moe_tps "$WORK/$name.out" pp512)
  TGS["$name"]=$(moe_tps "$WORK/$name.out" "tg$TG")
  if (( PROMPT_LONG > 0 )); then
    "$BIN" bench -m "$MODEL" -t "$THREADS" -r 1 -p "$PROMPT_LONG" -n 0 --ctx-size $((PROMPT_LONG + 64)) "$@" > "$WORK/$name-long.out" 2>> "$WORK/$name.err"
    LONG["$name"]=$(moe_tps "$WORK/$name-long.out" "pp$PROMPT_LONG")
  fi
  if (( ${#PIDS[@]} > 0 )); then
    local b0 b1 b2
    b0=$(io_bytes)
    "$BIN" bench -m "$MODEL" -t "$THREADS" -r 1 -p 0 -n "$TG_SHORT" "$@" > /dev/null 2>> "$WORK/$name.err"
    b1=$(io_bytes)
    "$BIN" bench -m "$MODEL" -t "$THREADS" -r 1 -p 0 -n "$TG_LONG" "$@" > /dev/null 2>> "$WORK/$name.err"
    b2=$(io_bytes)
    WIRE["$name"]=$(( ((b2 - b1) - (b1 - b0)) / (TG_LONG - TG_SHORT) ))
  fi
}
# Starts expert nodes for "name=shards" pairs and writes the router's placement to $WORK/$1.toml
# (a "router=..." pair becomes the router's own share: addr = "local").
moe_cluster() {
  local plan="$1"; shift
  : > "$WORK/$plan.toml"
  local spec n shards
  for spec in "$@"; do
    n="${spec%%=*}" shards="${spec#*=}"
    if [[ $n == router ]]; then
      printf '[[node]]\nname = "router"\naddr = "local"\nshards = "%s"\n\n' "$shards" >> "$WORK/$plan.toml"
      continue
    fi
    "$BIN" --role expert --model "$MODEL" --shards "$shards" --node "$n" --secret-file "$WORK/secret" \
      --listen 127.0.0.1:0 --threads "$THREADS" > "$WORK/$n.out" 2> "$WORK/$n.err" &
    PIDS+=($!)
    wait_for "$WORK/$n.out" "listening on" "expert node $n"
    printf '[[node]]\nname = "%s"\naddr = "%s"\nshards = "%s"\n\n' "$n" "$(awk '/listening on/ {print $3; exit}' "$WORK/$n.out")" "$shards" >> "$WORK/$plan.toml"
  done
}

declare -A PP TGS LONG WIRE
echo "== llama.cpp, one process" >&2
llama_run llama
echo "== llama.cpp RPC: 3 ggml-rpc-server" >&2
RPC=()
for i in 1 2 3; do
  port=$(free_port)
  "$LLAMA_BIN/ggml-rpc-server" -H 127.0.0.1 -p "$port" -t "$THREADS" > "$WORK/rpc$i.out" 2> "$WORK/rpc$i.err" &
  PIDS+=($!)
  RPC+=("127.0.0.1:$port")
done
for i in 1 2 3; do
  deadline=$((SECONDS + 60))
  until ss -ltnH "sport = :${RPC[$((i - 1))]##*:}" | grep -q .; do
    (( SECONDS < deadline )) || { echo "ggml-rpc-server $i did not start" >&2; cat "$WORK/rpc$i.err" >&2; exit 1; }
    sleep 0.2
  done
done
llama_run llama_rpc --rpc "$(IFS=,; echo "${RPC[*]}")" -ngl 99
stop_all

echo "== moe-node, one process" >&2
moe_run moe
echo "== moe-node: router + 3 expert nodes" >&2
moe_cluster three e1=0-127 e2=128-255 e3=256-383
moe_run moe_3 --placement "$WORK/three.toml" --secret-file "$WORK/secret"
echo "== moe-node: router + 3 expert nodes, q8 hidden states on the wire" >&2
moe_run moe_3q8 --placement "$WORK/three.toml" --secret-file "$WORK/secret" --wire-dtype q8
stop_all
echo "== moe-node: router with local experts + 3 expert nodes" >&2
moe_cluster four router=0-95 e1=96-191 e2=192-287 e3=288-383
moe_run moe_4 --placement "$WORK/four.toml" --secret-file "$WORK/secret"
stop_all

ttft() { [[ -n "${1:-}" ]] && awk -v n="$PROMPT_LONG" -v t="$1" 'BEGIN {printf "%.2f", n / t}' || echo "-"; }
ratio() { [[ -n "${1:-}" && -n "${2:-}" ]] && awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}' || echo "-"; }
echo
echo "### $(basename "$MODEL"), $THREADS thread(s) per process, loopback ${RATE:+shaped to $RATE }in a namespace, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| system | pp512 t/s | tg$TG t/s | TTFT at $PROMPT_LONG tokens (s) | wire bytes / decoded token |"
echo "|---|---:|---:|---:|---:|"
for s in llama llama_rpc moe moe_3 moe_3q8 moe_4; do
  case $s in
    llama) label="llama.cpp, one process" ;;
    llama_rpc) label="llama.cpp RPC, 3 ggml-rpc-server (layers split)" ;;
    moe) label="moe-node, one process" ;;
    moe_3) label="moe-node, router + 3 expert nodes" ;;
    moe_3q8) label="moe-node, router + 3 expert nodes, --wire-dtype q8" ;;
    moe_4) label="moe-node, router (1/4 of experts) + 3 expert nodes" ;;
  esac
  echo "| $label | ${PP[$s]:-} | ${TGS[$s]:-} | $(ttft "${LONG[$s]:-}") | ${WIRE[$s]:--} |"
done
echo
echo "| ratio to llama.cpp RPC | pp512 | tg$TG | TTFT (RPC / moe-node) |"
echo "|---|---:|---:|---:|"
for s in moe_3 moe_3q8 moe_4; do
  echo "| $s | $(ratio "${PP[$s]:-}" "${PP[llama_rpc]:-}") | $(ratio "${TGS[$s]:-}" "${TGS[llama_rpc]:-}") | $(ratio "${LONG[$s]:-}" "${LONG[llama_rpc]:-}") |"
done
