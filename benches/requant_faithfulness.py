#!/usr/bin/env python3
"""Fast mode against Exact mode on GGUF files that have no reference logits (for example the
reference fixture requantized by llama-quantize into IQ2_XXS, IQ1_S, ...): for every case of a
fixture manifest (its token ids), teacher-forced logits from `moe-node logits --exact` and
`--fast`, then per file the share of positions whose argmax agrees (top-1) and the mean and
largest `KL(exact || fast)` of the softmax distributions (the measure of
tests/tests/fast_faithfulness.rs, with Exact in place of the reference). Prints a markdown
table.

    python3 benches/requant_faithfulness.py --bin target/release/moe-node \
        --manifest ../shared/fixtures/kimi-k25-kq/manifest.json A.gguf B.gguf ...

Needs numpy. Each file's most common tensor type (by bytes) is printed beside it (needs gguf;
else "?").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np


def log_softmax(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    m = v.max(axis=-1, keepdims=True)
    return v - m - np.log(np.exp(v - m).sum(axis=-1, keepdims=True))


def logits(bin_: str, model: Path, tokens: list[int], mode: str, out: Path) -> np.ndarray:
    subprocess.run(
        [bin_, "logits", "-m", str(model), "--tokens", ",".join(map(str, tokens)),
         "--out", str(out), mode],
        check=True, stdout=subprocess.DEVNULL,
    )
    return np.load(out)


def main_type(model: Path) -> str:
    try:
        from gguf import GGUFReader
    except ImportError:
        return "?"
    sizes: Counter[str] = Counter()
    for t in GGUFReader(str(model)).tensors:
        sizes[t.tensor_type.name] += int(t.n_bytes)
    return ", ".join(f"{k} {v / sum(sizes.values()):.0%}" for k, v in sizes.most_common(3))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("models", nargs="+", type=Path)
    a = ap.parse_args()
    cases = json.loads(a.manifest.read_text())["cases"]
    print("| file | tensor types (share of bytes) | positions | Fast top-1 vs Exact | mean KL(Exact‖Fast) | max KL |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            top1, kls = 0, []
            for i, case in enumerate(cases):
                e = logits(a.bin, model, case["tokens"], "--exact", Path(tmp) / f"e{i}.npy")
                f = logits(a.bin, model, case["tokens"], "--fast", Path(tmp) / f"f{i}.npy")
                assert np.isfinite(e).all() and np.isfinite(f).all(), model
                top1 += int((e.argmax(-1) == f.argmax(-1)).sum())
                le, lf = log_softmax(e), log_softmax(f)
                kls.extend((np.exp(le) * (le - lf)).sum(-1).tolist())
            n = len(kls)
            print(f"| {model.name} | {main_type(model)} | {n} | {top1 / n:.3f} | "
                  f"{np.mean(kls):.2e} | {np.max(kls):.2e} |", flush=True)


if __name__ == "__main__":
    main()
