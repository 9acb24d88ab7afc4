//! Dispatch planning for one MoE layer step: which node computes which (token, expert) pair.
//!
//! Decides: for every routed pair, one live owner from the placement — the owner with the
//! fewest pairs assigned so far in this step (ties rotate with token and expert), so replicas
//! share a step's load; and per node, the batch rows it needs, each once. Leaves to others:
//! sending, timeouts, and summing the replies (in node-index order, so results do not depend
//! on arrival order).

use crate::placement::{NodeIndex, Placement};
use moe_model::forward::{Route, Routing};
use moe_model::ModelError;

/// One node's share of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeWork {
    /// The node.
    pub node: NodeIndex,
    /// Batch rows it needs, ascending, each once.
    pub rows: Vec<u32>,
    /// Its routes; `token` indexes `rows` (not the batch).
    pub routes: Vec<Route>,
}

/// Splits a step's routing over the placement's live owners; the result is ordered by node.
pub fn plan_step(
    routing: &Routing,
    layer: usize,
    placement: &Placement,
    is_live: &dyn Fn(NodeIndex) -> bool,
) -> Result<Vec<NodeWork>, ModelError> {
    plan_routes(routing.routes(), layer, placement, is_live)
}

/// [`plan_step`] for a list of routes (e.g. the share of a node that failed mid-step).
pub fn plan_routes(
    routes: Vec<Route>,
    layer: usize,
    placement: &Placement,
    is_live: &dyn Fn(NodeIndex) -> bool,
) -> Result<Vec<NodeWork>, ModelError> {
    let n_nodes = placement.nodes().len();
    let mut assigned = vec![0usize; n_nodes];
    let mut per_node: Vec<Vec<Route>> = vec![Vec::new(); n_nodes];
    let live_owners = |route: &Route| -> Result<Vec<NodeIndex>, ModelError> {
        let owners = placement.owners(layer, route.expert as usize);
        let live: Vec<NodeIndex> = owners.iter().copied().filter(|&n| is_live(n)).collect();
        if live.is_empty() {
            let names: Vec<&str> = owners
                .iter()
                .filter_map(|&n| placement.node(n))
                .map(|n| n.name.as_str())
                .collect();
            return Err(ModelError::NoLiveOwner {
                layer,
                expert: route.expert as usize,
                owners: names.join(", "),
            });
        }
        Ok(live)
    };
    // Pass 1: pairs with one live owner have no choice; pass 2: replicated pairs go to the
    // least-loaded live owner, given everything already assigned.
    let mut replicated = Vec::new();
    for route in routes {
        let live = live_owners(&route)?;
        if let [only] = live[..] {
            assigned[only.0 as usize] += 1;
            per_node[only.0 as usize].push(route);
        } else {
            replicated.push((route, live));
        }
    }
    for (route, live) in replicated {
        // Ties go to the owner picked by (token + expert) mod owners, so a one-token decode
        // step still spreads its replicated experts over their owners.
        let start = (route.token as usize + route.expert as usize) % live.len();
        let chosen = live
            .iter()
            .enumerate()
            .min_by_key(|&(i, n)| {
                (
                    assigned[n.0 as usize],
                    (i + live.len() - start) % live.len(),
                )
            })
            .map(|(_, &n)| n)
            .unwrap_or(NodeIndex(0));
        assigned[chosen.0 as usize] += 1;
        per_node[chosen.0 as usize].push(route);
    }
    for routes in &mut per_node {
        routes.sort_by_key(|r| (r.token, r.expert));
    }
    Ok(per_node
        .into_iter()
        .enumerate()
        .filter(|(_, routes)| !routes.is_empty())
        .map(|(i, routes)| {
            let mut rows: Vec<u32> = routes.iter().map(|r| r.token).collect();
            rows.sort_unstable();
            rows.dedup();
            let routes = routes
                .into_iter()
                .map(|r| Route {
                    token: rows.binary_search(&r.token).unwrap_or_default() as u32,
                    ..r
                })
                .collect();
            NodeWork {
                node: NodeIndex(i as u16),
                rows,
                routes,
            }
        })
        .collect())
}

