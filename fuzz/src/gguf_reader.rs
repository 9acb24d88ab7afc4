//! The GGUF reader target: `GgufFile::from_bytes` on arbitrary bytes, and on whatever it
//! accepts, everything that reads the parsed file (tensor views, `ModelConfig`, `Model`'s
//! shape checks and weight views, the tokenizer).
//!
//! [`gguf_seed_model`] is a complete deepseek2 model of a few kilobytes, so mutations start
//! from a file that gets through every stage rather than only the header parser.

use moe_kernels::GgmlType;
use moe_model::config::ModelConfig;
use moe_model::gguf::{GgufFile, GgufWriter, Value, ValueType};
use moe_model::model::{DenseFfn, Model};
use moe_model::tokenizer::Tokenizer;

/// Parses `data` as GGUF; on success checks every tensor view and loads config, model and
/// tokenizer from it. Must never panic.
pub fn gguf_reader(data: &[u8]) -> Option<()> {
    let file = GgufFile::from_bytes(data.to_vec()).ok()?;
    for info in file.tensor_infos() {
        let view = file.tensor(&info.name).expect("a listed tensor has a view");
        assert_eq!(view.data.len(), info.size, "{}: view size", info.name);
        // Touch both ends: the bounds were checked against the bytes at parse time.
        std::hint::black_box((view.data.first(), view.data.last()));
    }
    for (key, _) in file.metadata_entries() {
        assert!(file.metadata(key).is_some(), "{key}: listed but not found");
    }
    std::hint::black_box(file.fingerprint());
    if let Ok(tokenizer) = Tokenizer::from_gguf(&file) {
        let ids = tokenizer.encode("ab c<|eos|>", true);
        std::hint::black_box(tokenizer.decode(&ids));
    }
    let cfg = ModelConfig::from_gguf(&file).ok()?;
    let model = Model::from_file(file).ok()?;
    assert_eq!(
        model.cfg, cfg,
        "Model's config differs from ModelConfig::from_gguf's"
    );
    touch_weights(&model);
    Some(())
}

/// Builds every weight view `Model` hands out: the whole file is in memory, so each must
/// succeed (a loader that accepted a shape its views cannot hold fails here).
fn touch_weights(model: &Model) {
    let mats = |ffn: &DenseFfn| [ffn.gate.clone(), ffn.up.clone(), ffn.down.clone()];
    let mut all = vec![model.tok_embd.clone(), model.output.clone()];
    for layer in &model.layers {
        let a = &layer.attn;
        all.extend(a.q_a.iter().cloned());
        all.extend([a.q_b.clone(), a.kv_a.clone(), a.output.clone()]);
        let k_heads = [&a.k_b, &a.v_b];
        for w in k_heads {
            for h in [0, model.cfg.n_heads - 1] {
                std::hint::black_box(model.head_mat(w, h).expect("a loaded head is viewable"));
            }
        }
        all.extend(layer.dense.iter().flat_map(mats));
        if let Some(moe) = &layer.moe {
            all.push(moe.gate_inp.clone());
            all.extend(moe.shared.iter().flat_map(mats));
            for w in [&moe.gate_exps, &moe.up_exps, &moe.down_exps] {
                for e in [0, model.cfg.n_experts - 1] {
                    std::hint::black_box(
                        model.expert_mat(w, e).expect("a loaded expert is viewable"),
                    );
                }
            }
        }
    }
    for m in &all {
        std::hint::black_box(model.mat(m).expect("a loaded weight is viewable"));
    }
}

/// Seed inputs: a complete tiny model, and the same model cut in its header and in its data.
pub fn gguf_seeds() -> Vec<Vec<u8>> {
    let model = gguf_seed_model();
    let cuts = [24, model.len() / 4, model.len() / 2, model.len() - 1];
    let mut seeds = vec![model.clone()];
    seeds.extend(cuts.iter().map(|&n| model[..n].to_vec()));
    seeds
}

