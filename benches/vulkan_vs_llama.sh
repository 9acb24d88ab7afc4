#!/usr/bin/env bash
# moe-node's Vulkan backend beside llama.cpp's Vulkan build on the same synth GGUF, in one
# run: llama-bench -ngl 99 and `moe-node bench --backend vulkan`, pp and tg, then the ratio.
#
# moe-node runs the routed experts, attention, the dense FFNs and the shared experts on the
# device (norms, routing and the output head stay on the CPU). It runs three times: with
# route tiles (a prompt's routes to one expert share each weight read, `--route-tiles on`),
# without (`off`), as the GPU default (`auto` = on for GPUs) is not measured yet, and with
# tiles but the layers on the CPU (`--vulkan-layers off`), to show what moving them to the
# device buys. It needs a real GPU: on Mesa's lavapipe (a CPU driver) the numbers say
# nothing about speed. It has not been run on a GPU yet.
#
# usage: benches/vulkan_vs_llama.sh [LLAMA_DIR] [PRESET] [TYPE]
#   LLAMA_DIR  where benches/llama_baseline.sh keeps the llama.cpp sources (default /work/llama);
#              the Vulkan build goes to LLAMA_DIR/llama.cpp/build-vulkan (needs glslc and the
#              Vulkan headers: Debian's glslc, libvulkan-dev)
#   PRESET     synth preset (default small), TYPE its tensor type (default Q4_K)
# environment: DEVICE (Vulkan device index, default 0), PP (512), TG (128), REPS (2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_DIR="${1:-/work/llama}"
PRESET="${2:-small}"
TYPE="${3:-Q4_K}"
DEVICE="${DEVICE:-0}"
PP="${PP:-512}"; TG="${TG:-128}"; REPS="${REPS:-2}"
source "$ROOT/benches/common.sh"
prepare_llama_comparison "$LLAMA_DIR" "$PRESET" "$TYPE"

"$BIN" devices >&2
SRC="$LLAMA_DIR/llama.cpp"
if [[ ! -x "$SRC/build-vulkan/bin/llama-bench" ]]; then
  cmake -S "$SRC" -B "$SRC/build-vulkan" -DGGML_VULKAN=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release >&2
  cmake --build "$SRC/build-vulkan" --target llama-bench -j "$(nproc)" >&2
fi

llama_json="$(GGML_VK_VISIBLE_DEVICES="$DEVICE" "$SRC/build-vulkan/bin/llama-bench" -m "$MODEL" -ngl 99 \
  -p "$PP" -n "$TG" -r "$REPS" -o json 2>/dev/null)"
moe() { "$BIN" bench --model "$MODEL" -p "$PP" -n "$TG" -r "$REPS" --backend vulkan --device "$DEVICE" "$@"; }
tiles_on="$(moe --route-tiles on)"
tiles_off="$(moe --route-tiles off)"
layers_cpu="$(moe --route-tiles on --vulkan-layers off)"
python3 - "$PP" "$TG" "$llama_json" "$tiles_on" "$tiles_off" "$layers_cpu" <<'PY'
import json, re, sys
pp, tg, llama = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ll = {(f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"): r["avg_ts"] for r in llama}
def rates(md):
    out = {}
    for line in md.splitlines():
        m = re.match(r"\|[^|]*\|[^|]*\| (\w+) \| ([0-9.]+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
runs = [("tiles on", rates(sys.argv[4])), ("tiles off", rates(sys.argv[5])),
        ("tiles on, layers on the CPU", rates(sys.argv[6]))]
print("| test | llama.cpp Vulkan t/s | " + " | ".join(f"moe-node {n} t/s | ratio" for n, _ in runs) + " |")
print("|---|---:|" + "---:|---:|" * len(runs))
for test in (f"pp{pp}", f"tg{tg}"):
    a = ll.get(test)
    got = [r.get(test) for _, r in runs]
    if a and all(got):
        print(f"| {test} | {a:.2f} | " + " | ".join(f"{b:.2f} | {b / a:.3f}" for b in got) + " |")
PY
echo "model: $MODEL; Vulkan device $DEVICE: $("$BIN" devices | sed -n "s/^device $DEVICE: //p")"
