//! Random-weight models with Kimi K2.5's structure, written as GGUF files that llama.cpp loads.
//!
//! What this module decides:
//! - the **structure**: architecture `deepseek2` exactly as llama.cpp's converter writes Kimi
//!   K2.5 (MLA with q/kv LoRA and the split `attn_k_b` / `attn_v_b`, YaRN rope, sigmoid gating
//!   with `exp_probs_b.bias`, normalized and scaled expert weights, one shared expert, one
//!   leading dense block), at three sizes ([`SynthPreset`]);
//! - the **metadata**: every `deepseek2.*` key llama.cpp reads, `general.*`, and a byte-level
//!   BPE tokenizer learned from an embedded text (`synth/vocab.rs`);
//! - the **storage types**: `SynthOptions::ty` for every matrix, F32 for norms, the router
//!   (`ffn_gate_inp`, which llama-quantize never quantizes) and `exp_probs_b`; a matrix whose
//!   rows are not whole blocks of `ty` falls back as llama-quantize does ([`fallback_type`]);
//! - the **values**: deterministic from the seed, scaled `1/sqrt(fan_in)` so activations stay
//!   near unit scale, embeddings N(0, 1), norms near 1, output-head rows of `[PAD]` tokens zero
//!   so generated text is made of real tokens (`synth/weights.rs`).
//!
//! Quantization itself is `moe_kernels::synthesize_row`'s job (`quantize_row`'s round-to-nearest
//! where moe-kernels has a quantizer; for IQ4_NL, IQ4_XS, the IQ1/IQ2/IQ3 grids, TQ1_0 and
//! TQ2_0 stand-in blocks: pseudo-random codes with each block's RMS, fine for random weights);
//! file layout is `gguf::GgufWriter`'s.
//! Tensor data is generated, quantized and written a chunk of rows at a time, so even
//! `kimi-k25-full` files of hundreds of GB never sit in memory.
//!
//! ```text
//! synth/vocab.rs     the BPE vocabulary, merges, special tokens, chat template
//! synth/weights.rs   counter-based PRNG, value initialisers, threaded generate+quantize+write
//! synth/corpus.txt   the text the merges are learned from
//! ```
//!
//! ```no_run
//! use moe_devdata::synth::{synthesize, SynthOptions};
//! let summary = synthesize(&SynthOptions::default(), "tiny.gguf".as_ref()).unwrap();
//! println!("{} tensors, {} bytes", summary.tensors, summary.file_bytes);
//! ```

mod vocab;
mod weights;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moe_kernels::{synthesize_row, GgmlType};

use crate::DevDataError;
use moe_model::gguf::{GgufWriter, Value, ValueType};
pub use vocab::{build_vocab, SynthVocab, CHAT_TEMPLATE, SPECIAL_TOKENS};
pub use weights::{Init, PlannedTensor, CHUNKS_IN_FLIGHT, CHUNK_BYTES_TARGET};

/// Most layers a synthesized model may have (Kimi K2.5 has 61).
pub const SYNTH_LAYERS_MAX: usize = 128;
/// Largest accepted `SynthOptions::skew`.
pub const SYNTH_SKEW_MAX: f32 = 10.0;
/// Kimi K2.5's context length (`deepseek2.context_length`), in tokens.
pub const CONTEXT_LENGTH_TOKENS: u32 = 262_144;
/// YaRN's original context (`rope.scaling.original_context_length`), in tokens.
pub const YARN_ORIGINAL_CONTEXT_TOKENS: u32 = 4096;
/// `rope_theta`.
pub const ROPE_FREQ_BASE: f32 = 50_000.0;
/// YaRN `factor`.
pub const YARN_FACTOR: f32 = 64.0;
/// YaRN `beta_fast` (Kimi K2.5; llama.cpp ignores it for deepseek2).
pub const YARN_BETA_FAST: f32 = 32.0;
/// YaRN `beta_slow`.
pub const YARN_BETA_SLOW: f32 = 1.0;
/// `0.1 * mscale_all_dim`.
pub const YARN_LOG_MULTIPLIER: f32 = 0.1;
/// `rms_norm_eps`.
pub const RMS_NORM_EPS: f32 = 1e-5;
/// `routed_scaling_factor`.
pub const EXPERT_WEIGHTS_SCALE: f32 = 2.827;
/// llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID`.
pub const EXPERT_GATING_SIGMOID: u32 = 2;
/// Spread of RMSNorm weights around 1.
const NORM_SPREAD: f32 = 0.05;
/// Spread of the router's correction bias around its skew term.
const ROUTER_BIAS_NOISE: f32 = 0.02;

