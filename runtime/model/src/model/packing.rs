//! Fast-mode weights repacked at load: every matrix the forward pass multiplies that this
//! process mapped and that repacks ([`PackedMatrix::packs`]: the k-quants, IQ4_XS, the IQ1_S,
//! IQ2_XXS, IQ2_XS and IQ3_XXS grids, Q8_0, Q4_0 and IQ4_NL, with rows of whole 256-element
//! super-blocks) is copied once into `moe-kernels`' panel layout, and the file's pages it came
//! from are released.
//! Also made here: each head's `attn_k_b` transposed (`[dn, Lkv]`, f32), which the
//! decompressed attention of prompt tokens multiplies the cached latents with (`forward/
//! attention_prompt.rs`); 16 MiB per layer at Kimi K2.5's shapes. f32 because a Q8_0 copy
//! (rounded a second time, then dotted with int8 latents) measured less faithful on the
//! fixtures (the BF16 file's fast top-1 fell from 1.000 to 0.816) and no faster end to end.
//!
//! Decides: what stays mapped and what is copied. Copied: those matrices (at most 12 bytes
//! per row and 256 elements larger than in the file: IQ4_XS 148 vs 136; the k-quants 0-6,
//! Q8_0 4). Mapped: everything else (the
//! embedding rows read by lookup, norms, F32 routers, the types without a panel layout, and
//! the packed matrices' bytes themselves, whose pages are dropped with `MADV_DONTNEED` and
//! read back from the file only if touched again, e.g. by an Exact-mode check or a Vulkan
//! upload). So the resident set stays about the size of the weights, not twice it.

use hashbrown::HashMap;
use moe_kernels::{quantize_rows, GgmlType, PackedMatrix, QMatrix};
use rayon::prelude::*;

use super::{CpuShare, Model};

/// Type of the transposed `attn_k_b` heads (see the module docs).
pub(super) const K_B_T_TYPE: GgmlType = GgmlType::F32;

/// Packed matrices by where their source lies (shard, file offset), and the transposed
/// `attn_k_b` heads.
#[derive(Default)]
pub(super) struct Packed {
    map: HashMap<(usize, usize), PackedMatrix>,
    /// Per layer, per head: `attn_k_b` transposed, as [`K_B_T_TYPE`] rows (`None`: not
    /// mapped here, or a latent width that is not whole blocks).
    k_b_t: Vec<Option<Vec<Vec<u8>>>>,
}

impl Packed {
    /// Packs `model`'s matrices that the CPU computes (`cpu`; see the module docs) on the
    /// rayon pool.
    pub(super) fn build(model: &Model, cpu: CpuShare) -> Self {
        let todo = matrices(model, cpu);
        let map = todo
            .into_par_iter()
            .filter_map(|(key, m)| {
                let p = PackedMatrix::pack(&m)?;
                model.file.release(key.0, key.1, m.data().len());
                Some((key, p))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        let k_b_t = model
            .layers
            .par_iter()
            .map(|l| transposed(model, l).filter(|_| cpu.layers))
            .collect();
        Self { map, k_b_t }
    }

    /// Head `h` of layer `l`'s transposed `attn_k_b` bytes, if made.
    pub(super) fn k_b_t(&self, l: usize, h: usize) -> Option<&[u8]> {
        self.k_b_t.get(l)?.as_ref()?.get(h).map(|v| &v[..])
    }

    /// The packed form of the matrix at `key`, if there is one.
    pub(super) fn get(&self, key: (usize, usize)) -> Option<&PackedMatrix> {
        self.map.get(&key)
    }

    /// Matrices held and their bytes.
    pub(super) fn summary(&self) -> (usize, usize) {
        (
            self.map.len(),
            self.map.values().map(PackedMatrix::bytes).sum(),
        )
    }
}

/// Every mapped matrix of a type that repacks, once per source location, unpacked views.
fn matrices<'a>(model: &'a Model, cpu: CpuShare) -> Vec<((usize, usize), QMatrix<'a>)> {
    let file = &model.file;
    let mut out: HashMap<(usize, usize), QMatrix<'a>> = HashMap::new();
    let mut add = |key: (usize, usize), m: Result<QMatrix<'a>, crate::ModelError>| {
        // A matrix this process did not map (an expert node's non-experts, a router's
        // remote experts) is simply not packed.
        if let Ok(m) = m {
            if PackedMatrix::packs(m.ty(), m.cols()) {
                out.entry(key).or_insert(m);
            }
        }
    };
    if cpu.layers {
        add(model.output.key(), model.output.view(file));
    }
    for l in &model.layers {
        if let Some(moe) = l.moe.as_ref().filter(|_| cpu.routed_experts) {
            for s in [&moe.gate_exps, &moe.up_exps, &moe.down_exps] {
                for e in 0..s.count() {
                    add(s.key(e), s.matrix(file, e, "expert"));
                }
            }
        }
        if !cpu.layers {
            continue;
        }
        let a = &l.attn;
        let mats = [a.q_a.as_ref(), Some(&a.q_b), Some(&a.kv_a), Some(&a.output)];
        for m in mats.into_iter().flatten() {
            add(m.key(), m.view(file));
        }
        for s in [&a.k_b, &a.v_b] {
            for h in 0..s.count() {
                add(s.key(h), s.matrix(file, h, "head"));
            }
        }
        let ffns = [
            l.dense.as_ref(),
            l.moe.as_ref().and_then(|m| m.shared.as_ref()),
        ];
        for f in ffns.into_iter().flatten() {
            for m in [&f.gate, &f.up, &f.down] {
                add(m.key(), m.view(file));
            }
        }
    }
    out.into_iter().collect()
}

/// Layer `l`'s `attn_k_b` heads (`[Lkv, dn]`) transposed to `[dn, Lkv]` rows of
/// [`K_B_T_TYPE`] (dequantized exactly, transposed, quantized once).
fn transposed(model: &Model, l: &super::LayerWeights) -> Option<Vec<Vec<u8>>> {
    let s = &l.attn.k_b;
    (0..s.count())
        .map(|h| {
            let m = s.matrix(&model.file, h, "head").ok()?;
            let (lkv, dn) = (m.rows(), m.cols());
            let mut w = vec![0f32; lkv * dn];
            for (r, row) in w.chunks_exact_mut(dn.max(1)).enumerate() {
                m.dequantize_row(r, row).ok()?;
            }
            let mut t = vec![0f32; dn * lkv];
            for (r, row) in w.chunks_exact(dn.max(1)).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    t[c * lkv + r] = *v;
                }
            }
            let mut q = vec![0u8; K_B_T_TYPE.row_bytes(lkv).ok()? * dn];
            quantize_rows(K_B_T_TYPE, &t, lkv, &mut q).ok()?;
            Some(q)
        })
        .collect()
}
