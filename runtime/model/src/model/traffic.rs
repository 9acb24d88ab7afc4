//! How many weight bytes a forward step reads: the figure that decides decode speed on a
//! memory-bound machine (`moe-node bench` divides it by the time per token and compares it
//! with the measured memory bandwidth).

use super::{DenseFfn, Model};

impl Model {
    /// Weight bytes one decoded token reads in a single process: every attention, dense-FFN,
    /// shared-expert and router matrix, `n_experts_used` routed experts per MoE layer (each
    /// token reads its own; which ones does not change the count), the output head and one
    /// embedding row. Norm vectors and the KV cache are not counted.
    pub fn decode_weight_bytes(&self) -> u64 {
        let ffn = |f: &DenseFfn| (f.gate.bytes() + f.up.bytes() + f.down.bytes()) as u64;
        let mut total =
            (self.output.bytes() + self.tok_embd.bytes() / self.cfg.vocab.max(1)) as u64;
        for l in &self.layers {
            let a = &l.attn;
            total += a.q_a.as_ref().map_or(0, |m| m.bytes()) as u64;
            total += (a.q_b.bytes() + a.kv_a.bytes() + a.output.bytes()) as u64;
            total += (a.k_b.count() * a.k_b.expert_bytes() + a.v_b.count() * a.v_b.expert_bytes())
                as u64;
            total += l.dense.as_ref().map_or(0, ffn);
            if let Some(m) = &l.moe {
                total += m.gate_inp.bytes() as u64 + m.shared.as_ref().map_or(0, ffn);
                let per_expert = m.gate_exps.expert_bytes()
                    + m.up_exps.expert_bytes()
                    + m.down_exps.expert_bytes();
                total += (self.cfg.n_experts_used * per_expert) as u64;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the k-quant fixture (one dense and one MoE layer, 384 experts, top-8): the count
    /// is the whole file minus the 376 experts a token does not read and all but one
    /// embedding row, within the bytes of the norms and the header.
    #[test]
    fn decode_bytes_are_the_file_less_unread_experts() {
        let path =
            moe_devdata::fixtures::fixtures_dir().join("kimi-k25-kq/kimi-k25-kq-Q4_K_M.gguf");
        let model = Model::open(&path).unwrap();
        let file = std::fs::metadata(&path).unwrap().len();
        let moe = model.layers.iter().find_map(|l| l.moe.as_ref()).unwrap();
        let per_expert = (moe.gate_exps.expert_bytes()
            + moe.up_exps.expert_bytes()
            + moe.down_exps.expert_bytes()) as u64;
        let unread_experts = (model.cfg.n_experts - model.cfg.n_experts_used) as u64 * per_expert;
        let unread_embd =
            model.tok_embd.bytes() as u64 - model.tok_embd.bytes() as u64 / model.cfg.vocab as u64;
        let tied = model.output.name == model.tok_embd.name;
        let want = file - unread_experts - if tied { 0 } else { unread_embd };
        let got = model.decode_weight_bytes();
        // The header (names, metadata, tokenizer) and the f32 norms are not weights read.
        assert!(
            got <= want && want - got < 200_000,
            "counted {got}, file-based {want}"
        );
    }
}