/// A model size with Kimi K2.5's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SynthPreset {
    /// Like the reference fixtures: hidden 128, 4 layers, 384 experts of FFN 32, vocab 1024.
    /// Megabytes; the default.
    Tiny,
    /// Hidden 1024, 3 layers, 384 experts of FFN 256, vocab 32768, widths that are whole
    /// k-quant blocks (except `attn_k_b`, as in the real model). About 0.7 B parameters.
    Small,
    /// The `kimi-k25-kq` reference fixture's dimensions: hidden 256, 2 layers, 384 experts of
    /// FFN 256, vocab 1024; every matrix but `attn_k_b` is whole 256-element blocks, so the
    /// 256-block types (k-quants, IQ, TQ) are stored as asked. About 80 M parameters.
    Kq,
    /// Kimi K2.5's real dimensions (hidden 7168, 61 layers, 384 experts of FFN 2048, vocab
    /// 163840); choose the layer count with `SynthOptions::layers` (2 layers ≈ 11 GB at Q4_K).
    KimiK25Full,
}

impl SynthPreset {
    /// Every preset.
    pub const ALL: [SynthPreset; 4] = [Self::Tiny, Self::Kq, Self::Small, Self::KimiK25Full];

    /// Its command-line name: `tiny`, `kq`, `small`, `kimi-k25-full`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Kq => "kq",
            Self::Small => "small",
            Self::KimiK25Full => "kimi-k25-full",
        }
    }

    /// The preset named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Its dimensions, with its own layer count.
    pub fn shape(self) -> SynthShape {
        let kimi = SynthShape {
            hidden: 7168,
            layers: 61,
            dense_ffn: 18432,
            expert_ffn: 2048,
            experts: 384,
            experts_used: 8,
            shared_experts: 1,
            leading_dense: 1,
            heads: 64,
            q_lora: 1536,
            kv_lora: 512,
            qk_nope: 128,
            qk_rope: 64,
            v_head: 128,
            vocab: 163_840,
        };
        match self {
            Self::Tiny => SynthShape {
                hidden: 128,
                layers: 4,
                dense_ffn: 256,
                expert_ffn: 32,
                heads: 4,
                q_lora: 96,
                kv_lora: 64,
                qk_nope: 32,
                qk_rope: 16,
                v_head: 32,
                vocab: 1024,
                ..kimi
            },
            Self::Kq => SynthShape {
                hidden: 256,
                layers: 2,
                dense_ffn: 512,
                expert_ffn: 256,
                heads: 4,
                q_lora: 256,
                kv_lora: 256,
                qk_nope: 64,
                qk_rope: 32,
                v_head: 64,
                vocab: 1024,
                ..kimi
            },
            Self::Small => SynthShape {
                hidden: 1024,
                layers: 3,
                dense_ffn: 2816,
                expert_ffn: 256,
                heads: 8,
                q_lora: 512,
                kv_lora: 256,
                qk_nope: 64,
                qk_rope: 32,
                v_head: 64,
                vocab: 32_768,
                ..kimi
            },
            Self::KimiK25Full => kimi,
        }
    }
}

