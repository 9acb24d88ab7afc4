#!/usr/bin/env bash
# Speculative decoding's economics (issue #12), in one run on one synth file:
#  1. the cost of a verify step: one forward over k = 1, 2, 4, 8 generated tokens at depth
#     DEPTH (`moe-node bench -v`), single process and as a router with the routed experts on
#     3 expert nodes (127.0.0.1, port 0; all killed on exit), as ms per step and the ratio to
#     k = 1;
#  2. the n-gram drafter's acceptance on copy-heavy outputs (a file repeated with a rename, a
#     file repeated with a function added) and on an output that copies nothing (another
#     file), replayed through the engine's drafting (`draft::replay`, the rule the generation
#     loop applies: examples/draft_acceptance.rs), tokenized by the model's vocabulary, with
#     the decode speedup those acceptances give at each setup's measured costs. A
#     random-weight model does not copy its prompt, so acceptance is replayed over a known
#     output instead of generated.
# usage: benches/speculative.sh
#   env: PRESET (small), TYPE (Q4_K), THREADS per process (2), DEPTH (4096), REPS (5),
#        KS (1,2,4,8), DRAFT_MAX (list for the replay, 2,4,8)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/benches/common.sh"
PRESET="${PRESET:-small}" TYPE="${TYPE:-Q4_K}" THREADS="${THREADS:-2}" DEPTH="${DEPTH:-4096}"
REPS="${REPS:-5}" KS="${KS:-1,2,4,8}" DRAFT_MAX="${DRAFT_MAX:-2,4,8}"

cargo build --release -p moe-node --manifest-path "$ROOT/Cargo.toml" >&2
cargo build --release -p moe-engine --example draft_acceptance --manifest-path "$ROOT/Cargo.toml" >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET/release/moe-node"
REPLAY="$TARGET/release/examples/draft_acceptance"
MODEL="/tmp/moe-vs-llama/${PRESET}-${TYPE}.gguf"
mkdir -p "$(dirname "$MODEL")"
[[ -f "$MODEL" ]] || "$BIN" synth --preset "$PRESET" --type "$TYPE" --out "$MODEL" >&2

WORK="$(mktemp -d)"
PIDS=()
stop_all() { local p; for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap 'stop_all; rm -rf "$WORK"' EXIT
head -c 48 /dev/urandom | base64 > "$WORK/secret"

# `bench -v` -> "k:ms" pairs (ms per verify step = k / mean t/s).
verify_costs() { # NAME [bench args]
  local name="$1"; shift
  "$BIN" bench -m "$MODEL" -t "$THREADS" -r "$REPS" -p 0 -n 0 -v "$KS" -d "$DEPTH" \
    --ctx-size $((DEPTH + 64)) "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" \
    || { echo "bench ($name) failed:" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  awk -F'|' '$4 ~ /vf[0-9]+/ { split($4, a, " "); k = substr(a[1], 3); split($5, b, " ");
    printf "%s%d:%.3f", sep, k, 1000 * k / b[1]; sep = "," }' "$WORK/$name.out"
}

echo "== verify costs, one process" >&2
SINGLE="$(verify_costs single)"
echo "== verify costs, router + 3 expert nodes" >&2
: > "$WORK/three.toml"
for spec in e1=0-127 e2=128-255 e3=256-383; do
  n="${spec%%=*}" shards="${spec#*=}"
  "$BIN" --role expert --model "$MODEL" --shards "$shards" --node "$n" --secret-file "$WORK/secret" \
    --listen 127.0.0.1:0 --threads "$THREADS" > "$WORK/$n.out" 2> "$WORK/$n.err" &
  PIDS+=($!)
  wait_for "$WORK/$n.out" "listening on" "expert node $n"
  printf '[[node]]\nname = "%s"\naddr = "%s"\nshards = "%s"\n\n' "$n" \
    "$(awk '/listening on/ {print $3; exit}' "$WORK/$n.out")" "$shards" >> "$WORK/three.toml"
done
CLUSTER="$(verify_costs cluster --placement "$WORK/three.toml" --secret-file "$WORK/secret")"
stop_all

echo
echo "### verify step cost, $(basename "$MODEL"), depth $DEPTH, $THREADS thread(s) per process, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| k | one process ms | cost / k=1 | router + 3 expert nodes ms | cost / k=1 |"
echo "|---:|---:|---:|---:|---:|"
python3 - "$SINGLE" "$CLUSTER" <<'EOF'
import sys
s = dict(p.split(":") for p in sys.argv[1].split(","))
c = dict(p.split(":") for p in sys.argv[2].split(","))
for k in sorted(s, key=int):
    a, b = float(s[k]), float(c.get(k, "nan"))
    print(f"| {k} | {a:.2f} | {a / float(s['1']):.2f} | {b:.2f} | {b / float(c['1']):.2f} |")
EOF

# Copy-heavy tasks built from this repository's files: (prompt, output) token files.
SRC="$ROOT/actors/engine/src/draft.rs"
OTHER="$ROOT/actors/engine/src/stop.rs"
tok() { "$BIN" tokenize -m "$MODEL" --no-special --text "$1" > "$2"; }
FILE="$(cat "$SRC")"
tok "Rename \`history\` to \`past\` in this file and print all of it:
\`\`\`rust
$FILE
\`\`\`
" "$WORK/p_rename"
tok "\`\`\`rust
${FILE//history/past}
\`\`\`" "$WORK/o_rename"
tok "Add a function \`is_empty_draft\` after \`ngram_draft\` and print the whole file:
\`\`\`rust
$FILE
\`\`\`
" "$WORK/p_add"
ADDED="$(awk '/^#\[cfg\(test\)\]/ && !done { print "/// Whether `draft` proposes nothing.\npub fn is_empty_draft(draft: &[u32]) -> bool {\n    draft.is_empty()\n}\n"; done = 1 } { print }' "$SRC")"
tok "\`\`\`rust
$ADDED
\`\`\`" "$WORK/o_add"
tok "Write another module of the engine:
" "$WORK/p_new"
tok "\`\`\`rust
$(cat "$OTHER")
\`\`\`" "$WORK/o_new"

for setup in single cluster; do
  costs="$SINGLE"; label="one process"
  [[ $setup == cluster ]] && { costs="$CLUSTER"; label="router + 3 expert nodes"; }
  for task in rename add new; do
    case $task in
      rename) what="file repeated with a rename (copy-heavy)" ;;
      add) what="file repeated with a function added (copy-heavy)" ;;
      new) what="another file (copies nothing)" ;;
    esac
    echo
    echo "### drafting replayed: $what; speedup at the $label costs"
    echo
    "$REPLAY" "$WORK/p_$task" "$WORK/o_$task" "$DRAFT_MAX" "$costs"
  done
done
