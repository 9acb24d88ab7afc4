//! `ExpertSet`: which experts of one MoE layer a node owns, as a compact bitset; and
//! `LayerExperts`: one such set per model layer (none for a dense layer), the one type for
//! "the experts a process owns or maps" across the model.
//!
//! The text form is the one `--shards` and placement files use: comma-separated ids and
//! inclusive ranges, `0-95,200,310-320`. Parsing checks every token against the model's
//! expert count and names the bad token; formatting gives back the shortest such list.

use std::fmt;
use std::ops::RangeInclusive;

use crate::ModelError;

/// The most experts one MoE layer may have (wire frames carry expert ids as `u16`).
pub const EXPERTS_PER_LAYER_MAX: usize = 1 << 16;

/// How much of an offending text or token an error message quotes, in bytes.
const ERROR_QUOTE_BYTES_MAX: usize = 80;

const WORD_BITS: usize = 64;

/// A set of expert ids `0..n_experts` of one MoE layer, one bit per expert.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ExpertSet {
    n_experts: usize,
    words: Vec<u64>,
}

impl ExpertSet {
    /// The empty set over `n_experts` experts.
    ///
    /// Fails when `n_experts` exceeds [`EXPERTS_PER_LAYER_MAX`].
    pub fn empty(n_experts: usize) -> Result<Self, ModelError> {
        check_n_experts(n_experts)?;
        Ok(Self {
            n_experts,
            words: vec![0; n_experts.div_ceil(WORD_BITS)],
        })
    }

    /// The set of all `n_experts` experts.
    ///
    /// Fails when `n_experts` exceeds [`EXPERTS_PER_LAYER_MAX`].
    pub fn full(n_experts: usize) -> Result<Self, ModelError> {
        let mut set = Self::empty(n_experts)?;
        set.insert_range(0, n_experts);
        Ok(set)
    }

    /// Parses `0-95,200,310-320` (spaces around tokens allowed; an empty or all-blank text is
    /// the empty set) for a layer of `n_experts` experts.
    ///
    /// Ranges are inclusive and may overlap. Every id must be `< n_experts`. The error names
    /// the offending token and why.
    pub fn parse(text: &str, n_experts: usize) -> Result<Self, ModelError> {
        let mut set = Self::empty(n_experts)?;
        if text.trim().is_empty() {
            return Ok(set);
        }
        for raw in text.split(',') {
            let token = raw.trim();
            let fail = |reason: String| ModelError::ExpertSetSyntax {
                text: quote(text),
                token: quote(token),
                reason,
            };
            if token.is_empty() {
                return Err(fail("empty token (stray comma?)".into()));
            }
            let (first, last) = match token.split_once('-') {
                Some((a, b)) => (parse_id(a.trim()), parse_id(b.trim())),
                None => (parse_id(token), parse_id(token)),
            };
            let (Some(first), Some(last)) = (first, last) else {
                return Err(fail(
                    "expected an expert id or an inclusive range like 3-7 (decimal digits)".into(),
                ));
            };
            if first > last {
                return Err(fail(format!(
                    "range starts after it ends ({first} > {last})"
                )));
            }
            if last >= n_experts {
                return Err(fail(format!(
                    "expert {last} is past the model's {n_experts} experts (ids 0-{})",
                    n_experts.saturating_sub(1)
                )));
            }
            set.insert_range(first, last + 1);
        }
        Ok(set)
    }

    /// How many experts the layer has (the universe of this set, not its size).
    pub fn n_experts(&self) -> usize {
        self.n_experts
    }

    /// How many experts are in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set holds no expert.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Whether `expert` is in the set (`false` for ids past the layer).
    pub fn contains(&self, expert: usize) -> bool {
        self.words
            .get(expert / WORD_BITS)
            .is_some_and(|w| w & (1 << (expert % WORD_BITS)) != 0)
    }

    /// Adds `expert`; fails when it is not `< n_experts`.
    pub fn insert(&mut self, expert: usize) -> Result<(), ModelError> {
        if expert >= self.n_experts {
            return Err(ModelError::ExpertSetSyntax {
                text: String::new(),
                token: expert.to_string(),
                reason: format!(
                    "expert {expert} is past the model's {} experts",
                    self.n_experts
                ),
            });
        }
        self.insert_range(expert, expert + 1);
        Ok(())
    }

