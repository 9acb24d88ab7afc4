//! Expert placement: which node owns which experts of which MoE layer.
//!
//! This module decides the placement's *shape and validity*: a TOML file (or a `--shards`
//! list) is parsed once into a [`Placement`] whose every MoE layer has every expert owned by
//! at least one node, whose node names are unique and whose addresses parse. Queries after
//! that cannot fail: [`Placement::owners`] gives the nodes owning one expert (several are
//! replicas), [`Placement::experts_of`] the experts a node owns in one layer.
//!
//! It leaves to others: liveness and load (the router picks the least-loaded *live* owner
//! among `owners`) and loading the weights. Planning from load statistics lives beside it:
//! routing traces are recorded and read by [`trace`], turned into placements by [`plan`] and
//! replayed against placements by [`simulate`].
//!
//! ```text
//! placement/expert_set.rs   ExpertSet: bitset over expert ids, "0-95,200,310-320" text form
//! placement/node.rs         NodeName, NodeAddr (IP:port, host:port or "local")
//! placement/file.rs         the TOML file: serde shapes, spans -> line numbers, checks
//! placement/trace.rs        routing traces: line format, writer (a forward Observer), reader
//! placement/plan.rs         the planner: replicate hot experts, pack by load and node speed
//! placement/refine.rs       network-aware swaps: balance against fan-out (co-activation)
//! placement/replay.rs       the one trace walk (router's dispatch rule) plan and simulate share
//! placement/simulate.rs     replay a trace against placements with a compute + network model
//! ```
//!
//! The file format, one `[[node]]` table per node:
//!
//! ```toml
//! [[node]]
//! name = "e1"                       # ASCII letters, digits, '.', '_', '-'
//! addr = "127.0.0.1:7001"           # IP:port, host:port, or "local" (the router's process)
//! metrics_addr = "127.0.0.1:9001"   # optional
//! shards = "0-127"                  # experts owned in every MoE layer (optional, default none)
//! layers = { "3" = "0-63" }         # optional per-layer sets replacing `shards` there
//! ```
//!
//! # Example
//!
//! ```
//! use moe_cluster::placement::{NodeIndex, Placement};
//!
//! let text = r#"
//! [[node]]
//! name = "e1"
//! addr = "127.0.0.1:7001"
//! shards = "0-5"
//! [[node]]
//! name = "e2"
//! addr = "local"
//! shards = "4-7"
//! layers = { "2" = "6-7" }
//! "#;
//! let placement = Placement::parse(text, &[1, 2], 8).unwrap();
//! assert_eq!(placement.owners(1, 4), &[NodeIndex(0), NodeIndex(1)]); // a replica
//! assert_eq!(placement.owners(2, 4), &[NodeIndex(0)]);
//! assert_eq!(placement.experts_of(NodeIndex(1), 2).unwrap().to_string(), "6-7");
//! ```

mod file;
mod node;

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use moe_model::expert_set::{ExpertSet, EXPERTS_PER_LAYER_MAX};
pub use node::{NodeAddr, NodeName, HOST_NAME_BYTES_MAX, NODE_NAME_BYTES_MAX};

use crate::ClusterError;

/// The most nodes one placement may list.
pub const NODES_MAX: usize = 256;
/// The most MoE layers a model may have; layer indices must also be below this.
pub const MOE_LAYERS_MAX: usize = 1024;
/// The longest placement file, in bytes.
pub const PLACEMENT_TEXT_BYTES_MAX: usize = 1 << 20;

/// A node's position in [`Placement::nodes`] (the order of the file's `[[node]]` entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeIndex(pub u16);

/// One node of a placement, as written (before resolving per-layer overrides).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementNode {
    /// Its unique name.
    pub name: NodeName,
    /// Where its data plane listens.
    pub addr: NodeAddr,
    /// Where it serves Prometheus metrics, when given.
    pub metrics_addr: Option<NodeAddr>,
    /// Experts it owns in every MoE layer without an override.
    pub shards: ExpertSet,
    /// Per-layer sets (by model layer index) that replace `shards` in that layer.
    pub layer_overrides: BTreeMap<usize, ExpertSet>,
    /// Where the entry came from, for messages: "line 7" or "entry 2".
    pub location: String,
}

impl PlacementNode {
    /// The experts this node owns in model layer `layer` (its override, else `shards`).
    pub fn experts_in(&self, layer: usize) -> &ExpertSet {
        self.layer_overrides.get(&layer).unwrap_or(&self.shards)
    }
}

/// A validated placement: nodes, and per MoE layer and expert the nodes that own it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    moe_layers: Vec<usize>,
    n_experts: usize,
    nodes: Vec<PlacementNode>,
    /// `owner_starts[slot * n_experts + e] .. owner_starts[.. + 1]` indexes `owner_list`.
    owner_starts: Vec<u32>,
    owner_list: Vec<NodeIndex>,
}