impl std::fmt::Display for SynthPreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The hyper-parameters of a synthesized model (HF `config.json` names in the docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthShape {
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `intermediate_size` (dense FFN).
    pub dense_ffn: usize,
    /// `moe_intermediate_size`.
    pub expert_ffn: usize,
    /// `n_routed_experts`.
    pub experts: usize,
    /// `num_experts_per_tok`.
    pub experts_used: usize,
    /// `n_shared_experts`.
    pub shared_experts: usize,
    /// `first_k_dense_replace`.
    pub leading_dense: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `q_lora_rank`.
    pub q_lora: usize,
    /// `kv_lora_rank`.
    pub kv_lora: usize,
    /// `qk_nope_head_dim`.
    pub qk_nope: usize,
    /// `qk_rope_head_dim`.
    pub qk_rope: usize,
    /// `v_head_dim`.
    pub v_head: usize,
    /// `vocab_size`.
    pub vocab: usize,
}

/// What to synthesize.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthOptions {
    /// Dimensions.
    pub preset: SynthPreset,
    /// Storage type of the matrices (norms, router and `exp_probs_b` stay F32; see
    /// [`fallback_type`] for rows that are not whole blocks). Must be supported by
    /// `moe_kernels::synthesize_row` (every block format).
    pub ty: GgmlType,
    /// Layer count (1 to [`SYNTH_LAYERS_MAX`]; the first is dense); None = the preset's.
    pub layers: Option<usize>,
    /// PRNG seed; equal options give byte-identical files.
    pub seed: u64,
    /// Router skew for load-balancing experiments, 0 to [`SYNTH_SKEW_MAX`]. 0 = no preference.
    /// Otherwise expert `e` of `E` gets `skew * ln(E / (e + 1)) / ln(E)` added to its
    /// `exp_probs_b` correction bias, which the router adds to the sigmoid scores for
    /// *selection only*: expert 0 gains `skew`, the last expert nothing, in between it falls
    /// like a Zipf log-frequency, so low-numbered experts are chosen more often. Sigmoid
    /// scores spread over roughly ±0.2, so 0.1 is a mild skew and 1.0 a severe one.
    pub skew: f32,
}

impl Default for SynthOptions {
    /// `tiny`, BF16, the preset's layers, seed 0, no skew.
    fn default() -> Self {
        Self {
            preset: SynthPreset::Tiny,
            ty: GgmlType::BF16,
            layers: None,
            seed: 0,
            skew: 0.0,
        }
    }
}

/// What [`synthesize`] wrote.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    /// The file.
    pub path: PathBuf,
    /// Its dimensions (with the layer count used).
    pub shape: SynthShape,
    /// Number of tensors.
    pub tensors: usize,
    /// Number of weights (elements of all tensors).
    pub params: u64,
    /// File size in bytes.
    pub file_bytes: u64,
    /// BPE merges learned for the tokenizer.
    pub merges: usize,
    /// Tensors stored in another type than `SynthOptions::ty` because their rows are not whole
    /// blocks of it (F32 tensors by design are not listed).
    pub fallbacks: Vec<(String, GgmlType)>,
    /// Wall time.
    pub elapsed: Duration,
}

/// The type llama-quantize stores a matrix of row length `ne0` in when asked for `ty`:
/// `ty` itself if `ne0` is whole blocks of it, else Q2_K/Q3_K/TQ1_0/TQ2_0 → Q4_0,
/// Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, IQ1/IQ2/IQ3/IQ4_XS → IQ4_NL, and F16 when even
/// that does not fit
/// (`tensor_type_fallback` in llama.cpp's `src/llama-quant.cpp`).
pub fn fallback_type(ty: GgmlType, ne0: u64) -> GgmlType {
    let fits = |t: GgmlType| ne0.is_multiple_of(t.block_elems() as u64);
    if fits(ty) {
        return ty;
    }
    let next = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::TQ1_0 | GgmlType::TQ2_0 => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::IQ4_XS
        | GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S => GgmlType::IQ4_NL,
        _ => GgmlType::F16,
    };
    if fits(next) {
        next
    } else {
        GgmlType::F16
    }
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a model mostly of type `ty`.
pub fn llama_file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11,
        GgmlType::Q4_K => 14,
        GgmlType::Q5_K => 16,
        GgmlType::Q6_K => 18,
        GgmlType::IQ4_NL => 25,
        GgmlType::IQ4_XS => 30,
        GgmlType::BF16 => 32,
        GgmlType::IQ2_XXS => 19,
        GgmlType::IQ2_XS => 20,
        GgmlType::IQ3_XXS => 23,
        GgmlType::IQ1_S => 24,
        GgmlType::IQ3_S => 26,
        GgmlType::IQ2_S => 28,
        GgmlType::IQ1_M => 31,
        GgmlType::TQ1_0 => 36,
        GgmlType::TQ2_0 => 37,
    }
}

