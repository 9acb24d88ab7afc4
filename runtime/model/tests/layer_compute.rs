//! The layer-device seam (`forward/layer_compute.rs`): with a `LayerCompute` attached, the forward
//! pass hands it every layer's attention and every layer's dense FFN or shared expert, in layer
//! order, then the output head (of the one row whose logits are wanted), whichever expert backend
//! computes the routed experts: the CPU's expert compute (whose region would otherwise take the
//! shared expert, `CpuCompute`'s override) and a backend on `ExpertBackend`'s default
//! `finish_with_shared` (a remote one's path). A device that records its calls stands in for a GPU.

use std::sync::{Arc, Mutex};

use moe_model::forward::{
    push_latent_rows, ExpertBackend, KvCache, LayerCompute, LocalExperts, NoObserver, Routing,
    SeqInput, TokenKind,
};
use moe_model::model::Model;
use moe_model::ModelError;

/// A device that records `(what, layer)` per call; its attention outputs zeros (and appends
/// zero rows to the cache, as the contract asks), its FFN zeros.
#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<(&'static str, usize)>>,
}

impl LayerCompute for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn attention(
        &self,
        model: &Model,
        l: usize,
        _x: &[f32],
        t: usize,
        cache: &mut KvCache,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        self.calls.lock().unwrap().push(("attention", l));
        let c = &model.cfg;
        let mut kv = vec![0f32; t * (c.kv_lora_rank + c.qk_rope)];
        push_latent_rows(model, l, &mut kv, cache.len(), cache);
        out.fill(0.0);
        Ok(())
    }

    fn ffn(&self, _: &Model, l: usize, _h: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        self.calls.lock().unwrap().push(("ffn", l));
        out.fill(0.0);
        Ok(())
    }

    fn computes_head(&self) -> bool {
        true
    }

    /// Records the rows it was given; logits of zeros.
    fn head(&self, model: &Model, x: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        self.calls
            .lock()
            .unwrap()
            .push(("head", x.len() / model.cfg.n_embd));
        out.fill(0.0);
        Ok(())
    }
}

/// Routed experts on the CPU through `ExpertBackend`'s default `finish_with_shared`.
struct DefaultShared(LocalExperts);

impl ExpertBackend for DefaultShared {
    fn begin(
        &mut self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routing: &Routing,
    ) -> Result<(), ModelError> {
        self.0.begin(model, layer, h, routing)
    }

    fn finish(&mut self, model: &Model, layer: usize, out: &mut [f32]) -> Result<(), ModelError> {
        self.0.finish(model, layer, out)
    }
}

#[test]
fn a_layer_device_gets_every_attention_dense_ffn_and_shared_expert() {
    let path = moe_devdata::fixtures::fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let backends: [(&str, Box<dyn ExpertBackend>); 2] = [
        ("cpu expert compute", Box::new(LocalExperts::default())),
        (
            "default finish_with_shared",
            Box::new(DefaultShared(LocalExperts::default())),
        ),
    ];
    for (what, mut experts) in backends {
        let recorder = Arc::new(Recorder::default());
        let model = Model::open(&path)
            .unwrap()
            .with_layer_compute(recorder.clone());
        let n_layers = model.layers.len();
        // The fixture has both kinds: a leading dense layer, then MoE layers with a shared
        // expert, so every layer has one FFN for the device.
        assert!(model.layers[0].dense.is_some());
        assert!(model.layers[1..]
            .iter()
            .all(|lw| lw.moe.as_ref().is_some_and(|m| m.shared.is_some())));

        let mut cache = KvCache::for_model(&model, 16);
        for tokens in [&[5u32, 9, 2][..], &[7]] {
            recorder.calls.lock().unwrap().clear();
            let mut batch = [SeqInput {
                cache: &mut cache,
                tokens,
                all_logits: false,
                kind: TokenKind::Generated,
            }];
            model
                .forward(&mut batch, experts.as_mut(), &mut NoObserver)
                .unwrap();
            let want: Vec<(&str, usize)> = (0..n_layers)
                .flat_map(|l| [("attention", l), ("ffn", l)])
                .chain([("head", 1)])
                .collect();
            assert_eq!(*recorder.calls.lock().unwrap(), want, "{what}");
        }
        assert_eq!(cache.len(), 4, "{what}: the device's rows were committed");
    }
}
