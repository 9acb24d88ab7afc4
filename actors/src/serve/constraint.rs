//! The JSON / tool-call constraint ([`JsonConstraint`]) as the engine's per-sequence
//! [`TokenConstraint`]: the mask before sampling, and for the last tokens of the budget
//! (its reserve: [`FINISH_RESERVE_TOKENS`], plus for a forced tool call the tokens of the
//! markup that closes it, which a vocabulary without the markers as special tokens spells
//! out in many tokens) the token that closes the document
//! ([`JsonConstraint::closing_token`]), so the output is complete when the budget ends.

use moe_engine::TokenConstraint;

use super::json_constraint::{JsonConstraint, FINISH_RESERVE_TOKENS};

/// One sequence's JSON constraint, for the engine.
#[derive(Debug)]
pub struct EngineConstraint {
    /// The constraint.
    pub json: JsonConstraint,
    /// Tokens of the budget kept for closing the document.
    pub reserve_tokens: usize,
}

impl EngineConstraint {
    /// `json` closing within its last `FINISH_RESERVE_TOKENS + markup_tokens` tokens.
    pub fn new(json: JsonConstraint, markup_tokens: usize) -> Self {
        Self {
            json,
            reserve_tokens: FINISH_RESERVE_TOKENS + markup_tokens,
        }
    }
}

impl TokenConstraint for EngineConstraint {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        self.json.mask_logits(logits).map_err(|e| e.to_string())
    }

    fn forced(&mut self, remaining_tokens: usize) -> Option<u32> {
        if remaining_tokens > self.reserve_tokens {
            return None;
        }
        // An error here shows again in `mask`/`advance`, which end the sequence.
        self.json.closing_token().ok().flatten()
    }

    fn advance(&mut self, token: u32) -> Result<(), String> {
        self.json.advance(token).map_err(|e| e.to_string())
    }
}
