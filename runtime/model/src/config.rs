//! `ModelConfig`: the hyper-parameters of a `deepseek2` model, parsed once from GGUF metadata.
//!
//! Decisions made here (see spec/MODELS.md §2, §3.1):
//! - MLA is required (`attention.key_length_mla` present, split `attn_k_b`/`attn_v_b` tensors);
//!   pre-MLA files with a fused `attn_kv_b` are refused with a clear error.
//! - The MLA latent norms use eps 1e-6 (as the Hugging Face and DeepSeek reference code do),
//!   every other norm uses `attention.layer_norm_rms_epsilon`.
//! - YaRN's `beta_fast`/`beta_slow` are read from the file when present (the Hugging Face
//!   reference does; llama.cpp ignores them for deepseek2 and always uses 32/1).

use crate::gguf::{GgufFile, Value};
use crate::ModelError;

/// Eps of the MLA latent norms (`attn_q_a_norm`, `attn_kv_a_norm`); GGUF has no key for it.
pub const LATENT_NORM_EPS: f32 = 1e-6;
/// Largest hidden size accepted (guards allocations driven by metadata).
pub const HIDDEN_DIM_MAX: usize = 65536;
/// Most layers accepted.
pub const LAYERS_MAX: usize = 1024;
/// Most routed experts per layer accepted.
pub const EXPERTS_MAX: usize = 4096;
/// Most attention heads accepted.
pub const HEADS_MAX: usize = 1024;
/// Largest q/k/v head dimension accepted (`qk_nope`, `qk_rope`, `v_head`).
pub const HEAD_DIM_MAX: usize = 4096;
/// Largest low-rank (q or KV latent) width accepted.
pub const LORA_RANK_MAX: usize = 65536;
/// Largest dense or expert FFN width accepted.
pub const FFN_DIM_MAX: usize = 1 << 20;
/// Most shared experts per MoE layer accepted.
pub const SHARED_EXPERTS_MAX: usize = 64;
/// Largest vocabulary accepted.
pub const VOCAB_MAX: usize = 1 << 22;

/// How router logits become expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatingFunc {
    /// softmax over all experts (DeepSeek-V2, legacy files).
    Softmax,
    /// independent sigmoids (DeepSeek-V3, Kimi K2/K2.5).
    Sigmoid,
}

/// YaRN rope scaling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// Context extension factor `f`.
    pub factor: f32,
    /// Training context length before extension.
    pub original_context: u32,
    /// β_fast.
    pub beta_fast: f32,
    /// β_slow.
    pub beta_slow: f32,
    /// `0.1 * mscale_all_dim` as GGUF stores it.
    pub log_multiplier: f32,
}

/// Typed hyper-parameters of a deepseek2-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size `D`.
    pub n_embd: usize,
    /// Dense FFN width (leading dense layers).
    pub n_ff: usize,
    /// Attention heads `H`.
    pub n_heads: usize,
    /// q low-rank width (None: a full `attn_q`).
    pub q_lora_rank: Option<usize>,
    /// KV latent width `Lkv`.
    pub kv_lora_rank: usize,
    /// Non-rotary q/k head dims `dn`.
    pub qk_nope: usize,
    /// Rotary q/k head dims `dr`.
    pub qk_rope: usize,
    /// Value head dims `dv`.
    pub v_head: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Eps of the input/post-attention/final norms.
    pub rms_eps: f32,
    /// Rope base θ.
    pub rope_theta: f32,
    /// YaRN scaling, if any.
    pub yarn: Option<Yarn>,
    /// Trained context length.
    pub context_length: usize,
    /// Routed experts per MoE layer.
    pub n_experts: usize,
    /// Experts chosen per token.
    pub n_experts_used: usize,
    /// Expert groups (1 = no group-limited routing).
    pub n_groups: usize,
    /// Groups kept per token when `n_groups > 1`.
    pub n_groups_used: usize,
    /// Router scoring function.
    pub gating: GatingFunc,
    /// Normalize the chosen weights to sum 1.
    pub weights_norm: bool,
    /// Routed scaling factor.
    pub weights_scale: f32,
    /// Layers `< n_dense_lead` are dense.
    pub n_dense_lead: usize,
    /// Routed expert FFN width.
    pub n_ff_exp: usize,
    /// Shared experts per MoE layer.
    pub n_shared: usize,
}