impl NodeWork {
    /// Splits into parts of at most `max_rows` rows each (at least 1), in row order, each
    /// with its own routes re-indexed: for frames that must stay under the wire's limits.
    pub fn split(self, max_rows: usize) -> Vec<NodeWork> {
        let max_rows = max_rows.max(1);
        if self.rows.len() <= max_rows {
            return vec![self];
        }
        self.rows
            .chunks(max_rows)
            .enumerate()
            .map(|(i, rows)| {
                let start = (i * max_rows) as u32;
                let end = start + rows.len() as u32;
                let routes = self
                    .routes
                    .iter()
                    .filter(|r| (start..end).contains(&r.token))
                    .map(|r| Route {
                        token: r.token - start,
                        ..*r
                    })
                    .collect();
                NodeWork {
                    node: self.node,
                    rows: rows.to_vec(),
                    routes,
                }
            })
            .collect()
    }

    /// The routes with batch rows instead of indices into `rows`.
    pub fn batch_routes(&self) -> Vec<Route> {
        self.routes
            .iter()
            .map(|r| Route {
                token: self.rows[r.token as usize],
                ..*r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> Placement {
        let text = r#"
[[node]]
name = "a"
addr = "local"
shards = "0-3"
[[node]]
name = "b"
addr = "127.0.0.1:1"
shards = "2-7"
"#;
        Placement::parse(text, &[1], 8).unwrap()
    }

    fn routing() -> Routing {
        // token 0 -> experts 0, 2, 3, 5; token 1 -> 2, 3, 6, 7
        Routing {
            k: 4,
            experts: vec![0, 2, 3, 5, 2, 3, 6, 7],
            weights: vec![1.0; 8],
        }
    }

    #[test]
    fn replicas_share_load_and_rows_are_sent_once() {
        let plan = plan_step(&routing(), 1, &placement(), &|_| true).unwrap();
        assert_eq!(plan.len(), 2);
        let total: usize = plan.iter().map(|w| w.routes.len()).sum();
        assert_eq!(total, 8);
        // Node a owns 0-3, b owns 2-7: 2 and 3 are replicated, so each node gets 4 pairs.
        assert_eq!(plan[0].routes.len(), 4);
        assert_eq!(plan[1].routes.len(), 4);
        for w in &plan {
            let mut rows = w.rows.clone();
            rows.dedup();
            assert_eq!(rows, w.rows);
            assert!(w.routes.iter().all(|r| (r.token as usize) < w.rows.len()));
        }
    }

    #[test]
    fn split_keeps_every_route_with_its_row() {
        let plan = plan_step(&routing(), 1, &placement(), &|_| true).unwrap();
        for work in plan {
            let all = work.batch_routes();
            let parts = work.clone().split(1);
            assert_eq!(parts.len(), work.rows.len());
            let mut again: Vec<Route> = parts.iter().flat_map(NodeWork::batch_routes).collect();
            again.sort_by_key(|r| (r.token, r.expert));
            let mut want = all.clone();
            want.sort_by_key(|r| (r.token, r.expert));
            assert_eq!(again, want);
            assert_eq!(work.clone().split(100), vec![work]);
        }
    }

    #[test]
    fn dead_owner_moves_work_to_replica_or_fails_naming_owners() {
        let b_down = |n: NodeIndex| n.0 != 1;
        let only_a = Routing {
            k: 2,
            experts: vec![2, 3],
            weights: vec![1.0, 1.0],
        };
        let plan = plan_step(&only_a, 1, &placement(), &b_down).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].node, NodeIndex(0));
        let err = plan_step(&routing(), 1, &placement(), &b_down)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expert 5") && err.contains("b"), "{err}");
    }
}
