//! Log-probabilities of generated tokens (`logprobs` / `top_logprobs`).
//!
//! Computed on the engine thread from the logits row the token was chosen from: after an
//! output constraint's mask, before the repetition penalty and temperature (the engine's
//! [`moe_engine::Tracker::sampled`] row). So a logprob is the model's own distribution over
//! the tokens allowed at that point, as OpenAI reports it (vLLM reports the processed one);
//! for greedy decoding of an unconstrained request it is `log_softmax(logits)[token]` of the
//! prompt's logits, which `moe-node logits` prints.
//!
//! Decides: the numbers and their JSON (chat's `content` list, completions' legacy shape).

use moe_model::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// One generated token: its log-probability and the `k` most likely tokens with theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token taken.
    pub token: u32,
    /// Its natural-log probability.
    pub logprob: f32,
    /// The most likely tokens, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// `log_softmax(row)[token]` and the `k` largest entries; NaN counts as −∞.
pub fn token_logprob(row: &[f32], token: u32, k: usize) -> TokenLogprob {
    let val = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let max = row
        .iter()
        .copied()
        .map(val)
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = if max.is_finite() {
        row.iter().map(|&l| ((val(l) - max) as f64).exp()).sum()
    } else {
        1.0
    };
    let log_z = max as f64 + sum.ln();
    let lp = |l: f32| (val(l) as f64 - log_z) as f32;
    // The k largest, kept sorted (k is at most TOP_LOGPROBS_MAX).
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in row.iter().enumerate() {
            let l = val(l);
            if top.len() == k && l <= top[k - 1].1 {
                continue;
            }
            let at = top.partition_point(|&(_, m)| m >= l);
            top.insert(at, (i as u32, l));
            top.truncate(k);
        }
    }
    TokenLogprob {
        token,
        logprob: row
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: top.into_iter().map(|(t, l)| (t, lp(l))).collect(),
    }
}

/// A logprob as JSON: −∞ (a token that could not occur) as OpenAI's −9999.
fn num(l: f32) -> Value {
    if l.is_finite() {
        json!(l)
    } else {
        json!(-9999.0)
    }
}

fn entry(tok: &Tokenizer, id: u32, logprob: f32) -> serde_json::Map<String, Value> {
    let bytes = tok.token_piece(id, true);
    let mut m = serde_json::Map::new();
    m.insert("token".into(), String::from_utf8_lossy(&bytes).into());
    m.insert("logprob".into(), num(logprob));
    m.insert("bytes".into(), json!(bytes));
    m
}

/// Chat's `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_json(tok: &Tokenizer, items: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = items
        .iter()
        .map(|t| {
            let mut m = entry(tok, t.token, t.logprob);
            let top: Vec<Value> = t
                .top
                .iter()
                .map(|&(id, l)| Value::Object(entry(tok, id, l)))
                .collect();
            m.insert("top_logprobs".into(), top.into());
            Value::Object(m)
        })
        .collect();
    json!({ "content": content })
}

/// The completions endpoint's legacy `logprobs` object, `text_offset` counted from
/// `offset` (bytes of text before these tokens).
pub fn completion_json(tok: &Tokenizer, items: &[TokenLogprob], offset: usize) -> Value {
    let mut at = offset;
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for t in items {
        let text = String::from_utf8_lossy(&tok.token_piece(t.token, true)).into_owned();
        offsets.push(at);
        at += text.len();
        tokens.push(text);
        lps.push(num(t.logprob));
        let top: serde_json::Map<String, Value> = t
            .top
            .iter()
            .map(|&(id, l)| {
                let s = String::from_utf8_lossy(&tok.token_piece(id, true)).into_owned();
                (s, num(l))
            })
            .collect();
        tops.push(Value::Object(top));
    }
    json!({ "tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top_k() {
        let row = [1.0f32, 3.0, f32::NEG_INFINITY, 2.0, f32::NAN];
        let t = token_logprob(&row, 3, 2);
        let z = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert!((t.logprob as f64 - (2.0 - z)).abs() < 1e-6, "{t:?}");
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((t.top[0].1 as f64 - (3.0 - z)).abs() < 1e-6);
        // A masked token: −∞, shown as −9999.
        let masked = token_logprob(&row, 2, 0);
        assert_eq!(masked.logprob, f32::NEG_INFINITY);
        assert!(masked.top.is_empty());
        assert_eq!(num(masked.logprob), json!(-9999.0));
    }
}