impl ModelConfig {
    /// Parses the config from a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let m = Meta { file };
        let arch = m.str("general.architecture")?;
        if arch != "deepseek2" {
            return Err(ModelError::UnsupportedModel(format!(
                "architecture {arch:?} is not supported (this runtime runs \"deepseek2\": DeepSeek-V3/R1, Kimi K2/K2.5)"
            )));
        }
        let key_mla = m.opt_usize("deepseek2.attention.key_length_mla")?;
        let val_mla = m.opt_usize("deepseek2.attention.value_length_mla")?;
        let (Some(key_mla), Some(v_head)) = (key_mla, val_mla) else {
            return Err(ModelError::UnsupportedModel(
                "no deepseek2.attention.key_length_mla/value_length_mla: a pre-MLA GGUF (fused attn_kv_b); reconvert it with a current llama.cpp".into(),
            ));
        };
        let qk_rope = m.usize("deepseek2.rope.dimension_count")?;
        let qk_nope = key_mla.checked_sub(qk_rope).ok_or_else(|| {
            ModelError::UnsupportedModel(format!(
                "key_length_mla {key_mla} is smaller than rope.dimension_count {qk_rope}"
            ))
        })?;
        let gating = match m.opt_usize("deepseek2.expert_gating_func")?.unwrap_or(1) {
            0 | 1 => GatingFunc::Softmax,
            2 => GatingFunc::Sigmoid,
            g => {
                return Err(ModelError::UnsupportedModel(format!(
                    "expert_gating_func {g} is not supported (1 softmax, 2 sigmoid)"
                )))
            }
        };
        let yarn = match m.opt_str("deepseek2.rope.scaling.type")? {
            None | Some("none") => None,
            Some("yarn") => Some(Yarn {
                factor: m.f32("deepseek2.rope.scaling.factor")?,
                original_context: m.usize("deepseek2.rope.scaling.original_context_length")? as u32,
                beta_fast: m
                    .opt_f32("deepseek2.rope.scaling.yarn_beta_fast")?
                    .unwrap_or(32.0),
                beta_slow: m
                    .opt_f32("deepseek2.rope.scaling.yarn_beta_slow")?
                    .unwrap_or(1.0),
                log_multiplier: m
                    .opt_f32("deepseek2.rope.scaling.yarn_log_multiplier")?
                    .unwrap_or(0.0),
            }),
            Some(other) => {
                return Err(ModelError::UnsupportedModel(format!(
                    "rope scaling {other:?} is not supported"
                )))
            }
        };
        let vocab = match m.opt_usize("deepseek2.vocab_size")? {
            Some(v) => v,
            None => m.array_len("tokenizer.ggml.tokens")?,
        };
        let cfg = Self {
            n_layers: m.usize("deepseek2.block_count")?,
            n_embd: m.usize("deepseek2.embedding_length")?,
            n_ff: m.usize("deepseek2.feed_forward_length")?,
            n_heads: m.usize("deepseek2.attention.head_count")?,
            q_lora_rank: m
                .opt_usize("deepseek2.attention.q_lora_rank")?
                .filter(|&r| r > 0),
            kv_lora_rank: m.usize("deepseek2.attention.kv_lora_rank")?,
            qk_nope,
            qk_rope,
            v_head,
            vocab,
            rms_eps: m.f32("deepseek2.attention.layer_norm_rms_epsilon")?,
            rope_theta: m.opt_f32("deepseek2.rope.freq_base")?.unwrap_or(10000.0),
            yarn,
            context_length: m.usize("deepseek2.context_length")?,
            n_experts: m.usize("deepseek2.expert_count")?,
            n_experts_used: m.usize("deepseek2.expert_used_count")?,
            n_groups: m
                .opt_usize("deepseek2.expert_group_count")?
                .unwrap_or(1)
                .max(1),
            n_groups_used: m
                .opt_usize("deepseek2.expert_group_used_count")?
                .unwrap_or(1)
                .max(1),
            gating,
            weights_norm: m
                .opt_bool("deepseek2.expert_weights_norm")?
                .unwrap_or(false),
            weights_scale: m.opt_f32("deepseek2.expert_weights_scale")?.unwrap_or(1.0),
            n_dense_lead: m
                .opt_usize("deepseek2.leading_dense_block_count")?
                .unwrap_or(0),
            n_ff_exp: m.usize("deepseek2.expert_feed_forward_length")?,
            n_shared: m.opt_usize("deepseek2.expert_shared_count")?.unwrap_or(0),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::UnsupportedModel(msg));
        if self.n_embd == 0 || self.n_embd > HIDDEN_DIM_MAX {
            return bad(format!(
                "embedding_length {} is outside 1..={HIDDEN_DIM_MAX}",
                self.n_embd
            ));
        }
        if self.n_layers == 0 || self.n_layers > LAYERS_MAX {
            return bad(format!(
                "block_count {} is outside 1..={LAYERS_MAX}",
                self.n_layers
            ));
        }
        if self.n_experts > EXPERTS_MAX {
            return bad(format!(
                "expert_count {} exceeds {EXPERTS_MAX}",
                self.n_experts
            ));
        }
        if self.n_dense_lead < self.n_layers
            && (self.n_experts_used == 0 || self.n_experts_used > self.n_experts)
        {
            return bad(format!(
                "expert_used_count {} must be in 1..={}",
                self.n_experts_used, self.n_experts
            ));
        }
        if !self.qk_rope.is_multiple_of(2) {
            return bad(format!(
                "rope.dimension_count {} must be even",
                self.qk_rope
            ));
        }
        if self.n_groups > 1 {
            if !self.n_experts.is_multiple_of(self.n_groups) || self.n_groups_used > self.n_groups {
                return bad(format!(
                    "expert groups: {} experts in {} groups, {} used, is not a valid split",
                    self.n_experts, self.n_groups, self.n_groups_used
                ));
            }
            if self.n_experts / self.n_groups < 2 {
                return bad("group-limited routing needs at least 2 experts per group".into());
            }
        }
        if self.n_heads == 0 || self.kv_lora_rank == 0 || self.vocab == 0 {
            return bad("head_count, kv_lora_rank and vocab_size must be non-zero".into());
        }
        // Every width below sizes an allocation or a product of widths (weight shapes, the
        // rope table), so each is bounded before any of that happens.
        let limits = [
            ("attention.head_count", self.n_heads, HEADS_MAX),
            ("rope.dimension_count", self.qk_rope, HEAD_DIM_MAX),
            (
                "key_length_mla - rope.dimension_count",
                self.qk_nope,
                HEAD_DIM_MAX,
            ),
            ("attention.value_length_mla", self.v_head, HEAD_DIM_MAX),
            ("attention.kv_lora_rank", self.kv_lora_rank, LORA_RANK_MAX),
            (
                "attention.q_lora_rank",
                self.q_lora_rank.unwrap_or(0),
                LORA_RANK_MAX,
            ),
            ("feed_forward_length", self.n_ff, FFN_DIM_MAX),
            ("expert_feed_forward_length", self.n_ff_exp, FFN_DIM_MAX),
            ("expert_shared_count", self.n_shared, SHARED_EXPERTS_MAX),
            ("vocab_size", self.vocab, VOCAB_MAX),
        ];
        for (key, value, max) in limits {
            if value > max {
                return bad(format!("{key} {value} exceeds the limit of {max}"));
            }
        }
        if self.qk_nope + self.qk_rope == 0 || self.v_head == 0 {
            return bad(
                "attention head dims (key_length_mla, value_length_mla) must be non-zero".into(),
            );
        }
        Ok(())
    }

    /// Whether layer `l` is a MoE layer.
    pub fn is_moe_layer(&self, l: usize) -> bool {
        l >= self.n_dense_lead && self.n_experts > 0
    }

    /// Indices of the MoE layers.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.n_layers)
            .filter(|&l| self.is_moe_layer(l))
            .collect()
    }

    /// The YaRN mscale for the attention softmax (1 without YaRN).
    pub fn yarn_mscale(&self) -> f32 {
        match self.yarn {
            Some(y) if y.factor > 1.0 => 1.0 + y.log_multiplier * y.factor.ln(),
            _ => 1.0,
        }
    }

    /// Softmax scale `mscale² / sqrt(dn + dr)`.
    pub fn attn_scale(&self) -> f32 {
        let m = self.yarn_mscale();
        m * m / ((self.qk_nope + self.qk_rope) as f32).sqrt()
    }
}

