//! The dense FFN of each leading dense layer and the shared expert of each MoE layer on the
//! device ([`VulkanLayers`]' `LayerCompute::ffn`): weights uploaded once (`ffn_weights.rs`);
//! one call records the gate and up matvecs over the call's rows (the rows as the routes of
//! one matrix, sharing weight reads in tiles as attention's projections do), SwiGLU and the
//! down matvec, submits once and reads the output back. Fast mode quantizes each matvec's
//! input on the device and takes the integer-dot shaders, as the experts do.

use moe_model::model::Model;
use moe_model::ModelError;

use crate::ffn_weights::{ffn_of, LayerFfn};
use crate::layers::{b, VulkanLayers};
use crate::scratch::{ensure, f32_bytes, read_f32};
use crate::VulkanError;

impl VulkanLayers {
    /// `LayerCompute::ffn` (see the file's doc).
    pub(crate) fn ffn_on_device(
        &self,
        model: &Model,
        l: usize,
        h: &[f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let d = model.cfg.n_embd;
        if h.len() != out.len() || h.is_empty() || !h.len().is_multiple_of(d) {
            return Err(ModelError::InvalidInput(format!(
                "FFN of layer {l}: input {} and output {} values (rows of {d})",
                h.len(),
                out.len()
            )));
        }
        let w = self.ffn_layer(model, l)?;
        let (t, f) = (h.len() / d, w.gate.rows);
        let fast = self.fast(model);
        let mut state = self.lock()?;
        let (commands, s) = &mut *state;
        let dev = &self.device;
        let what = |buf: &str| format!("{buf} of the FFN of layer {l}");
        ensure(dev, &mut s.x, 4 * h.len(), &what("input rows"))?.write(0, f32_bytes(h));
        ensure(dev, &mut s.g, 4 * t * f, &what("gate outputs"))?;
        ensure(dev, &mut s.u, 4 * t * f, &what("up outputs"))?;
        ensure(dev, &mut s.out, 4 * h.len(), &what("outputs"))?;
        let meta = self.token_meta(s, t)?;
        self.ensure_quantized(s, t * d.max(f))?;
        let (x, xq, g, u, y, tokens) = (
            b(&s.x),
            b(&s.xq),
            b(&s.g),
            b(&s.u),
            b(&s.out),
            b(&s.meta_tokens),
        );
        self.matmul(commands, &w.gate, [x, xq, g, tokens], &meta, 0, fast)?;
        self.matmul(commands, &w.up, [x, xq, u, tokens], &meta, 0, fast)?;
        commands.elementwise(dev, &self.kernels.swiglu, &[g, u], &[(t * f) as u32], t * f)?;
        self.matmul(commands, &w.down, [g, xq, y, tokens], &meta, 0, fast)?;
        commands.submit_and_wait()?;
        read_f32(y, out);
        Ok(())
    }

    /// Layer `l`'s FFN on the device, checked to be `model`'s.
    pub(crate) fn ffn_layer(&self, model: &Model, l: usize) -> Result<&LayerFfn, VulkanError> {
        let on_device = self.ffns.layers.get(l).and_then(Option::as_ref);
        let of_model = model.layers.get(l).and_then(ffn_of);
        let (Some(w), Some(ffn)) = (on_device, of_model) else {
            return Err(VulkanError::InvalidInput(format!(
                "layer {l} has no dense FFN or shared expert on the Vulkan device"
            )));
        };
        let d = model.cfg.n_embd;
        let same = [(&w.gate, &ffn.gate), (&w.up, &ffn.up), (&w.down, &ffn.down)]
            .iter()
            .all(|(dm, m)| dm.name == m.name && dm.buf.len >= m.bytes())
            && (w.gate.cols, w.up.cols, w.down.rows) == (d, d, d)
            && (w.up.rows, w.down.cols) == (w.gate.rows, w.gate.rows);
        if !same {
            return Err(VulkanError::InvalidInput(format!(
                "layer {l} of this model is not the one whose FFN was uploaded to the Vulkan device"
            )));
        }
        Ok(w)
    }
}
