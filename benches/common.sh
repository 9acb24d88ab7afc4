# Sourced by the benchmark scripts that compare with llama.cpp: builds moe-node (release) and
# llama.cpp (benches/llama_baseline.sh), writes the synth model once, and sets
#   BIN        the moe-node binary
#   LLAMA_BIN  llama.cpp's bin directory (kept when already set)
#   MODEL      /tmp/moe-vs-llama/PRESET-TYPE.gguf
# usage: source benches/common.sh LLAMA_DIR PRESET TYPE   (with ROOT set to the repository)
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
