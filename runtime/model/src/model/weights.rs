//! Weight locations: every tensor the forward pass uses, found by name, its shape checked
//! against the config, stored as plain offsets into the mapped file.

use moe_kernels::{dequantize_row, GgmlType, QMatrix};

use crate::config::ModelConfig;
use crate::gguf::GgufFile;
use crate::ModelError;

/// A 2-D weight `[rows, cols]` (ggml ne `[cols, rows]`) in the mapping.
#[derive(Debug, Clone)]
pub struct Mat {
    /// Tensor name.
    pub name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    shard: usize,
    offset: usize,
    size: usize,
}

impl Mat {
    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes in the file.
    pub fn bytes(&self) -> usize {
        self.size
    }
    /// Where the matrix lies: (shard, file offset).
    pub(super) fn key(&self) -> (usize, usize) {
        (self.shard, self.offset)
    }
    /// The shard (file of a split set, [`crate::gguf::GgufFile::paths`]) holding the matrix.
    pub fn shard(&self) -> usize {
        self.shard
    }
    /// Absolute file offset of its bytes (for mapping them in place).
    pub fn file_offset(&self) -> usize {
        self.offset
    }
    pub(super) fn view<'a>(&self, file: &'a GgufFile) -> Result<QMatrix<'a>, ModelError> {
        let data = file.range(&self.name, self.shard, self.offset, self.size)?;
        Ok(QMatrix::new(self.ty, self.rows, self.cols, data)?)
    }
}

/// A stack of equally shaped matrices `[count][rows, cols]` (ggml ne `[cols, rows, count]`):
/// one per routed expert (`ffn_*_exps`, viewed with [`super::Model::expert_mat`]) or one per
/// attention head (`attn_k_b`, `attn_v_b`, viewed with [`super::Model::head_mat`]).
#[derive(Debug, Clone)]
pub struct MatStack {
    /// Tensor name.
    pub name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    count: usize,
    shard: usize,
    offset: usize,
    expert_bytes: usize,
}

impl MatStack {
    /// Bytes of one matrix of the stack (one expert's, one head's).
    pub fn expert_bytes(&self) -> usize {
        self.expert_bytes
    }
    /// Matrices in the stack (experts or heads).
    pub fn count(&self) -> usize {
        self.count
    }
    /// Where matrix `e` lies: (shard, file offset).
    pub(super) fn key(&self, e: usize) -> (usize, usize) {
        (self.shard, self.expert_offset(e))
    }
    /// The shard (file of a split set, [`crate::gguf::GgufFile::paths`]) holding the stack.
    pub fn shard(&self) -> usize {
        self.shard
    }
    /// Absolute file offset of matrix `e` (for mapping only owned experts).
    pub fn expert_offset(&self, e: usize) -> usize {
        self.offset + e * self.expert_bytes
    }
    /// Matrix `e`; `what` names the items in errors ("expert", "head").
    pub(super) fn matrix<'a>(
        &self,
        file: &'a GgufFile,
        e: usize,
        what: &str,
    ) -> Result<QMatrix<'a>, ModelError> {
        if e >= self.count {
            return Err(ModelError::InvalidInput(format!(
                "{what} {e} out of range for {} ({} {what}s)",
                self.name, self.count
            )));
        }
        let data = file
            .range(
                &self.name,
                self.shard,
                self.expert_offset(e),
                self.expert_bytes,
            )
            .map_err(|_| ModelError::NotMapped {
                what: format!("{what} {e} of {}", self.name),
            })?;
        Ok(QMatrix::new(self.ty, self.rows, self.cols, data)?)
    }
}