impl Placement {
    /// Parses and validates a placement file for a model whose MoE layers have the model
    /// layer indices `moe_layers` and `n_experts` routed experts each.
    ///
    /// Errors name the TOML line (syntax, unknown field, bad name, address, expert list or
    /// layer key, duplicate node) or the layer and experts left without owner.
    pub fn parse(
        text: &str,
        moe_layers: &[usize],
        n_experts: usize,
    ) -> Result<Placement, ClusterError> {
        let moe_layers = check_model(moe_layers, n_experts)?;
        let nodes = file::parse_nodes(text, &moe_layers, n_experts)?;
        Self::build(nodes, moe_layers, n_experts)
    }

    /// Builds a placement from nodes that each own the same experts in every MoE layer, as
    /// given on a command line (`--shards 0-95` for one node, or one entry per node).
    ///
    /// A single entry owning every expert is the one-process setup. Errors name the entry
    /// ("entry 1") instead of a line.
    pub fn from_shards(
        nodes: &[(NodeName, NodeAddr, ExpertSet)],
        moe_layers: &[usize],
        n_experts: usize,
    ) -> Result<Placement, ClusterError> {
        let moe_layers = check_model(moe_layers, n_experts)?;
        let mut entries = Vec::with_capacity(nodes.len());
        for (i, (name, addr, shards)) in nodes.iter().enumerate() {
            if shards.n_experts() != n_experts {
                return Err(ClusterError::PlacementNode {
                    location: format!("entry {i}"),
                    node: name.to_string(),
                    message: format!(
                        "expert set is over {} experts, the model has {n_experts}",
                        shards.n_experts()
                    ),
                });
            }
            entries.push(PlacementNode {
                name: name.clone(),
                addr: addr.clone(),
                metrics_addr: None,
                shards: shards.clone(),
                layer_overrides: BTreeMap::new(),
                location: format!("entry {i}"),
            });
        }
        Self::build(entries, moe_layers, n_experts)
    }

    /// Builds a placement from nodes with per-layer sets (e.g. a planner's output), with the
    /// same checks as a file. Errors name the entry's `location`.
    pub fn from_nodes(
        nodes: Vec<PlacementNode>,
        moe_layers: &[usize],
        n_experts: usize,
    ) -> Result<Placement, ClusterError> {
        let moe_layers = check_model(moe_layers, n_experts)?;
        Self::build(nodes, moe_layers, n_experts)
    }

    /// The nodes, in file order ([`NodeIndex`] `i` is `nodes()[i]`).
    pub fn nodes(&self) -> &[PlacementNode] {
        &self.nodes
    }

    /// The node at `index`, if any.
    pub fn node(&self, index: NodeIndex) -> Option<&PlacementNode> {
        self.nodes.get(usize::from(index.0))
    }

    /// The index of the node called `name`, if any.
    pub fn node_index(&self, name: &str) -> Option<NodeIndex> {
        let i = self.nodes.iter().position(|n| n.name.as_str() == name)?;
        u16::try_from(i).ok().map(NodeIndex)
    }

    /// The model layer indices of the MoE layers, ascending.
    pub fn moe_layers(&self) -> &[usize] {
        &self.moe_layers
    }

    /// Routed experts per MoE layer.
    pub fn n_experts(&self) -> usize {
        self.n_experts
    }

    /// The nodes owning `expert` of model layer `layer`, ascending by index: one owner, or
    /// several replicas. Empty only for a layer that is not a MoE layer or an expert id past
    /// the model (every real expert has an owner).
    pub fn owners(&self, layer: usize, expert: usize) -> &[NodeIndex] {
        let Some(slot) = self.slot(layer) else {
            return &[];
        };
        if expert >= self.n_experts {
            return &[];
        }
        let at = slot * self.n_experts + expert;
        let (Some(&start), Some(&end)) = (self.owner_starts.get(at), self.owner_starts.get(at + 1))
        else {
            return &[];
        };
        self.owner_list
            .get(start as usize..end as usize)
            .unwrap_or(&[])
    }

    /// The experts `node` owns in model layer `layer`; `None` for an unknown node or a layer
    /// that is not a MoE layer.
    pub fn experts_of(&self, node: NodeIndex, layer: usize) -> Option<&ExpertSet> {
        self.slot(layer)?;
        Some(self.node(node)?.experts_in(layer))
    }