    /// Adds every expert of `other` (ids past this set's layer are ignored).
    pub fn union_with(&mut self, other: &ExpertSet) {
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
        self.clear_tail();
    }

    /// The experts in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(i * WORD_BITS + bit)
            })
        })
    }

    /// The set as maximal inclusive ranges, ascending.
    pub fn ranges(&self) -> impl Iterator<Item = RangeInclusive<usize>> + '_ {
        let mut ids = self.iter().peekable();
        std::iter::from_fn(move || {
            let first = ids.next()?;
            let mut last = first;
            while ids.peek() == Some(&(last + 1)) {
                last += 1;
                ids.next();
            }
            Some(first..=last)
        })
    }

    /// Inserts `start..end`, which the caller has checked is inside the layer.
    fn insert_range(&mut self, start: usize, end: usize) {
        for expert in start..end.min(self.n_experts) {
            if let Some(word) = self.words.get_mut(expert / WORD_BITS) {
                *word |= 1 << (expert % WORD_BITS);
            }
        }
    }

    /// Clears bits past `n_experts` in the last word so that equality and `len` stay exact.
    fn clear_tail(&mut self) {
        let used = self.n_experts % WORD_BITS;
        if used != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << used) - 1;
            }
        }
    }
}

/// The text form: `0-95,200,310-320`; the empty set formats as "".
impl fmt::Display for ExpertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if range.start() == range.end() {
                write!(f, "{}", range.start())?;
            } else {
                write!(f, "{}-{}", range.start(), range.end())?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ExpertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ExpertSet({}/{}: \"{self}\")",
            self.len(),
            self.n_experts
        )
    }
}

/// The experts a process owns (or maps) in every layer of a model: `None` for a layer
/// without routed experts (and for a layer it has none of), else that layer's set.
///
/// The wire's `ShardSummary` is only its text form (`moe_cluster::wire`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerExperts {
    layers: Vec<Option<ExpertSet>>,
}

impl LayerExperts {
    /// One entry per model layer, as given.
    pub fn new(layers: Vec<Option<ExpertSet>>) -> Self {
        Self { layers }
    }

    /// No experts in any of `n_layers` layers.
    pub fn none(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
        }
    }

    /// `set` in every layer for which `is_moe(layer)`, nothing elsewhere.
    pub fn uniform(set: &ExpertSet, n_layers: usize, is_moe: impl Fn(usize) -> bool) -> Self {
        Self {
            layers: (0..n_layers)
                .map(|l| is_moe(l).then(|| set.clone()))
                .collect(),
        }
    }

    /// Parses a `--shards` list (`0-95,200`) as the same experts in every MoE layer.
    pub fn parse_uniform(
        text: &str,
        n_experts: usize,
        n_layers: usize,
        is_moe: impl Fn(usize) -> bool,
    ) -> Result<Self, ModelError> {
        Ok(Self::uniform(
            &ExpertSet::parse(text, n_experts)?,
            n_layers,
            is_moe,
        ))
    }

    /// The number of model layers (MoE or not).
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The experts of model layer `layer`, if it has any entry.
    pub fn in_layer(&self, layer: usize) -> Option<&ExpertSet> {
        self.layers.get(layer).and_then(Option::as_ref)
    }

    /// `(model layer, experts)` of every layer with an entry, in layer order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &ExpertSet)> + '_ {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(l, s)| s.as_ref().map(|s| (l, s)))
    }

    /// Layer by layer, the union with `other` (an entry in either gives one in the result).
    /// The layer counts must agree (checked by the caller).
    pub fn union(&self, other: &LayerExperts) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .zip(&other.layers)
                .map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => {
                        let mut u = a.clone();
                        u.union_with(b);
                        Some(u)
                    }
                    (a, b) => b.clone().or_else(|| a.clone()),
                })
                .collect(),
        }
    }
}

/// `layer L: 0-95; layer M: ...` for every layer with an entry.
impl fmt::Display for LayerExperts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (layer, set)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "layer {layer}: {set}")?;
        }
        Ok(())
    }
}

