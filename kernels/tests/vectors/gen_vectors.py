#!/usr/bin/env python3
"""Writes the dequantization oracle vectors used by `tests/dequant_oracle.rs`.

For every ggml type moe-kernels decodes, makes a few random blocks with a fixed seed (random
bytes, with the fp16 scale fields overwritten by finite values of moderate and subnormal
magnitude), dequantizes them with gguf-py (`gguf.quants.dequantize`, the oracle), and writes
`<TYPE>.json`:

    {"type": "Q4_K", "ggml_id": 12, "block_elems": 256, "block_bytes": 144, "n_blocks": 6,
     "gguf_version": "...", "blocks_hex": "<raw block bytes>",
     "expected_f32_le_hex": "<little-endian f32 of every element, in order>"}

Run from anywhere: `python3 kernels/tests/vectors/gen_vectors.py`. Needs `numpy` and `gguf`.
Output is deterministic for a given gguf-py/numpy.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

SEED = 0x5EED_2025
OUT_DIR = Path(__file__).resolve().parent

# type -> (number of blocks, byte offsets of the fp16 scale/min fields in a block)
TYPES: dict[T, tuple[int, list[int]]] = {
    T.F32: (64, []),
    T.F16: (64, []),
    T.BF16: (64, []),
    T.Q4_0: (24, [0]),
    T.Q4_1: (24, [0, 2]),
    T.Q5_0: (24, [0]),
    T.Q5_1: (24, [0, 2]),
    T.Q8_0: (24, [0]),
    T.IQ4_NL: (24, [0]),
    T.Q2_K: (6, [80, 82]),
    T.Q3_K: (6, [108]),
    T.Q4_K: (6, [0, 2]),
    T.Q5_K: (6, [0, 2]),
    T.Q6_K: (6, [208]),
    T.IQ4_XS: (6, [0]),
    # Added after the others so that their vectors (same seed, same draw order) are unchanged.
    T.IQ2_XXS: (6, [0]),
    T.IQ2_XS: (6, [0]),
    T.IQ2_S: (6, [0]),
    T.IQ3_XXS: (6, [0]),
    T.IQ3_S: (6, [0]),
    T.IQ1_S: (6, [0]),
    T.IQ1_M: (6, []),  # d is split over the scale words: see set_iq1_m_d
    T.TQ1_0: (6, [52]),
    T.TQ2_0: (6, [64]),
}


def set_iq1_m_d(blk: np.ndarray, rng: np.random.Generator) -> None:
    """IQ1_M keeps its f16 `d` in the top 4 bits of the four u16 scale words at 48..56."""
    h = int(np.frombuffer(random_scale(rng).tobytes(), np.uint16)[0])
    for k in range(4):
        w = int(blk[48 + 2 * k]) | (int(blk[49 + 2 * k]) << 8)
        w = (w & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12)
        blk[48 + 2 * k] = w & 0xFF
        blk[49 + 2 * k] = w >> 8


def random_scale(rng: np.random.Generator) -> np.float16:
    """A finite fp16: usually moderate, sometimes subnormal, tiny or zero; either sign."""
    r = rng.random()
    if r < 0.05:
        return np.float16(0.0)
    exp = int(rng.integers(-20, -14)) if r < 0.2 else int(rng.integers(-12, 3))
    mag = rng.uniform(0.5, 1.0) * 2.0**exp
    sign = -1.0 if rng.random() < 0.3 else 1.0
    return np.float16(sign * mag)


def float_blocks(qtype: T, n: int, rng: np.random.Generator) -> np.ndarray:
    """Bit patterns of finite values (plus signed zeros and infinities) for F32/F16/BF16."""
    if qtype == T.F32:
        vals = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
        vals[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-45, -3e-39]  # zeros, infs, subnormals
        return vals.view(np.uint8)
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    exp_mask, mant_mask = (0x7C00, 0x03FF) if qtype == T.F16 else (0x7F80, 0x007F)
    nan = ((bits & exp_mask) == exp_mask) & ((bits & mant_mask) != 0)
    bits[nan] &= np.uint16(~exp_mask & 0xFFFF)  # NaN -> same mantissa, exponent 0
    bits[:4] = [0x0000, 0x8000, exp_mask, exp_mask | 0x8000]  # zeros, +-inf
    return bits.view(np.uint8)


def main() -> None:
    rng = np.random.default_rng(SEED)
    total = 0
    for qtype, (n_blocks, scale_offsets) in TYPES.items():
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        if qtype in (T.F32, T.F16, T.BF16):
            raw = float_blocks(qtype, n_blocks, rng).reshape(n_blocks, block_bytes)
        else:
            raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
            for blk in raw:
                for off in scale_offsets:
                    blk[off : off + 2] = np.frombuffer(random_scale(rng).tobytes(), np.uint8)
                if qtype == T.IQ1_M:
                    set_iq1_m_d(blk, rng)
        expected = np.ascontiguousarray(dequantize(raw.copy(), qtype), dtype=np.float32)
        assert expected.size == n_blocks * block_elems, qtype.name
        doc = {
            "type": qtype.name,
            "ggml_id": int(qtype.value),
            "block_elems": block_elems,
            "block_bytes": block_bytes,
            "n_blocks": n_blocks,
            "gguf_version": version("gguf"),
            "blocks_hex": raw.tobytes().hex(),
            "expected_f32_le_hex": expected.astype("<f4").tobytes().hex(),
        }
        path = OUT_DIR / f"{qtype.name}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        total += path.stat().st_size
    print(f"wrote {len(TYPES)} files, {total} bytes, to {OUT_DIR}")


if __name__ == "__main__":
    main()
