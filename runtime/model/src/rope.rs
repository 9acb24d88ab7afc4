//! Rotary embedding on the rope dims only, adjacent pairs `(x[2i], x[2i+1])`, with YaRN
//! frequencies (spec §2.3-2.4, Hugging Face `_compute_yarn_parameters`).

use crate::config::ModelConfig;

/// Precomputed inverse frequencies for `dr/2` pairs.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    /// cos/sin multiplier (YaRN attention factor; 1.0 for deepseek2 files).
    attn_factor: f32,
}

impl Rope {
    /// Frequencies for a model.
    pub fn new(cfg: &ModelConfig) -> Self {
        let dim = cfg.qk_rope;
        let base = cfg.rope_theta;
        let half = dim / 2;
        // Hugging Face: 1 / base ** (arange(0, dim, 2) / dim), in float32.
        let extra: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        let inv_freq = match cfg.yarn {
            Some(y) if y.factor > 1.0 => {
                let corr = |r: f32| {
                    (dim as f32
                        * (y.original_context as f32 / (r * 2.0 * std::f32::consts::PI)).ln())
                        / (2.0 * base.ln())
                };
                let low = corr(y.beta_fast).floor().max(0.0);
                let high = corr(y.beta_slow).ceil().min(dim as f32 - 1.0);
                let span = if high - low == 0.0 { 0.001 } else { high - low };
                (0..half)
                    .map(|i| {
                        let ramp = ((i as f32 - low) / span).clamp(0.0, 1.0);
                        let inter = extra[i] / y.factor;
                        inter * ramp + extra[i] * (1.0 - ramp)
                    })
                    .collect()
            }
            _ => extra,
        };
        Self {
            inv_freq,
            attn_factor: 1.0,
        }
    }

    /// `(cos, sin)` of pair `i` at position `pos`, scaled by the attention factor.
    fn cos_sin_of(&self, i: usize, pos: usize) -> (f32, f32) {
        let theta = pos as f32 * self.inv_freq[i];
        let (s, c) = theta.sin_cos();
        (c * self.attn_factor, s * self.attn_factor)
    }

    /// The rotation [`Rope::apply`] makes at position `pos`: `cos, sin` of each pair, into
    /// `out` (`dr` values), for a device that rotates with a table.
    pub fn cos_sin(&self, pos: usize, out: &mut [f32]) {
        for (i, cs) in out.chunks_exact_mut(2).enumerate() {
            (cs[0], cs[1]) = self.cos_sin_of(i, pos);
        }
    }

    /// Rotates `x` (`dr` values) in place for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        for i in 0..self.inv_freq.len() {
            let (c, s) = self.cos_sin_of(i, pos);
            let (x0, x1) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = x0 * c - x1 * s;
            x[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}