/// MLA attention weights of one layer.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `attn_norm`.
    pub norm: Vec<f32>,
    /// `attn_q_a` `[Lq, D]` (None: `q` is a full projection).
    pub q_a: Option<Mat>,
    /// `attn_q_a_norm`.
    pub q_a_norm: Vec<f32>,
    /// `attn_q_b` `[H*(dn+dr), Lq]`, or `attn_q` `[H*(dn+dr), D]`.
    pub q_b: Mat,
    /// `attn_kv_a_mqa` `[Lkv+dr, D]`.
    pub kv_a: Mat,
    /// `attn_kv_a_norm`.
    pub kv_a_norm: Vec<f32>,
    /// `attn_k_b`: per head `[Lkv, dn]`.
    pub k_b: MatStack,
    /// `attn_v_b`: per head `[dv, Lkv]`.
    pub v_b: MatStack,
    /// `attn_output` `[D, H*dv]`.
    pub output: Mat,
}

/// A SwiGLU FFN: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct DenseFfn {
    /// `[F, D]`.
    pub gate: Mat,
    /// `[F, D]`.
    pub up: Mat,
    /// `[D, F]`.
    pub down: Mat,
}

/// A MoE layer's router, experts and shared expert.
#[derive(Debug, Clone)]
pub struct MoeWeights {
    /// `ffn_gate_inp` `[E, D]`.
    pub gate_inp: Mat,
    /// `exp_probs_b.bias` `[E]` (zeros when absent).
    pub probs_bias: Vec<f32>,
    /// `ffn_gate_exps`.
    pub gate_exps: MatStack,
    /// `ffn_up_exps`.
    pub up_exps: MatStack,
    /// `ffn_down_exps`.
    pub down_exps: MatStack,
    /// Shared expert(s), if any.
    pub shared: Option<DenseFfn>,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// Attention.
    pub attn: Attention,
    /// `ffn_norm`.
    pub ffn_norm: Vec<f32>,
    /// Dense FFN (leading layers).
    pub dense: Option<DenseFfn>,
    /// MoE FFN.
    pub moe: Option<MoeWeights>,
}

pub(super) struct Loader<'a> {
    pub file: &'a GgufFile,
    pub cfg: &'a ModelConfig,
}