/// Typed access to metadata with errors naming the key.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value, ModelError> {
        self.file
            .metadata(key)
            .ok_or_else(|| ModelError::UnsupportedModel(format!("metadata key {key:?} is missing")))
    }
    fn wrong(key: &str, want: &str, v: &Value) -> ModelError {
        ModelError::UnsupportedModel(format!("metadata {key:?} should be {want}, got {v:?}"))
    }
    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        let v = self.get(key)?;
        // Arrays (per-layer values) are accepted when uniform.
        if let Some(a) = v.as_array() {
            let first = a.first().and_then(Value::as_u64);
            if first.is_some() && a.iter().all(|x| x.as_u64() == first) {
                return Ok(first.unwrap_or_default() as usize);
            }
            return Err(Self::wrong(key, "an integer (or a uniform array)", v));
        }
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| Self::wrong(key, "a non-negative integer", v))
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        if self.file.metadata(key).is_none() {
            return Ok(None);
        }
        self.usize(key).map(Some)
    }
    fn f32(&self, key: &str) -> Result<f32, ModelError> {
        let v = self.get(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong(key, "a number", v))
    }
    fn opt_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        if self.file.metadata(key).is_none() {
            return Ok(None);
        }
        self.f32(key).map(Some)
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.file.metadata(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| Self::wrong(key, "a bool", v)),
        }
    }
    fn str(&self, key: &str) -> Result<&str, ModelError> {
        let v = self.get(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "a string", v))
    }
    fn opt_str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        if self.file.metadata(key).is_none() {
            return Ok(None);
        }
        self.str(key).map(Some)
    }
    fn array_len(&self, key: &str) -> Result<usize, ModelError> {
        let v = self.get(key)?;
        v.as_array()
            .map(<[Value]>::len)
            .ok_or_else(|| Self::wrong(key, "an array", v))
    }
}