    /// The placement as a file that [`Placement::parse`] reads back to an equal placement
    /// (locations aside).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            // Names, addresses and expert lists never need TOML escaping: their characters
            // are restricted when they are parsed.
            let _ = writeln!(
                out,
                "[[node]]\nname = \"{}\"\naddr = \"{}\"",
                node.name, node.addr
            );
            if let Some(metrics) = &node.metrics_addr {
                let _ = writeln!(out, "metrics_addr = \"{metrics}\"");
            }
            let _ = writeln!(out, "shards = \"{}\"", node.shards);
            if !node.layer_overrides.is_empty() {
                let items: Vec<String> = node
                    .layer_overrides
                    .iter()
                    .map(|(layer, set)| format!("\"{layer}\" = \"{set}\""))
                    .collect();
                let _ = writeln!(out, "layers = {{ {} }}", items.join(", "));
            }
            out.push('\n');
        }
        out
    }

    fn slot(&self, layer: usize) -> Option<usize> {
        self.moe_layers.binary_search(&layer).ok()
    }

    /// Checks the nodes against each other and the model, and indexes owners.
    fn build(
        nodes: Vec<PlacementNode>,
        moe_layers: Vec<usize>,
        n_experts: usize,
    ) -> Result<Placement, ClusterError> {
        check_nodes(&nodes, &moe_layers, n_experts)?;
        let mut owner_starts = Vec::with_capacity(moe_layers.len() * n_experts + 1);
        let mut owner_list = Vec::new();
        owner_starts.push(0u32);
        for &layer in &moe_layers {
            let mut unowned = ExpertSet::empty(n_experts)?;
            let sets: Vec<&ExpertSet> = nodes.iter().map(|n| n.experts_in(layer)).collect();
            for expert in 0..n_experts {
                let before = owner_list.len();
                for (i, set) in sets.iter().enumerate() {
                    if set.contains(expert) {
                        // check_nodes bounded the node count by NODES_MAX < u16::MAX.
                        owner_list.push(NodeIndex(i as u16));
                    }
                }
                if owner_list.len() == before {
                    unowned.insert(expert)?;
                }
                let end = u32::try_from(owner_list.len())
                    .map_err(|_| ClusterError::PlacementModel("too many owner entries".into()))?;
                owner_starts.push(end);
            }
            if !unowned.is_empty() {
                return Err(unowned_error(&nodes, layer, &unowned));
            }
        }
        Ok(Placement {
            moe_layers,
            n_experts,
            nodes,
            owner_starts,
            owner_list,
        })
    }
}

/// Checks the model shape; returns the MoE layer indices sorted and deduplicated.
fn check_model(moe_layers: &[usize], n_experts: usize) -> Result<Vec<usize>, ClusterError> {
    ExpertSet::empty(n_experts)?;
    let mut layers = moe_layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    if layers.is_empty() {
        return Err(ClusterError::PlacementModel(
            "the model has no MoE layer".into(),
        ));
    }
    if layers.len() > MOE_LAYERS_MAX || layers.last().is_some_and(|&l| l >= MOE_LAYERS_MAX) {
        return Err(ClusterError::PlacementModel(format!(
            "MoE layer indices must be below MOE_LAYERS_MAX = {MOE_LAYERS_MAX}"
        )));
    }
    Ok(layers)
}

/// Node count, unique names and addresses, expert sets over the model's experts, override
/// layers that are MoE layers.
fn check_nodes(
    nodes: &[PlacementNode],
    moe_layers: &[usize],
    n_experts: usize,
) -> Result<(), ClusterError> {
    if nodes.len() > NODES_MAX {
        let node = nodes
            .get(NODES_MAX)
            .map(|n| n.name.to_string())
            .unwrap_or_default();
        let location = nodes
            .get(NODES_MAX)
            .map(|n| n.location.clone())
            .unwrap_or_default();
        return Err(ClusterError::PlacementNode {
            location,
            node,
            message: format!("more than NODES_MAX = {NODES_MAX} nodes"),
        });
    }
    for (i, node) in nodes.iter().enumerate() {
        let fail = |message: String| ClusterError::PlacementNode {
            location: node.location.clone(),
            node: node.name.to_string(),
            message,
        };
        for earlier in nodes.iter().take(i) {
            if earlier.name == node.name {
                return Err(fail(format!(
                    "duplicate node name (first at {})",
                    earlier.location
                )));
            }
            if earlier.addr == node.addr {
                return Err(fail(format!(
                    "address {} is also node {:?}'s ({})",
                    node.addr, earlier.name, earlier.location
                )));
            }
        }
        let sets = std::iter::once(&node.shards).chain(node.layer_overrides.values());
        if sets.into_iter().any(|s| s.n_experts() != n_experts) {
            return Err(fail(format!(
                "an expert set is not over the model's {n_experts} experts"
            )));
        }
        if let Some(layer) = node
            .layer_overrides
            .keys()
            .find(|l| moe_layers.binary_search(l).is_err())
        {
            return Err(fail(format!(
                "layer {layer} is not a MoE layer of the model"
            )));
        }
    }
    Ok(())
}

fn unowned_error(nodes: &[PlacementNode], layer: usize, unowned: &ExpertSet) -> ClusterError {
    let overriders: Vec<String> = nodes
        .iter()
        .filter(|n| n.layer_overrides.contains_key(&layer))
        .map(|n| format!("node {:?} at {}", n.name.as_str(), n.location))
        .collect();
    let hint = if nodes.is_empty() {
        " (the placement lists no node)".to_string()
    } else if overriders.is_empty() {
        String::new()
    } else {
        format!(
            " (layer {layer} is overridden by {})",
            overriders.join(", ")
        )
    };
    ClusterError::ExpertUnowned {
        layer,
        experts: unowned.to_string(),
        hint,
    }
}

#[cfg(test)]
mod tests;