fn check_n_experts(n_experts: usize) -> Result<(), ModelError> {
    if n_experts == 0 || n_experts > EXPERTS_PER_LAYER_MAX {
        return Err(ModelError::PlacementModel(format!(
            "a MoE layer must have 1 to EXPERTS_PER_LAYER_MAX = {EXPERTS_PER_LAYER_MAX} experts, \
             not {n_experts}"
        )));
    }
    Ok(())
}

/// A decimal id: ASCII digits only (no sign, no spaces inside), at most 9 of them.
fn parse_id(text: &str) -> Option<usize> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `text`, cut at a char boundary to at most [`ERROR_QUOTE_BYTES_MAX`] bytes.
pub fn quote(text: &str) -> String {
    if text.len() <= ERROR_QUOTE_BYTES_MAX {
        return text.to_string();
    }
    let mut end = ERROR_QUOTE_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_ranges_and_singles() {
        let set = ExpertSet::parse("0-95, 200,310-320", 384).unwrap();
        assert_eq!(set.len(), 96 + 1 + 11);
        assert!(set.contains(0) && set.contains(95) && !set.contains(96));
        assert!(set.contains(200) && set.contains(320) && !set.contains(321));
        assert_eq!(set.to_string(), "0-95,200,310-320");
        assert_eq!(ExpertSet::parse(&set.to_string(), 384).unwrap(), set);
    }

    #[test]
    fn overlapping_tokens_merge_and_format_canonically() {
        let set = ExpertSet::parse("5,3-4,0-2,4-6,63,64", 128).unwrap();
        assert_eq!(set.to_string(), "0-6,63-64");
    }

    #[test]
    fn empty_text_is_empty_set_and_full_covers_all() {
        assert!(ExpertSet::parse("  ", 8).unwrap().is_empty());
        assert_eq!(ExpertSet::parse("", 8).unwrap().to_string(), "");
        let full = ExpertSet::full(130).unwrap();
        assert_eq!(full.len(), 130);
        assert_eq!(full.to_string(), "0-129");
        assert_eq!(full.iter().last(), Some(129));
    }

    #[test]
    fn errors_name_the_bad_token() {
        for (text, token, reason) in [
            ("0-95,x,100", "x", "expected an expert id"),
            ("0-95,,100", "", "empty token"),
            ("10-3", "10-3", "range starts after it ends"),
            ("0-384", "0-384", "past the model's 384 experts"),
            ("384", "384", "past the model's 384 experts"),
            ("+5", "+5", "expected an expert id"),
            ("1-2-3", "1-2-3", "expected an expert id"),
            (
                "99999999999999999999",
                "99999999999999999999",
                "expected an expert id",
            ),
        ] {
            match ExpertSet::parse(text, 384) {
                Err(ModelError::ExpertSetSyntax {
                    token: t,
                    reason: r,
                    ..
                }) => {
                    assert_eq!(t, token, "{text}");
                    assert!(r.contains(reason), "{text}: {r}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn universe_is_bounded() {
        assert!(ExpertSet::empty(0).is_err());
        assert!(ExpertSet::empty(EXPERTS_PER_LAYER_MAX).is_ok());
        assert!(ExpertSet::empty(EXPERTS_PER_LAYER_MAX + 1).is_err());
    }

    #[test]
    fn insert_and_union() {
        let mut a = ExpertSet::empty(70).unwrap();
        a.insert(69).unwrap();
        assert!(a.insert(70).is_err());
        let b = ExpertSet::parse("0-1", 70).unwrap();
        a.union_with(&b);
        assert_eq!(a.to_string(), "0-1,69");
        let mut small = ExpertSet::empty(3).unwrap();
        small.union_with(&ExpertSet::full(64).unwrap());
        assert_eq!(small.to_string(), "0-2");
        assert_eq!(small.len(), 3);
    }

    #[test]
    fn long_tokens_are_quoted_short() {
        let text = "x".repeat(10_000);
        let err = ExpertSet::parse(&text, 8).unwrap_err().to_string();
        assert!(err.len() < 400, "{}", err.len());
    }
}
