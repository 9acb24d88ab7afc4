//! Per-sequence token constraints: structured output (a JSON schema, a forced tool call)
//! as a mask over the vocabulary, applied to each step's logits before sampling.
//!
//! The engine asks a sequence's constraint, once per sampled token and in this order:
//! [`TokenConstraint::forced`] (a token to take without sampling, e.g. to close a document
//! before the budget runs out), else [`TokenConstraint::mask`] on the logits row, then
//! samples from the masked row; then [`TokenConstraint::advance`] with the token taken
//! (not called for an end-of-generation token, which ends the sequence). A constrained
//! sequence never drafts (speculative decoding is off for it) and never ignores EOS.
//!
//! Decides: the hook. Leaves to front-ends what the constraint is (the grammar engine lives
//! in the front-end; this crate only calls it).

/// What a constrained sequence asks before and after each token.
pub trait TokenConstraint: Send {
    /// Sets the logit of every token not allowed next to −∞ (the row may be longer than
    /// the vocabulary the constraint knows: padded ids are disallowed too).
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String>;
    /// A token to take instead of sampling, given `remaining_tokens` left in the budget
    /// (counting this one); `None` to sample from the masked row.
    fn forced(&mut self, remaining_tokens: usize) -> Option<u32>;
    /// Takes the token chosen; an error (a token the mask did not allow) ends the sequence.
    fn advance(&mut self, token: u32) -> Result<(), String>;
}