impl Loader<'_> {
    fn dims(&self, name: &str) -> Result<(&crate::gguf::TensorInfo, [u64; 4]), ModelError> {
        let info = self
            .file
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        Ok((info, info.ne))
    }

    fn check(name: &str, ne: [u64; 4], want: [usize; 3]) -> Result<(), ModelError> {
        let got = [ne[0], ne[1], ne[2], ne[3]];
        let want64 = [want[0] as u64, want[1] as u64, want[2] as u64, 1];
        if got != want64 {
            return Err(ModelError::TensorShape {
                name: name.into(),
                message: format!(
                    "shape (ne) {:?} does not match the config, expected {:?}",
                    &got[..3],
                    &want64[..3]
                ),
            });
        }
        Ok(())
    }

    pub fn mat(&self, name: &str, rows: usize, cols: usize) -> Result<Mat, ModelError> {
        let (info, ne) = self.dims(name)?;
        Self::check(name, ne, [cols, rows, 1])?;
        Ok(Mat {
            name: name.into(),
            ty: info.ty,
            rows,
            cols,
            shard: info.shard,
            offset: info.offset,
            size: info.size,
        })
    }

    fn stacked(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        n: usize,
    ) -> Result<MatStack, ModelError> {
        let (info, ne) = self.dims(name)?;
        Self::check(name, ne, [cols, rows, n])?;
        let expert_bytes = info.size / n.max(1);
        Ok(MatStack {
            name: name.into(),
            ty: info.ty,
            rows,
            cols,
            count: n,
            shard: info.shard,
            offset: info.offset,
            expert_bytes,
        })
    }

    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.file.tensor(name)?;
        Self::check(name, t.ne(), [n, 1, 1])?;
        let mut v = vec![0f32; n];
        dequantize_row(t.ty(), t.data, &mut v).map_err(|e| ModelError::TensorShape {
            name: name.into(),
            message: e.to_string(),
        })?;
        Ok(v)
    }

    fn ffn(&self, l: usize, suffix: &str, f: usize) -> Result<DenseFfn, ModelError> {
        let d = self.cfg.n_embd;
        Ok(DenseFfn {
            gate: self.mat(&format!("blk.{l}.ffn_gate{suffix}.weight"), f, d)?,
            up: self.mat(&format!("blk.{l}.ffn_up{suffix}.weight"), f, d)?,
            down: self.mat(&format!("blk.{l}.ffn_down{suffix}.weight"), d, f)?,
        })
    }

    pub fn layer(&self, l: usize) -> Result<LayerWeights, ModelError> {
        let c = self.cfg;
        let d = c.n_embd;
        let qk = c.qk_nope + c.qk_rope;
        let (q_a, q_a_norm, q_b) = match c.q_lora_rank {
            Some(lq) => (
                Some(self.mat(&format!("blk.{l}.attn_q_a.weight"), lq, d)?),
                self.vector(&format!("blk.{l}.attn_q_a_norm.weight"), lq)?,
                self.mat(&format!("blk.{l}.attn_q_b.weight"), c.n_heads * qk, lq)?,
            ),
            None => (
                None,
                Vec::new(),
                self.mat(&format!("blk.{l}.attn_q.weight"), c.n_heads * qk, d)?,
            ),
        };
        if self
            .file
            .tensor_info(&format!("blk.{l}.attn_kv_b.weight"))
            .is_some()
            && self
                .file
                .tensor_info(&format!("blk.{l}.attn_k_b.weight"))
                .is_none()
        {
            return Err(ModelError::UnsupportedModel(format!(
                "blk.{l} has a fused attn_kv_b (pre-MLA GGUF); reconvert with a current llama.cpp"
            )));
        }
        let attn = Attention {
            norm: self.vector(&format!("blk.{l}.attn_norm.weight"), d)?,
            q_a,
            q_a_norm,
            q_b,
            kv_a: self.mat(
                &format!("blk.{l}.attn_kv_a_mqa.weight"),
                c.kv_lora_rank + c.qk_rope,
                d,
            )?,
            kv_a_norm: self.vector(&format!("blk.{l}.attn_kv_a_norm.weight"), c.kv_lora_rank)?,
            k_b: self.stacked(
                &format!("blk.{l}.attn_k_b.weight"),
                c.kv_lora_rank,
                c.qk_nope,
                c.n_heads,
            )?,
            v_b: self.stacked(
                &format!("blk.{l}.attn_v_b.weight"),
                c.v_head,
                c.kv_lora_rank,
                c.n_heads,
            )?,
            output: self.mat(
                &format!("blk.{l}.attn_output.weight"),
                d,
                c.n_heads * c.v_head,
            )?,
        };
        let ffn_norm = self.vector(&format!("blk.{l}.ffn_norm.weight"), d)?;
        if !c.is_moe_layer(l) {
            let dense = Some(self.ffn(l, "", c.n_ff)?);
            return Ok(LayerWeights {
                attn,
                ffn_norm,
                dense,
                moe: None,
            });
        }
        let e = c.n_experts;
        let bias_name = format!("blk.{l}.exp_probs_b.bias");
        let probs_bias = match self.file.tensor_info(&bias_name) {
            Some(_) => self.vector(&bias_name, e)?,
            None => vec![0.0; e],
        };
        let shared = match c.n_shared {
            0 => None,
            n => Some(self.ffn(l, "_shexp", c.n_ff_exp * n)?),
        };
        let moe = MoeWeights {
            gate_inp: self.mat(&format!("blk.{l}.ffn_gate_inp.weight"), e, d)?,
            probs_bias,
            gate_exps: self.stacked(&format!("blk.{l}.ffn_gate_exps.weight"), c.n_ff_exp, d, e)?,
            up_exps: self.stacked(&format!("blk.{l}.ffn_up_exps.weight"), c.n_ff_exp, d, e)?,
            down_exps: self.stacked(&format!("blk.{l}.ffn_down_exps.weight"), d, c.n_ff_exp, e)?,
            shared,
        };
        Ok(LayerWeights {
            attn,
            ffn_norm,
            dense: None,
            moe: Some(moe),
        })
    }
}
