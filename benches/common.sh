# Sourced by the benchmark scripts that compare with llama.cpp: builds moe-node (release) and
# llama.cpp (benches/llama_baseline.sh), writes the synth model once, and sets
#   BIN        the moe-node binary
#   LLAMA_BIN  llama.cpp's bin directory (kept when already set)
#   MODEL      /tmp/moe-vs-llama/PRESET-TYPE.gguf
# usage: source benches/common.sh LLAMA_DIR PRESET TYPE   (with ROOT set to the repository)
# Also: wait_for FILE PATTERN WHAT, which waits (120 s at most) until a started process
# writes PATTERN to its FILE (e.g. an expert node's "listening on"), else prints FILE and its
# .err sibling and exits.
prepare_llama_comparison() {
    local llama_dir="$1" preset="$2" type="$3"
    BIN="$ROOT/target/release/moe-node"
    cargo build --release -p moe-node --manifest-path "$ROOT/Cargo.toml" >&2
    # An already built llama.cpp can be given as LLAMA_BIN (its bin directory).
    LLAMA_BIN="${LLAMA_BIN:-$("$ROOT/benches/llama_baseline.sh" "$llama_dir" | tail -n 1)}"
    MODEL="/tmp/moe-vs-llama/${preset}-${type}.gguf"
    mkdir -p "$(dirname "$MODEL")"
    [[ -f "$MODEL" ]] || "$BIN" synth --preset "$preset" --type "$type" --out "$MODEL" >&2
}

wait_for() { # FILE PATTERN WHAT
  local deadline=$((SECONDS + 120))
  until grep -qs "$2" "$1"; do
    (( SECONDS < deadline )) || { echo "$3 did not start:" >&2; cat "$1" "${1%.out}.err" >&2 2>/dev/null; exit 1; }
    sleep 0.2
  done
}
