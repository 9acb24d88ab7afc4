//! Draft tokens for speculative decoding without a second model: prompt lookup (n-gram)
//! drafting. The last few tokens of the sequence are searched for earlier in it; the tokens
//! that followed their most recent earlier occurrence are proposed as the continuation. Code
//! edits, quotes and summaries repeat long stretches of their input, so drafts there are often
//! right, and a wrong draft costs only the verify step's extra positions.
//!
//! Decides: what to propose. Verifying (one forward over the pending token and the draft,
//! accepting while the sampled token equals the drafted one) is the generation loop's;
//! [`replay`] repeats that rule over a known output, to measure the acceptance a task's
//! output would get (`examples/draft_acceptance.rs`).

/// Longest suffix matched, tokens.
pub const NGRAM_MAX: usize = 4;
/// Shortest suffix matched, tokens (as the original prompt-lookup decoding: a wrong draft
/// costs only verify positions, which a memory-bound decode step has to spare).
pub const NGRAM_MIN: usize = 1;
/// Most tokens searched back from the end (bounds the cost of a lookup on long contexts).
pub const NGRAM_SEARCH_TOKENS_MAX: usize = 8192;

/// Up to `max` tokens that followed the most recent earlier occurrence of the longest suffix
/// of `history` (from [`NGRAM_MAX`] down to [`NGRAM_MIN`] tokens) that occurs earlier; empty
/// when none does.
pub fn ngram_draft(history: &[u32], max: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    let start = history.len().saturating_sub(NGRAM_SEARCH_TOKENS_MAX);
    let window = &history[start..];
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if window.len() <= n {
            continue;
        }
        let suffix = &window[window.len() - n..];
        // Most recent earlier occurrence first; it must have at least one token after it.
        for at in (0..window.len() - n).rev() {
            if &window[at..at + n] == suffix {
                let from = at + n;
                let to = (from + max).min(window.len());
                return window[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

/// What [`replay`] counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Verify steps after the prompt's forward.
    pub steps: usize,
    /// Draft tokens proposed.
    pub drafted: usize,
    /// Draft tokens accepted.
    pub accepted: usize,
    /// Tokens fed per step (1 + draft length), one entry per step.
    pub fed: Vec<usize>,
}

/// Replays drafting of at most `k` tokens while `output` is generated after `prompt`, as the
/// generation loop drafts and verifies (the history is the prompt plus every emitted token;
/// a step accepts the draft's longest prefix equal to the output and emits one token more):
/// the acceptance a model whose greedy output is `output` would see.
pub fn replay(prompt: &[u32], output: &[u32], k: usize) -> Replay {
    let mut r = Replay {
        steps: 0,
        drafted: 0,
        accepted: 0,
        fed: Vec::new(),
    };
    let Some((&first, rest)) = output.split_first() else {
        return r;
    };
    // The prompt's forward samples the first token; every later token comes from a step.
    let mut history: Vec<u32> = prompt.to_vec();
    history.push(first);
    let mut pos = 0;
    while pos < rest.len() {
        let draft = ngram_draft(&history, k);
        let ok = draft
            .iter()
            .zip(&rest[pos..])
            .take_while(|(d, o)| d == o)
            .count();
        let emitted = (ok + 1).min(rest.len() - pos);
        history.extend_from_slice(&rest[pos..pos + emitted]);
        pos += emitted;
        r.steps += 1;
        r.drafted += draft.len();
        r.accepted += ok.min(emitted);
        r.fed.push(1 + draft.len());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that repeats the prompt is drafted from it: after the first token, every
    /// step accepts a whole draft.
    #[test]
    fn replay_of_a_copied_output_accepts_whole_drafts() {
        let prompt: Vec<u32> = (100..140).collect();
        let r = replay(&prompt, &prompt, 4);
        assert_eq!(r.fed[0], 5);
        assert_eq!((r.drafted, r.accepted), (32, 32));
        assert_eq!(r.steps, 39usize.div_ceil(5));
    }

    /// An output with nothing in common with the prompt drafts nothing and takes one step per
    /// token.
    #[test]
    fn replay_of_new_text_takes_a_step_per_token() {
        let prompt: Vec<u32> = (100..140).collect();
        let output: Vec<u32> = (1000..1010).collect();
        let r = replay(&prompt, &output, 4);
        assert_eq!((r.steps, r.drafted, r.accepted), (9, 0, 0));
    }

    #[test]
    fn proposes_what_followed_the_most_recent_earlier_occurrence() {
        // ... 5 6 7 8 9 ... 5 6 7 1 2 ... 5 6 7  -> the latest earlier "5 6 7" is followed by 1 2.
        let h = [5, 6, 7, 8, 9, 0, 5, 6, 7, 1, 2, 3, 5, 6, 7];
        assert_eq!(ngram_draft(&h, 2), vec![1, 2]);
        assert_eq!(ngram_draft(&h, 10), vec![1, 2, 3, 5, 6, 7]);
    }

    #[test]
    fn prefers_the_longest_matching_suffix() {
        // "3 4" last occurs followed by 9, but "2 3 4" (longer) occurs followed by 5.
        let h = [1, 2, 3, 4, 5, 0, 3, 4, 9, 8, 2, 3, 4];
        assert_eq!(ngram_draft(&h, 1), vec![5]);
    }

    #[test]
    fn nothing_to_propose() {
        assert!(ngram_draft(&[1, 2, 3, 4], 4).is_empty());
        assert!(ngram_draft(&[], 4).is_empty());
        assert!(ngram_draft(&[1, 1, 1, 1], 0).is_empty());
        assert_eq!(ngram_draft(&[7, 7, 7], 2), vec![7]);
        // One matching token is enough: 3 was followed by 4.
        assert_eq!(ngram_draft(&[3, 4, 5, 3], 2), vec![4, 5]);
    }
}
