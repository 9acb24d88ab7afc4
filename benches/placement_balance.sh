#!/usr/bin/env bash
# Planned vs contiguous expert placement on a skewed model, predicted and measured.
#
# 1. synthesizes a skewed model (default: `synth --preset small --layers 3 --type Q8_0
#    --skew 1.0`, 2 MoE layers x 384 experts, low expert ids strongly preferred);
# 2. records a routing trace from one generation (`run --record-routing`);
# 3. plans a 4-node placement from it (`placement plan`, with the contiguous split it is
#    compared with), and a network-aware one for loopback constants (`--network-aware`), and
#    replays the trace against all three (`placement simulate`), once with the default
#    constants (5 Gbit/s, 0.2 ms) and once with loopback-like ones;
# 4. starts 4 real expert nodes (each `--threads 1`) per placement, runs the same prompt
#    through a router REPS times, alternating placements, and reports the median prompt
#    processing and generation times and their ratio planned / contiguous.
#
# Prefill of a long prompt is dominated by expert compute (the output head runs once), so it
# is where balance shows; decode time also contains the router's attention and output head,
# which no placement changes. All processes share this machine's cores: with N cores, at most
# N expert nodes compute at once, which caps what balancing can gain.
#
# usage: benches/placement_balance.sh [MODEL.gguf]    env: REPS (default 3), N_PREDICT (16)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release/moe-node"
REPS="${REPS:-3}"
N_PREDICT="${N_PREDICT:-16}"
cargo build --release -p moe-node --manifest-path "$ROOT/Cargo.toml" >&2
MODEL="${1:-/tmp/moe-placement-bench/small-3L-Q8_0-skew1.gguf}"
if [[ ! -f "$MODEL" ]]; then
  mkdir -p "$(dirname "$MODEL")"
  "$BIN" synth --preset small --layers 3 --type Q8_0 --skew 1.0 --out "$MODEL" >&2
fi
WORK="$(mktemp -d)"
PIDS=()
# CPU seconds (user + system) each running expert node has used, space-separated.
expert_cpu() {
  local pid tck; tck=$(getconf CLK_TCK)
  for pid in "${PIDS[@]}"; do
    awk -v t="$tck" '{printf "%.3f ", ($14 + $15) / t}' "/proc/$pid/stat"
  done
}
stop_experts() { local pid; for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; PIDS=(); }
cleanup() { stop_experts; rm -rf "$WORK"; }
trap cleanup EXIT
head -c 48 /dev/urandom | base64 > "$WORK/secret"

SENTENCE="Mixture of experts models route every token to a few experts chosen by a gate, and the load on each expert depends on the text."
PROMPT=""
for _ in $(seq 1 12); do PROMPT="$PROMPT $SENTENCE"; done
TRACE_PROMPT="A different text for the trace: the planner must generalize from recorded routing to new prompts, so it sees other words than the benchmark. $SENTENCE"

echo "== recording a routing trace" >&2
"$BIN" run -m "$MODEL" -p "$TRACE_PROMPT" -n 32 --ignore-eos --record-routing "$WORK/trace" > /dev/null 2> "$WORK/record.err"

NODES="e1=1,e2=1,e3=1,e4=1"
echo
echo "### placement plan --nodes $NODES --replicas 8"
"$BIN" placement plan --trace "$WORK/trace" --nodes "$NODES" --replicas 8 \
  --out "$WORK/planned.toml" --contiguous-out "$WORK/contiguous.toml"
echo
echo "### placement plan --nodes $NODES --replicas 8 --network-aware (loopback constants)"
"$BIN" placement plan --trace "$WORK/trace" --nodes "$NODES" --replicas 8 --network-aware \
  --link-gbit 40 --latency-ms 0.03 --out "$WORK/network.toml"
echo
echo "### placement simulate (default constants)"
"$BIN" placement simulate --trace "$WORK/trace" --placement "$WORK/contiguous.toml" "$WORK/planned.toml" "$WORK/network.toml" | tee "$WORK/sim-default.txt"
echo
echo "### placement simulate (loopback: 40 Gbit/s, 0.03 ms)"
"$BIN" placement simulate --trace "$WORK/trace" --placement "$WORK/contiguous.toml" "$WORK/planned.toml" "$WORK/network.toml" \
  --link-gbit 40 --latency-ms 0.03 | tee "$WORK/sim-loopback.txt"

# Starts e1..e4 for placement file $1 and writes the router's copy with real addresses to $2.
start_cluster() {
  local plan="$1" out="$2" text n
  text="$(cat "$plan")"
  rm -f "$WORK"/e?.out  # a previous cluster's "listening on" must not be read
  for n in e1 e2 e3 e4; do
    "$BIN" --role expert --model "$MODEL" --placement "$plan" --node "$n" --secret-file "$WORK/secret" \
      --listen 127.0.0.1:0 --threads 1 > "$WORK/$n.out" 2> "$WORK/$n.err" &
    PIDS+=($!)
  done
  for n in e1 e2 e3 e4; do
    local deadline=$((SECONDS + 120))
    until grep -qs "listening on" "$WORK/$n.out"; do
      (( SECONDS < deadline )) || { echo "expert $n did not start" >&2; cat "$WORK/$n.err" >&2; exit 1; }
      sleep 0.2
    done
    text="${text//addr = \"$n:7000\"/addr = \"$(awk '{print $3}' "$WORK/$n.out")\"}"
  done
  printf '%s\n' "$text" > "$out"
}

