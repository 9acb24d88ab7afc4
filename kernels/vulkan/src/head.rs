//! The output head on the device ([`VulkanLayers`]' `LayerCompute::head`): the logits of a
//! call's rows as one matvec over `output.weight` (the rows as the routes of one matrix),
//! submitted once and read back. The head is uploaded with the layers where it fits the
//! device's limits (rows per dispatch, one binding's bytes); else the CPU computes it
//! ([`VulkanLayers::head_on_cpu`] says why).

use moe_model::model::Model;
use moe_model::ModelError;

use crate::layers::{b, VulkanLayers};
use crate::scratch::{ensure, f32_bytes, read_f32};
use crate::VulkanError;

impl VulkanLayers {
    /// `LayerCompute::head` (see the file's doc).
    pub(crate) fn head_on_device(
        &self,
        model: &Model,
        x: &[f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let head = self.head.as_ref().map_err(|e| {
            VulkanError::InvalidInput(format!("the output head is not on the device: {e}"))
        })?;
        let d = model.cfg.n_embd;
        let n = x.len() / d.max(1);
        let same = head.name == model.output.name && (head.rows, head.cols) == (model.cfg.vocab, d);
        if !same {
            return Err(VulkanError::InvalidInput(
                "this model's output head is not the one uploaded to the Vulkan device".into(),
            )
            .into());
        }
        if n == 0 || x.len() != n * d || out.len() != n * head.rows {
            return Err(ModelError::InvalidInput(format!(
                "output head: input {} and output {} values (rows of {d}, vocabulary {})",
                x.len(),
                out.len(),
                head.rows
            )));
        }
        let fast = self.fast(model);
        let mut state = self.lock()?;
        let (commands, s) = &mut *state;
        let dev = &self.device;
        ensure(dev, &mut s.x, 4 * x.len(), "output head input rows")?.write(0, f32_bytes(x));
        ensure(dev, &mut s.logits, 4 * out.len(), "logits")?;
        let meta = self.token_meta(s, n)?;
        self.ensure_quantized(s, x.len())?;
        let (xb, xq, logits, tokens) = (b(&s.x), b(&s.xq), b(&s.logits), b(&s.meta_tokens));
        self.matmul(commands, head, [xb, xq, logits, tokens], &meta, 0, fast)?;
        commands.submit_and_wait()?;
        read_f32(logits, out);
        Ok(())
    }
}
