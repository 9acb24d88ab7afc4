//! Per-sequence progress hooks: the front-end's metrics (time to first token, inter-token
//! latency, KV cache use, drafts) without the engine knowing about a metrics system.

/// What a sequence reports while it runs; every method defaults to nothing.
pub trait Tracker {
    /// `tokens` of the prompt came from the prefix cache.
    fn prompt_cached(&mut self, _tokens: usize) {}
    /// The whole prompt is in the KV cache (the next token is the first generated one).
    fn prompt_done(&mut self) {}
    /// A token was taken and kept (not one that ends the sequence), with the logits row it
    /// was chosen from: after the sequence's constraint masked it, before the repetition
    /// penalty and temperature (so log-softmax of `row` is the model's distribution over the
    /// tokens the constraint allows; for logprobs and tests). Then [`Tracker::token`].
    fn sampled(&mut self, _row: &[f32], _token: u32) {}
    /// One token was sampled and kept.
    fn token(&mut self) {}
    /// The sequence's KV cache now holds `used` of `capacity` positions in `bytes`.
    fn kv_cache(&mut self, _used: usize, _capacity: usize, _bytes: usize) {}
    /// A decode step verified `drafted` draft tokens (0 without speculation).
    fn decode_step(&mut self, _drafted: usize) {}
    /// A draft token was accepted.
    fn draft_accepted(&mut self) {}
}

impl Tracker for () {}
