#!/usr/bin/env bash
# Downloads llama.cpp (vendored in the llama_cpp_python sdist on PyPI) and builds the CPU tools
# used for baseline comparisons: llama-completion, llama-cli, llama-bench, llama-tokenize,
# llama-quantize, ggml-rpc-server (RPC baseline). Idempotent: re-running skips the download/unpack when present and lets cmake
# rebuild only what changed. llama.cpp sources stay in DIR, outside this repository.
#
# usage: benches/llama_baseline.sh DIR [JOBS]
#   DIR   where to download and build (e.g. /work/llama); created if missing
#   JOBS  parallel build jobs (default 2)
# Afterwards the binaries are in DIR/llama.cpp/build/bin/ and the script prints that path.
set -euo pipefail

DIR="${1:?usage: $0 DIR [JOBS]}"
JOBS="${2:-2}"
TARGETS=(llama-completion llama-cli llama-bench llama-tokenize llama-quantize ggml-rpc-server)

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
cd "$DIR"

if [ ! -e "$DIR/llama.cpp/CMakeLists.txt" ]; then
    python3 -m pip install --quiet scikit-build-core cmake
    if ! ls "$DIR"/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
        python3 -m pip download --no-deps --no-binary llama_cpp_python --no-build-isolation \
            llama_cpp_python -d "$DIR"
    fi
    SDIST="$(ls "$DIR"/llama_cpp_python-*.tar.gz | sort -V | tail -n 1)"
    tar -xzf "$SDIST" -C "$DIR"
    SRC="$(basename "$SDIST" .tar.gz)"
    ln -sfn "$DIR/$SRC/vendor/llama.cpp" "$DIR/llama.cpp"
fi

cd "$DIR/llama.cpp"
if [ ! -e build/CMakeCache.txt ]; then
    cmake -B build -DGGML_RPC=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON
fi
# Build only the targets that exist in this llama.cpp version (llama-completion is newer).
AVAILABLE="$(cmake --build build --target help 2>/dev/null || true)"
BUILD=()
for t in "${TARGETS[@]}"; do
    if grep -q "$t" <<<"$AVAILABLE"; then BUILD+=("$t"); fi
done
nice -n 19 cmake --build build -j"$JOBS" --target "${BUILD[@]}"
echo "$DIR/llama.cpp/build/bin"