# Prints "prompt_s gen_s" of one run through placement $1 (extra arguments are passed on).
timed_run() {
  local plan="$1"; shift
  "$BIN" run -m "$MODEL" -p "$PROMPT" -n "$N_PREDICT" --ignore-eos --threads 1 \
    --placement "$plan" --secret-file "$WORK/secret" "$@" > /dev/null 2> "$WORK/run.err"
  sed -nE 's/.*prompt: [0-9]+ tokens in ([0-9.]+) s.*generation: [0-9]+ tokens in ([0-9.]+) s.*/\1 \2/p' "$WORK/run.err"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

: > "$WORK/contiguous.times"; : > "$WORK/planned.times"; : > "$WORK/network.times"
for rep in $(seq 1 "$REPS"); do
  for p in contiguous planned network; do
    start_cluster "$WORK/$p.toml" "$WORK/$p-live.toml"
    extra=()
    # The first run also records the benchmark's own routing, to predict exactly this workload.
    [[ $rep == 1 && $p == contiguous ]] && extra=(--record-routing "$WORK/bench.trace")
    cpu0=$(expert_cpu)
    timed=$(timed_run "$WORK/$p-live.toml" "${extra[@]}")
    cpu1=$(expert_cpu)
    # Expert CPU seconds during the run: the busiest node's and the sum over nodes.
    cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {n = split(a, x); split(b, y); m = 0; s = 0;
      for (i = 1; i <= n; i++) { d = y[i] - x[i]; s += d; if (d > m) m = d } printf "%.3f %.3f", m, s}')
    echo "$timed $cpu" >> "$WORK/$p.times"
    stop_experts
    echo "rep $rep $p: prompt_s gen_s max_node_cpu_s sum_cpu_s = $(tail -1 "$WORK/$p.times")" >&2
  done
done

c_pp=$(awk '{print $1}' "$WORK/contiguous.times" | median); p_pp=$(awk '{print $1}' "$WORK/planned.times" | median)
c_tg=$(awk '{print $2}' "$WORK/contiguous.times" | median); p_tg=$(awk '{print $2}' "$WORK/planned.times" | median)
c_mx=$(awk '{print $3}' "$WORK/contiguous.times" | median); p_mx=$(awk '{print $3}' "$WORK/planned.times" | median)
c_sum=$(awk '{print $4}' "$WORK/contiguous.times" | median); p_sum=$(awk '{print $4}' "$WORK/planned.times" | median)
n_pp=$(awk '{print $1}' "$WORK/network.times" | median); n_tg=$(awk '{print $2}' "$WORK/network.times" | median)
# The simulate table's ratio row: contiguous (1), planned, network-aware.
pred() { awk -v c="$2" '/^predicted time \/ first/ {print $(NF - c)}' "$1"; }
pred_default=$(pred "$WORK/sim-default.txt" 1); pred_default_n=$(pred "$WORK/sim-default.txt" 0)
pred_loop=$(pred "$WORK/sim-loopback.txt" 1); pred_loop_n=$(pred "$WORK/sim-loopback.txt" 0)
echo
echo "### placement simulate on the benchmark's own routing (loopback constants)"
"$BIN" placement simulate --trace "$WORK/bench.trace" --placement "$WORK/contiguous.toml" "$WORK/planned.toml" "$WORK/network.toml" \
  --link-gbit 40 --latency-ms 0.03 | tee "$WORK/sim-bench.txt"
pred_bench=$(pred "$WORK/sim-bench.txt" 1); pred_bench_n=$(pred "$WORK/sim-bench.txt" 0)
prompt_tokens=$(sed -nE 's/.*prompt: ([0-9]+) tokens.*/\1/p' "$WORK/run.err")
echo
echo "### measured: 4 expert nodes (--threads 1) + router (--threads 1) on 127.0.0.1, median of $REPS"
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
echo "| | contiguous | planned | planned / contiguous |"
echo "|---|---|---|---|"
echo "| measured prompt processing, $prompt_tokens tokens (s) | $c_pp | $p_pp | $(ratio "$p_pp" "$c_pp") |"
echo "| measured generation, $N_PREDICT tokens (s) | $c_tg | $p_tg | $(ratio "$p_tg" "$c_tg") |"
echo "| measured prompt processing, network-aware plan (s) | $c_pp | $n_pp | $(ratio "$n_pp" "$c_pp") |"
echo "| measured generation, network-aware plan (s) | $c_tg | $n_tg | $(ratio "$n_tg" "$c_tg") |"
echo "| measured busiest expert node CPU (s) | $c_mx | $p_mx | $(ratio "$p_mx" "$c_mx") |"
echo "| measured expert CPU, all nodes (s) | $c_sum | $p_sum | $(ratio "$p_sum" "$c_sum") |"
echo "| predicted MoE time, recorded trace, default constants (planned; network-aware) | | | $pred_default; $pred_default_n |"
echo "| predicted MoE time, recorded trace, loopback constants (planned; network-aware) | | | $pred_loop; $pred_loop_n |"
echo "| predicted MoE time, benchmark's own routing, loopback (planned; network-aware) | | | $pred_bench; $pred_bench_n |"
echo
echo "model: $MODEL ($(stat -c %s "$MODEL") bytes)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
