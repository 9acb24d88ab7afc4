//! Draft tokens for speculative decoding without a second model: prompt lookup (n-gram)
//! drafting. The last few tokens of the sequence are searched for earlier in it; the tokens
//! that followed their most recent earlier occurrence are proposed as the continuation. Code
//! edits, quotes and summaries repeat long stretches of their input, so drafts there are often
//! right, and a wrong draft costs only the verify step's extra positions.
//!
//! Decides: what to propose. Verifying (one forward over the pending token and the draft,
//! accepting while the sampled token equals the drafted one) is the generation loop's.

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

#[cfg(test)]
mod tests {
    use super::*;

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
