//! The placement TOML file: serde shapes mirroring the text, and their conversion into
//! [`PlacementNode`]s with every message naming the line of the offending value.
//!
//! Shape checks (unknown fields, wrong types, missing `name`/`addr`) come from serde with
//! `deny_unknown_fields`; value checks (names, addresses, expert lists, layer keys) are done
//! here, where the `Spanned` wrappers still know where each value was written.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{ExpertSet, NodeAddr, NodeName, PlacementNode, PLACEMENT_TEXT_BYTES_MAX};
use crate::ClusterError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    addr: Spanned<String>,
    #[serde(default)]
    metrics_addr: Option<Spanned<String>>,
    #[serde(default)]
    shards: Option<Spanned<String>>,
    #[serde(default)]
    layers: BTreeMap<String, Spanned<String>>,
}

/// Parses the file's `[[node]]` entries; cross-node checks are the caller's.
pub(super) fn parse_nodes(
    text: &str,
    moe_layers: &[usize],
    n_experts: usize,
) -> Result<Vec<PlacementNode>, ClusterError> {
    if text.len() > PLACEMENT_TEXT_BYTES_MAX {
        return Err(ClusterError::PlacementSyntax {
            line: 1,
            column: 1,
            message: format!(
                "file is {} bytes, more than PLACEMENT_TEXT_BYTES_MAX = {PLACEMENT_TEXT_BYTES_MAX}",
                text.len()
            ),
        });
    }
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| line_column(text, s.start))
            .unwrap_or((1, 1));
        ClusterError::PlacementSyntax {
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })?;
    raw.node
        .into_iter()
        .map(|node| convert_node(text, node, moe_layers, n_experts))
        .collect()
}

fn convert_node(
    text: &str,
    raw: RawNode,
    moe_layers: &[usize],
    n_experts: usize,
) -> Result<PlacementNode, ClusterError> {
    let written_name = raw.name.get_ref().clone();
    let fail = |span: Range<usize>, message: String| ClusterError::PlacementNode {
        location: format!("line {}", line_column(text, span.start).0),
        node: moe_model::expert_set::quote(&written_name),
        message,
    };
    let name = NodeName::new(raw.name.get_ref()).map_err(|m| fail(raw.name.span(), m))?;
    let addr = NodeAddr::parse(raw.addr.get_ref()).map_err(|m| fail(raw.addr.span(), m))?;
    let metrics_addr = match &raw.metrics_addr {
        Some(m) => Some(NodeAddr::parse(m.get_ref()).map_err(|e| fail(m.span(), e))?),
        None => None,
    };
    let parse_set = |value: &Spanned<String>| {
        ExpertSet::parse(value.get_ref(), n_experts).map_err(|e| fail(value.span(), e.to_string()))
    };
    let shards = match &raw.shards {
        Some(s) => parse_set(s)?,
        None => ExpertSet::empty(n_experts)?,
    };
    let mut layer_overrides = BTreeMap::new();
    for (key, value) in &raw.layers {
        let layer = key
            .parse::<usize>()
            .ok()
            .filter(|l| key.bytes().all(|b| b.is_ascii_digit()) && moe_layers.contains(l))
            .ok_or_else(|| {
                fail(
                    value.span(),
                    format!(
                        "layers key {:?} is not a MoE layer of the model (MoE layers: {})",
                        moe_model::expert_set::quote(key),
                        layer_list(moe_layers)
                    ),
                )
            })?;
        layer_overrides.insert(layer, parse_set(value)?);
    }
    Ok(PlacementNode {
        name,
        addr,
        metrics_addr,
        shards,
        layer_overrides,
        location: format!("line {}", line_column(text, raw.name.span().start).0),
    })
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// `[1, 2, 3, 7]` as "1-3,7" (short even for 60 layers).
fn layer_list(layers: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut iter = layers.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 7), (2, 4)); // after 'é' (2 bytes)
        assert_eq!(line_column(text, 6), (2, 3)); // inside 'é': start of it
        assert_eq!(line_column(text, 999), (3, 2));
    }

    #[test]
    fn layer_lists_compress() {
        assert_eq!(layer_list(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
    }
}
