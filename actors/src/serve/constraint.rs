//! The JSON / tool-call constraint ([`JsonConstraint`]) as the engine's per-sequence
//! [`TokenConstraint`]: the mask before sampling, and for the last
//! [`FINISH_RESERVE_TOKENS`] of the budget the token that closes the document
//! ([`JsonConstraint::closing_token`]), so the output is complete when the budget ends.

use moe_engine::TokenConstraint;

use super::json_constraint::{JsonConstraint, FINISH_RESERVE_TOKENS};

/// One sequence's JSON constraint, for the engine.
#[derive(Debug)]
pub struct EngineConstraint(pub JsonConstraint);

impl TokenConstraint for EngineConstraint {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        self.0.mask_logits(logits).map_err(|e| e.to_string())
    }

    fn forced(&mut self, remaining_tokens: usize) -> Option<u32> {
        if remaining_tokens > FINISH_RESERVE_TOKENS {
            return None;
        }
        // An error here shows again in `mask`/`advance`, which end the sequence.
        self.0.closing_token().ok().flatten()
    }

    fn advance(&mut self, token: u32) -> Result<(), String> {
        self.0.advance(token).map_err(|e| e.to_string())
    }
}