/// A complete deepseek2 model in F32: 2 layers (1 dense, 1 MoE with 4 experts, top-2, one
/// shared expert), hidden 8, MLA with 2 heads, a 10-token BPE vocabulary.
pub fn gguf_seed_model() -> Vec<u8> {
    const D: u64 = 8;
    const HEADS: u64 = 2;
    const KV_LORA: u64 = 4;
    const NOPE: u64 = 2;
    const ROPE: u64 = 2;
    const V_HEAD: u64 = 2;
    const FF: u64 = 8;
    const FF_EXP: u64 = 4;
    const EXPERTS: u64 = 4;
    let tokens = [
        "a", "b", "c", "ab", "Ġ", "Ġc", "abc", "x", "<|bos|>", "<|eos|>",
    ];
    let vocab = tokens.len() as u64;
    let strings = |items: &[&str]| {
        Value::Array(
            ValueType::String,
            items.iter().map(|s| Value::String(s.to_string())).collect(),
        )
    };
    let u32s = |k: &str, v: u64| (k.to_string(), Value::U32(v as u32));
    let mut w = GgufWriter::new();
    let mut meta = vec![
        (
            "general.architecture".into(),
            Value::String("deepseek2".into()),
        ),
        u32s("deepseek2.block_count", 2),
        u32s("deepseek2.context_length", 64),
        u32s("deepseek2.embedding_length", D),
        u32s("deepseek2.feed_forward_length", FF),
        u32s("deepseek2.attention.head_count", HEADS),
        u32s("deepseek2.attention.kv_lora_rank", KV_LORA),
        u32s("deepseek2.attention.key_length_mla", NOPE + ROPE),
        u32s("deepseek2.attention.value_length_mla", V_HEAD),
        u32s("deepseek2.rope.dimension_count", ROPE),
        u32s("deepseek2.expert_count", EXPERTS),
        u32s("deepseek2.expert_used_count", 2),
        u32s("deepseek2.expert_shared_count", 1),
        u32s("deepseek2.leading_dense_block_count", 1),
        u32s("deepseek2.expert_feed_forward_length", FF_EXP),
        u32s("deepseek2.expert_gating_func", 2),
        u32s("deepseek2.vocab_size", vocab),
        (
            "deepseek2.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("deepseek2.expert_weights_norm".into(), Value::Bool(true)),
        ("deepseek2.expert_weights_scale".into(), Value::F32(2.5)),
        (
            "deepseek2.rope.scaling.type".into(),
            Value::String("yarn".into()),
        ),
        ("deepseek2.rope.scaling.factor".into(), Value::F32(4.0)),
        u32s("deepseek2.rope.scaling.original_context_length", 16),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        (
            "tokenizer.ggml.merges".into(),
            strings(&["a b", "Ġ c", "ab c"]),
        ),
        u32s("tokenizer.ggml.bos_token_id", 8),
        u32s("tokenizer.ggml.eos_token_id", 9),
    ];
    meta.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(
            ValueType::I32,
            (0..vocab)
                .map(|i| Value::I32(if i >= 8 { 3 } else { 1 }))
                .collect(),
        ),
    ));
    for (k, v) in meta {
        w.add_metadata(&k, v).expect("seed metadata");
    }
    let mut tensors: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![D, vocab]),
        ("output_norm.weight".into(), vec![D]),
        ("output.weight".into(), vec![D, vocab]),
    ];
    for l in 0..2 {
        let t = |name: &str, ne: &[u64]| (format!("blk.{l}.{name}.weight"), ne.to_vec());
        tensors.extend([
            t("attn_norm", &[D]),
            t("attn_q", &[D, HEADS * (NOPE + ROPE)]),
            t("attn_kv_a_mqa", &[D, KV_LORA + ROPE]),
            t("attn_kv_a_norm", &[KV_LORA]),
            t("attn_k_b", &[NOPE, KV_LORA, HEADS]),
            t("attn_v_b", &[KV_LORA, V_HEAD, HEADS]),
            t("attn_output", &[HEADS * V_HEAD, D]),
            t("ffn_norm", &[D]),
        ]);
        if l == 0 {
            tensors.extend([
                t("ffn_gate", &[D, FF]),
                t("ffn_up", &[D, FF]),
                t("ffn_down", &[FF, D]),
            ]);
        } else {
            tensors.extend([
                t("ffn_gate_inp", &[D, EXPERTS]),
                (format!("blk.{l}.exp_probs_b.bias"), vec![EXPERTS]),
                t("ffn_gate_exps", &[D, FF_EXP, EXPERTS]),
                t("ffn_up_exps", &[D, FF_EXP, EXPERTS]),
                t("ffn_down_exps", &[FF_EXP, D, EXPERTS]),
                t("ffn_gate_shexp", &[D, FF_EXP]),
                t("ffn_up_shexp", &[D, FF_EXP]),
                t("ffn_down_shexp", &[FF_EXP, D]),
            ]);
        }
    }
    for (name, ne) in &tensors {
        w.add_tensor(name, GgmlType::F32, ne).expect("seed tensor");
    }
    let align = w.alignment() as usize;
    let mut bytes = w.header_bytes();
    for (i, t) in w.tensors().iter().enumerate() {
        bytes.resize(bytes.len().next_multiple_of(align), 0);
        let n = t.nbytes / 4;
        let is_norm = t.name.contains("norm");
        bytes.extend((0..n).flat_map(|j| {
            let v = if is_norm {
                1.0
            } else {
                ((i as u64 * 31 + j * 7) % 13) as f32 / 13.0 - 0.5
            };
            v.to_le_bytes()
        }));
    }
    bytes.resize(bytes.len().next_multiple_of(align), 0);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_model_loads_completely() {
        let file = GgufFile::from_bytes(gguf_seed_model()).unwrap();
        Tokenizer::from_gguf(&file).unwrap();
        let model = Model::from_file(file).unwrap();
        assert_eq!(model.layers.len(), 2);
        assert!(gguf_reader(&gguf_seed_model()).is_some());
    }

    #[test]
    fn cut_seeds_are_refused() {
        for seed in &gguf_seeds()[1..] {
            assert!(gguf_reader(seed).is_none());
        }
    }
}