/// The tensors of a model of shape `shape` in file order, with storage types for `ty`.
/// `pad_rows`: the vocabulary's `[PAD]` id range, whose output-head rows are zero.
pub fn tensor_plan(
    shape: &SynthShape,
    ty: GgmlType,
    skew: f32,
    pad_rows: (u64, u64),
) -> Vec<PlannedTensor> {
    let s = shape;
    let inv_sqrt = |fan_in: usize| Init::Normal {
        std: 1.0 / (fan_in as f32).sqrt(),
    };
    let norm = Init::NearOne {
        spread: NORM_SPREAD,
    };
    let mut plan = Vec::new();
    let mut push = |name: String, matrix: bool, ne: &[usize], init: Init| {
        let ne: Vec<u64> = ne.iter().map(|&d| d as u64).collect();
        let ty = if matrix {
            fallback_type(ty, ne[0])
        } else {
            GgmlType::F32
        };
        plan.push(PlannedTensor { name, ty, ne, init });
    };
    push(
        "token_embd.weight".into(),
        true,
        &[s.hidden, s.vocab],
        Init::Normal { std: 1.0 },
    );
    push("output_norm.weight".into(), false, &[s.hidden], norm);
    let head = Init::OutputHead {
        std: 1.0 / (s.hidden as f32).sqrt(),
        pad_rows,
    };
    push("output.weight".into(), true, &[s.hidden, s.vocab], head);
    for l in 0..s.layers {
        let n = |t: &str| format!("blk.{l}.{t}");
        let qk_head = s.qk_nope + s.qk_rope;
        push(n("attn_norm.weight"), false, &[s.hidden], norm);
        push(
            n("attn_q_a.weight"),
            true,
            &[s.hidden, s.q_lora],
            inv_sqrt(s.hidden),
        );
        push(n("attn_q_a_norm.weight"), false, &[s.q_lora], norm);
        push(
            n("attn_q_b.weight"),
            true,
            &[s.q_lora, s.heads * qk_head],
            inv_sqrt(s.q_lora),
        );
        let kv_a = [s.hidden, s.kv_lora + s.qk_rope];
        push(n("attn_kv_a_mqa.weight"), true, &kv_a, inv_sqrt(s.hidden));
        push(n("attn_kv_a_norm.weight"), false, &[s.kv_lora], norm);
        // kv_b_proj [H*(nope+v), kv_lora] split as the converter does: K part transposed to
        // ne [nope, kv_lora, H], V part ne [kv_lora, v, H]; both multiply the kv latent.
        let k_b = [s.qk_nope, s.kv_lora, s.heads];
        push(n("attn_k_b.weight"), true, &k_b, inv_sqrt(s.kv_lora));
        let v_b = [s.kv_lora, s.v_head, s.heads];
        push(n("attn_v_b.weight"), true, &v_b, inv_sqrt(s.kv_lora));
        let o = [s.heads * s.v_head, s.hidden];
        push(
            n("attn_output.weight"),
            true,
            &o,
            inv_sqrt(s.heads * s.v_head),
        );
        push(n("ffn_norm.weight"), false, &[s.hidden], norm);
        if l < s.leading_dense {
            let up = [s.hidden, s.dense_ffn];
            push(n("ffn_gate.weight"), true, &up, inv_sqrt(s.hidden));
            push(n("ffn_up.weight"), true, &up, inv_sqrt(s.hidden));
            let down = [s.dense_ffn, s.hidden];
            push(n("ffn_down.weight"), true, &down, inv_sqrt(s.dense_ffn));
        } else {
            let router = Init::RouterBias {
                skew,
                noise: ROUTER_BIAS_NOISE,
            };
            push(
                n("ffn_gate_inp.weight"),
                false,
                &[s.hidden, s.experts],
                inv_sqrt(s.hidden),
            );
            push(n("exp_probs_b.bias"), false, &[s.experts], router);
            let up = [s.hidden, s.expert_ffn, s.experts];
            push(n("ffn_gate_exps.weight"), true, &up, inv_sqrt(s.hidden));
            push(n("ffn_up_exps.weight"), true, &up, inv_sqrt(s.hidden));
            let down = [s.expert_ffn, s.hidden, s.experts];
            push(
                n("ffn_down_exps.weight"),
                true,
                &down,
                inv_sqrt(s.expert_ffn),
            );
            let shared_ffn = s.expert_ffn * s.shared_experts;
            let up = [s.hidden, shared_ffn];
            push(n("ffn_gate_shexp.weight"), true, &up, inv_sqrt(s.hidden));
            push(n("ffn_up_shexp.weight"), true, &up, inv_sqrt(s.hidden));
            let down = [shared_ffn, s.hidden];
            push(
                n("ffn_down_shexp.weight"),
                true,
                &down,
                inv_sqrt(shared_ffn),
            );
        }
    }
    plan
}

