//! Special-token partition: where control and user-defined token texts occur in the input,
//! found before any pre-tokenization, as llama.cpp's `tokenizer_st_partition` does.
//!
//! llama.cpp takes the special tokens longest text first and, for each, claims every
//! non-overlapping occurrence left to right inside the text no earlier token has claimed.
//! This module finds all occurrences of all special texts in one Aho-Corasick pass and then
//! claims them in that same order, so the result is the same while the text is scanned once.
//! Ties in length go to the lower id (llama.cpp's `std::sort` leaves them unspecified).
//!
//! With `parse_special = false`, CONTROL and UNKNOWN tokens are not looked for; USER_DEFINED
//! tokens still are (llama.cpp, after Hugging Face's added-token handling).

use std::collections::BTreeMap;
use std::ops::Range;

use aho_corasick::{AhoCorasick, MatchKind};

use super::TokenType;
use crate::ModelError;

/// A run of the input: a special token or text still to pre-tokenize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A special token found in the text.
    Token(u32),
    /// Byte range of plain text.
    Text(Range<usize>),
}

/// The special tokens of a vocabulary and an automaton over their texts.
#[derive(Debug)]
pub(crate) struct SpecialMatcher {
    /// `None` when the vocabulary has no special tokens.
    automaton: Option<AhoCorasick>,
    /// Per automaton pattern: token id, claim priority (0 = first), and whether it is found
    /// only when parsing special tokens.
    patterns: Vec<SpecialPattern>,
}

#[derive(Debug, Clone, Copy)]
struct SpecialPattern {
    id: u32,
    priority: u32,
    needs_parse_special: bool,
}

/// One occurrence of a special text.
#[derive(Debug, Clone, Copy)]
struct Occurrence {
    priority: u32,
    start: usize,
    end: usize,
    pattern: usize,
}

impl SpecialMatcher {
    /// Collects the CONTROL, USER_DEFINED and UNKNOWN tokens of a vocabulary.
    pub(crate) fn new(tokens: &[String], types: &[TokenType]) -> Result<Self, ModelError> {
        let mut special: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&id| {
                let t = types[id as usize];
                let kind_matches = matches!(
                    t,
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                );
                kind_matches && !tokens[id as usize].is_empty()
            })
            .collect();
        if special.is_empty() {
            return Ok(Self {
                automaton: None,
                patterns: Vec::new(),
            });
        }
        // Claim order: longest text first, then lower id.
        special.sort_by_key(|&id| (std::cmp::Reverse(tokens[id as usize].len()), id));
        let patterns: Vec<SpecialPattern> = special
            .iter()
            .enumerate()
            .map(|(priority, &id)| SpecialPattern {
                id,
                priority: priority as u32,
                needs_parse_special: types[id as usize] != TokenType::UserDefined,
            })
            .collect();
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(special.iter().map(|&id| tokens[id as usize].as_bytes()))
            .map_err(|e| ModelError::TokenizerInvalid {
                key: "tokenizer.ggml.tokens",
                detail: format!("special-token automaton: {e}"),
            })?;
        Ok(Self {
            automaton: Some(automaton),
            patterns,
        })
    }

    /// Number of special tokens looked for when parsing special tokens.
    pub(crate) fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Appends the fragments of `text` in order.
    pub(crate) fn partition(&self, text: &str, parse_special: bool, out: &mut Vec<Fragment>) {
        if text.is_empty() {
            return;
        }
        let whole = Fragment::Text(0..text.len());
        let Some(automaton) = &self.automaton else {
            out.push(whole);
            return;
        };
        let mut found: Vec<Occurrence> = automaton
            .find_overlapping_iter(text)
            .filter_map(|m| {
                let p = self.patterns[m.pattern().as_usize()];
                (parse_special || !p.needs_parse_special).then_some(Occurrence {
                    priority: p.priority,
                    start: m.start(),
                    end: m.end(),
                    pattern: m.pattern().as_usize(),
                })
            })
            .collect();
        if found.is_empty() {
            out.push(whole);
            return;
        }
        found.sort_unstable_by_key(|o| (o.priority, o.start));
        // Claimed spans, start -> (end, token id).
        let mut claimed: BTreeMap<usize, (usize, u32)> = BTreeMap::new();
        let mut current_priority = u32::MAX;
        let mut resume_at = 0;
        for o in found {
            if o.priority != current_priority {
                current_priority = o.priority;
                resume_at = 0;
            }
            // llama.cpp resumes its search for the same token after the previous occurrence.
            if o.start < resume_at || overlaps_claimed(&claimed, o.start, o.end) {
                continue;
            }
            claimed.insert(o.start, (o.end, self.patterns[o.pattern].id));
            resume_at = o.end;
        }
        let mut done = 0;
        for (start, (end, id)) in claimed {
            if start > done {
                out.push(Fragment::Text(done..start));
            }
            out.push(Fragment::Token(id));
            done = end;
        }
        if done < text.len() {
            out.push(Fragment::Text(done..text.len()));
        }
    }
}

/// Whether `start..end` overlaps a claimed span (claimed spans never overlap each other).
fn overlaps_claimed(claimed: &BTreeMap<usize, (usize, u32)>, start: usize, end: usize) -> bool {
    // The last claimed span starting before `end` is the only one that can overlap.
    claimed
        .range(..end)
        .next_back()
        .is_some_and(|(_, &(claimed_end, _))| claimed_end > start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(tokens: &[(&str, TokenType)]) -> SpecialMatcher {
        let texts: Vec<String> = tokens.iter().map(|(t, _)| t.to_string()).collect();
        let types: Vec<TokenType> = tokens.iter().map(|&(_, t)| t).collect();
        SpecialMatcher::new(&texts, &types).unwrap()
    }

    fn parts(m: &SpecialMatcher, text: &str, parse_special: bool) -> Vec<String> {
        let mut out = Vec::new();
        m.partition(text, parse_special, &mut out);
        out.into_iter()
            .map(|f| match f {
                Fragment::Token(id) => format!("#{id}"),
                Fragment::Text(r) => text[r].to_string(),
            })
            .collect()
    }

    #[test]
    fn longest_token_claims_first() {
        let m = matcher(&[
            ("a", TokenType::Normal),
            ("<s>", TokenType::Control),
            ("<s><s>", TokenType::Control),
            ("AB", TokenType::UserDefined),
            ("BCD", TokenType::UserDefined),
        ]);
        assert_eq!(m.len(), 4);
        assert_eq!(parts(&m, "x<s><s><s>y", true), ["x", "#2", "#1", "y"]);
        // "BCD" is longer, so it claims before "AB" can.
        assert_eq!(parts(&m, "ABCD", true), ["A", "#4"]);
        // Without parse_special only user-defined tokens are split off.
        assert_eq!(parts(&m, "<s>ABx", false), ["<s>", "#3", "x"]);
        assert_eq!(parts(&m, "", true), [""; 0]);
        assert_eq!(parts(&m, "plain", true), ["plain"]);
    }

    #[test]
    fn repeated_token_is_claimed_left_to_right_without_overlap() {
        let m = matcher(&[("aa", TokenType::Control)]);
        assert_eq!(parts(&m, "aaaaa", true), ["#0", "#0", "a"]);
    }
}