/// The metadata entries of a synthesized model, in file order.
fn metadata(opts: &SynthOptions, s: &SynthShape, vocab: &SynthVocab) -> Vec<(String, Value)> {
    let u32v = |v: usize| Value::U32(v as u32);
    let arch = |k: &str| format!("deepseek2.{k}");
    let strings = |v: &[String]| {
        Value::Array(
            ValueType::String,
            v.iter().map(|t| Value::String(t.clone())).collect(),
        )
    };
    vec![
        (
            "general.architecture".into(),
            Value::String("deepseek2".into()),
        ),
        ("general.type".into(), Value::String("model".into())),
        (
            "general.name".into(),
            Value::String(format!("moe-node synth {}", opts.preset)),
        ),
        (
            "general.alignment".into(),
            Value::U32(moe_model::gguf::GGUF_DEFAULT_ALIGNMENT as u32),
        ),
        (
            "general.file_type".into(),
            Value::U32(llama_file_type(opts.ty)),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
        (arch("block_count"), u32v(s.layers)),
        (arch("context_length"), Value::U32(CONTEXT_LENGTH_TOKENS)),
        (arch("embedding_length"), u32v(s.hidden)),
        (arch("feed_forward_length"), u32v(s.dense_ffn)),
        (arch("attention.head_count"), u32v(s.heads)),
        (arch("attention.head_count_kv"), Value::U32(1)),
        (arch("rope.scaling.type"), Value::String("yarn".into())),
        (arch("rope.scaling.factor"), Value::F32(YARN_FACTOR)),
        (
            arch("rope.scaling.original_context_length"),
            Value::U32(YARN_ORIGINAL_CONTEXT_TOKENS),
        ),
        (
            arch("rope.scaling.yarn_beta_fast"),
            Value::F32(YARN_BETA_FAST),
        ),
        (
            arch("rope.scaling.yarn_beta_slow"),
            Value::F32(YARN_BETA_SLOW),
        ),
        (
            arch("rope.scaling.yarn_log_multiplier"),
            Value::F32(YARN_LOG_MULTIPLIER),
        ),
        (arch("rope.freq_base"), Value::F32(ROPE_FREQ_BASE)),
        (arch("rope.dimension_count"), u32v(s.qk_rope)),
        (
            arch("attention.layer_norm_rms_epsilon"),
            Value::F32(RMS_NORM_EPS),
        ),
        (arch("expert_count"), u32v(s.experts)),
        (arch("expert_used_count"), u32v(s.experts_used)),
        (arch("expert_group_count"), Value::U32(1)),
        (arch("expert_group_used_count"), Value::U32(1)),
        (
            arch("expert_gating_func"),
            Value::U32(EXPERT_GATING_SIGMOID),
        ),
        (arch("expert_feed_forward_length"), u32v(s.expert_ffn)),
        (arch("expert_shared_count"), u32v(s.shared_experts)),
        (
            arch("expert_weights_scale"),
            Value::F32(EXPERT_WEIGHTS_SCALE),
        ),
        (arch("expert_weights_norm"), Value::Bool(true)),
        (arch("leading_dense_block_count"), u32v(s.leading_dense)),
        (arch("vocab_size"), u32v(s.vocab)),
        (arch("attention.q_lora_rank"), u32v(s.q_lora)),
        (arch("attention.kv_lora_rank"), u32v(s.kv_lora)),
        (arch("attention.key_length"), u32v(s.kv_lora + s.qk_rope)),
        (arch("attention.value_length"), u32v(s.kv_lora)),
        (
            arch("attention.key_length_mla"),
            u32v(s.qk_nope + s.qk_rope),
        ),
        (arch("attention.value_length_mla"), u32v(s.v_head)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&vocab.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                ValueType::I32,
                vocab.token_types.iter().map(|&t| Value::I32(t)).collect(),
            ),
        ),
        ("tokenizer.ggml.merges".into(), strings(&vocab.merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(vocab.bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(vocab.eos)),
        ("tokenizer.ggml.eot_token_id".into(), Value::U32(vocab.eot)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHAT_TEMPLATE.into()),
        ),
        (
            "synth.preset".into(),
            Value::String(opts.preset.name().into()),
        ),
        ("synth.seed".into(), Value::U64(opts.seed)),
        ("synth.skew".into(), Value::F32(opts.skew)),
    ]
}

/// Checks `opts` and returns the shape they describe.
fn checked_shape(opts: &SynthOptions) -> Result<SynthShape, DevDataError> {
    let mut shape = opts.preset.shape();
    if let Some(layers) = opts.layers {
        if layers == 0 || layers > SYNTH_LAYERS_MAX {
            return Err(DevDataError::Synth(format!(
                "{layers} layers requested; 1 to {SYNTH_LAYERS_MAX} are allowed"
            )));
        }
        shape.layers = layers;
    }
    if !(0.0..=SYNTH_SKEW_MAX).contains(&opts.skew) {
        return Err(DevDataError::Synth(format!(
            "skew {} is outside 0 to {SYNTH_SKEW_MAX}",
            opts.skew
        )));
    }
    Ok(shape)
}

/// Refuses, before any file is created, a storage type `synthesize_row` cannot write.
fn check_quantizable(plan: &[PlannedTensor]) -> Result<(), DevDataError> {
    let mut types: Vec<GgmlType> = plan.iter().map(|t| t.ty).collect();
    types.sort_by_key(|t| t.id());
    types.dedup();
    for ty in types {
        let probe = vec![0.0f32; ty.block_elems()];
        let mut out = vec![0u8; ty.block_bytes()];
        synthesize_row(ty, &probe, &mut out)
            .map_err(|e| DevDataError::Synth(format!("cannot write {} tensors: {e}", ty.name())))?;
    }
    Ok(())
}

/// Writes a random-weight model described by `opts` to `out` (via `<out>.partial`, renamed when
/// complete). Uses every available core for generation and quantization.
pub fn synthesize(opts: &SynthOptions, out: &Path) -> Result<SynthSummary, DevDataError> {
    let start = Instant::now();
    let shape = checked_shape(opts)?;
    let vocab = build_vocab(shape.vocab)?;
    let plan = tensor_plan(&shape, opts.ty, opts.skew, vocab.pad_rows());
    check_quantizable(&plan)?;

    let mut writer = GgufWriter::new();
    for (key, value) in metadata(opts, &shape, &vocab) {
        writer.add_metadata(&key, value)?;
    }
    for t in &plan {
        writer.add_tensor(&t.name, t.ty, &t.ne)?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let file_bytes = weights::write_tensors(writer.create(out)?, &plan, opts.seed, threads)?;

    let fallbacks = plan
        .iter()
        .filter(|t| t.ty != opts.ty && t.ty != GgmlType::F32)
        .map(|t| (t.name.clone(), t.ty))
        .collect();
    Ok(SynthSummary {
        path: out.to_path_buf(),
        shape,
        tensors: plan.len(),
        params: plan.iter().map(PlannedTensor::elems).sum(),
        file_bytes,
        merges: vocab.merges.len(),
        fallbacks,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_matches_the_converter_for_kimi() {
        let plan = tensor_plan(
            &SynthPreset::KimiK25Full.shape(),
            GgmlType::Q4_K,
            0.0,
            (0, 0),
        );
        // 60 MoE blocks x 18 + 1 dense x 13 + 3 = 1096, as llama.cpp prints for Kimi K2.
        assert_eq!(plan.len(), 1096);
        let find = |n: &str| plan.iter().find(|t| t.name == n).unwrap();
        assert_eq!(find("blk.0.attn_k_b.weight").ne, [128, 512, 64]);
        assert_eq!(find("blk.0.attn_k_b.weight").ty, GgmlType::Q5_0);
        assert_eq!(find("blk.0.attn_v_b.weight").ne, [512, 128, 64]);
        assert_eq!(find("blk.0.attn_q_b.weight").ne, [1536, 12288]);
        assert_eq!(find("blk.0.attn_kv_a_mqa.weight").ne, [7168, 576]);
        assert_eq!(find("blk.1.ffn_down_exps.weight").ne, [2048, 7168, 384]);
        assert_eq!(find("blk.1.ffn_gate_inp.weight").ty, GgmlType::F32);
        assert_eq!(find("blk.1.exp_probs_b.bias").ty, GgmlType::F32);
        assert_eq!(find("blk.60.ffn_up_shexp.weight").ne, [7168, 2048]);
    }

    #[test]
    fn fallbacks_follow_llama_quantize() {
        assert_eq!(fallback_type(GgmlType::Q4_K, 256), GgmlType::Q4_K);
        assert_eq!(fallback_type(GgmlType::Q4_K, 128), GgmlType::Q5_0);
        assert_eq!(fallback_type(GgmlType::Q2_K, 128), GgmlType::Q4_0);
        assert_eq!(fallback_type(GgmlType::Q6_K, 64), GgmlType::Q8_0);
        assert_eq!(fallback_type(GgmlType::Q8_0, 48), GgmlType::F16);
        assert_eq!(fallback_type(GgmlType::Q4_K, 48), GgmlType::F16);
        assert_eq!(fallback_type(GgmlType::BF16, 7), GgmlType::BF16);
        assert_eq!(fallback_type(GgmlType::IQ2_XXS, 128), GgmlType::IQ4_NL);
        assert_eq!(fallback_type(GgmlType::IQ1_M, 96), GgmlType::IQ4_NL);
        assert_eq!(fallback_type(GgmlType::TQ1_0, 64), GgmlType::Q4_0);
        assert_eq!(fallback_type(GgmlType::IQ3_S, 48), GgmlType::F16);
    }

    /// The `kq` preset stores every matrix but `attn_k_b` (rows of `qk_nope` = 64) in a
    /// 256-block type as asked, so synth models of it exercise that type's kernels.
    #[test]
    fn kq_preset_keeps_256_block_types() {
        for ty in [GgmlType::IQ2_XXS, GgmlType::TQ1_0, GgmlType::Q4_K] {
            let plan = tensor_plan(&SynthPreset::Kq.shape(), ty, 0.0, (0, 0));
            for t in &plan {
                let want = if t.name.ends_with("attn_k_b.weight") {
                    fallback_type(ty, 64)
                } else if t.ne.len() == 1 || t.name.contains("ffn_gate_inp") {
                    GgmlType::F32
                } else {
                    ty
                };
                assert_eq!(t.ty, want, "{} ({ty:?})", t.name);
            }
        }
    }

    #[test]
    fn refuses_bad_options() {
        let dir = std::env::temp_dir();
        let bad_layers = SynthOptions {
            layers: Some(SYNTH_LAYERS_MAX + 1),
            ..Default::default()
        };
        assert!(synthesize(&bad_layers, &dir.join("never.gguf")).is_err());
        let zero = SynthOptions {
            layers: Some(0),
            ..Default::default()
        };
        assert!(synthesize(&zero, &dir.join("never.gguf")).is_err());
        let skew = SynthOptions {
            skew: f32::NAN,
            ..Default::default()
        };
        assert!(synthesize(&skew, &dir.join("never.gguf")).is_err());
        let skew = SynthOptions {
            skew: SYNTH_SKEW_MAX + 1.0,
            ..Default::default()
        };
        assert!(synthesize(&skew, &dir.join("never.gguf")).is_err());
        assert!(!dir.join("never.gguf").exists());
    }
}
