//! Network-aware refinement of one MoE layer's placement: swaps of experts between nodes that
//! lower the layer's predicted time over a trace, trading compute balance against fan-out.
//!
//! The cost of one step of the layer is the simulator's ([`crate::simulate`]) without its
//! placement-independent parts:
//!
//! ```text
//! step_us = max_n (pairs_n × pair_us / speed_n)           compute, nodes in parallel
//!         + Σ_remote n rows_n × row_us                     each token row a node is sent:
//!                                                          request + reply bytes on the link
//!                                                          and through the router
//! ```
//!
//! where `rows_n` counts the step's tokens with at least one expert on node `n`. Experts that
//! fire together for the same token (co-activation) cost fewer rows on one node than spread
//! over several; balance costs less compute. Starting from the load-balanced packing, every
//! expert is offered a swap with an expert of each node its tokens co-fire with more than with
//! its own; a swap is kept only when the exact cost over the trace goes down (so the result is
//! never worse than the start under this model), for at most [`REFINE_PASSES_MAX`] passes.
//! Swaps keep every node's expert count, so memory stays as packed. Replicated experts stay
//! where they are; their tokens are counted round-robin over their owners (the router splits
//! them per step by load). Deterministic: fixed orders, ties to lower ids.

use moe_model::ExpertSet;

/// Passes over all experts; refinement also stops at the first pass that changes nothing.
pub const REFINE_PASSES_MAX: usize = 4;
/// Swap partners tried per (expert, node) pair, the least attached to their node first.
pub const REFINE_CANDIDATES_PER_NODE: usize = 4;

/// What a token row and a pair cost, microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowPairCost {
    /// One (token, expert) pair on a speed-1.0 node.
    pub pair_us: f64,
    /// One token row sent to (and answered by) a remote node.
    pub row_us: f64,
}

/// One layer's routing over a trace: per step, its tokens' expert lists.
pub struct LayerTrace {
    /// `[step][token]` the token's experts.
    pub steps: Vec<Vec<Vec<u32>>>,
}

struct State<'a> {
    cost: RowPairCost,
    speeds: &'a [f64],
    remote: &'a [bool],
    owner: Vec<Option<usize>>,
    /// Per global token: its step and experts.
    tokens: Vec<(usize, &'a [u32])>,
    /// Per expert: the global tokens it is in.
    tokens_of: Vec<Vec<usize>>,
    /// `[token][node]` experts of the token on the node.
    cnt: Vec<Vec<u32>>,
    pairs: Vec<Vec<u64>>,
    rows: Vec<Vec<u64>>,
}

impl State<'_> {
    fn step_cost(&self, s: usize) -> f64 {
        let compute = self.pairs[s]
            .iter()
            .zip(self.speeds)
            .map(|(&p, &v)| p as f64 * self.cost.pair_us / v)
            .fold(0.0, f64::max);
        let wire: f64 = self.rows[s]
            .iter()
            .zip(self.remote)
            .filter(|(_, &r)| r)
            .map(|(&n, _)| n as f64 * self.cost.row_us)
            .sum();
        compute + wire
    }

    /// Moves expert `e` (single owner) to node `to`.
    fn move_expert(&mut self, e: usize, to: usize) {
        let Some(from) = self.owner[e] else { return };
        for &t in &self.tokens_of[e] {
            let s = self.tokens[t].0;
            self.pairs[s][from] -= 1;
            self.pairs[s][to] += 1;
            self.cnt[t][from] -= 1;
            if self.cnt[t][from] == 0 {
                self.rows[s][from] -= 1;
            }
            self.cnt[t][to] += 1;
            if self.cnt[t][to] == 1 {
                self.rows[s][to] += 1;
            }
        }
        self.owner[e] = Some(to);
    }

    fn steps_of(&self, experts: &[usize]) -> Vec<usize> {
        let mut steps: Vec<usize> = experts
            .iter()
            .flat_map(|&e| self.tokens_of[e].iter().map(|&t| self.tokens[t].0))
            .collect();
        steps.sort_unstable();
        steps.dedup();
        steps
    }

    /// Tokens of `e` that share node `n` with another of their experts.
    fn affinity(&self, e: usize, n: usize) -> i64 {
        let own = self.owner[e] == Some(n);
        self.tokens_of[e]
            .iter()
            .map(|&t| i64::from(self.cnt[t][n]) - i64::from(own))
            .sum()
    }
}

/// Refines `sets` (one per node, replicas allowed) for `trace`; returns the swaps kept.
pub fn refine_layer(
    sets: &mut [ExpertSet],
    trace: &LayerTrace,
    speeds: &[f64],
    remote: &[bool],
    cost: RowPairCost,
) -> usize {
    let n_nodes = sets.len();
    let n_experts = sets.first().map_or(0, ExpertSet::n_experts);
    let mut owners = vec![Vec::new(); n_experts];
    for (n, set) in sets.iter().enumerate() {
        for e in set.iter() {
            owners[e].push(n);
        }
    }
    let owner: Vec<Option<usize>> = owners
        .iter()
        .map(|o| (o.len() == 1).then(|| o[0]))
        .collect();
    let tokens: Vec<(usize, &[u32])> = trace
        .steps
        .iter()
        .enumerate()
        .flat_map(|(s, toks)| toks.iter().map(move |t| (s, t.as_slice())))
        .collect();
    let mut tokens_of = vec![Vec::new(); n_experts];
    let mut cnt = vec![vec![0u32; n_nodes]; tokens.len()];
    let mut pairs = vec![vec![0u64; n_nodes]; trace.steps.len()];
    let mut rows = vec![vec![0u64; n_nodes]; trace.steps.len()];
    for (t, &(s, experts)) in tokens.iter().enumerate() {
        for &e in experts {
            let e = e as usize;
            if e >= n_experts {
                continue;
            }
            tokens_of[e].push(t);
            // A replicated expert's tokens go round-robin over its owners (the router gives
            // each pair to the least-loaded owner; the planner's simulator check replays it).
            let Some(&n) = owners[e].get(t % owners[e].len().max(1)) else {
                continue;
            };
            pairs[s][n] += 1;
            cnt[t][n] += 1;
            if cnt[t][n] == 1 {
                rows[s][n] += 1;
            }
        }
    }
    let mut st = State {
        cost,
        speeds,
        remote,
        owner,
        tokens,
        tokens_of,
        cnt,
        pairs,
        rows,
    };
    let mut kept = 0;
    for _ in 0..REFINE_PASSES_MAX {
        let mut changed = false;
        for e in 0..n_experts {
            let Some(home) = st.owner[e] else { continue };
            if st.tokens_of[e].is_empty() {
                continue;
            }
            let here = st.affinity(e, home);
            let mut best: Option<(f64, usize)> = None;
            let targets: Vec<usize> = (0..n_nodes)
                .filter(|&n| n != home && st.affinity(e, n) > here)
                .collect();
            for to in targets {
                // Partners on `to` least attached to it, ties to lower ids.
                let mut partners: Vec<(i64, usize)> = (0..n_experts)
                    .filter(|&f| st.owner[f] == Some(to))
                    .map(|f| (st.affinity(f, to) - st.affinity(f, home), f))
                    .collect();
                partners.sort_unstable();
                for &(_, f) in partners.iter().take(REFINE_CANDIDATES_PER_NODE) {
                    let steps = st.steps_of(&[e, f]);
                    let before: f64 = steps.iter().map(|&s| st.step_cost(s)).sum();
                    st.move_expert(e, to);
                    st.move_expert(f, home);
                    let after: f64 = steps.iter().map(|&s| st.step_cost(s)).sum();
                    st.move_expert(f, to);
                    st.move_expert(e, home);
                    let gain = before - after;
                    if gain > 1e-9 && best.is_none_or(|(g, _)| gain > g) {
                        best = Some((gain, f));
                    }
                }
                if let Some((_, f)) = best {
                    st.move_expert(e, to);
                    st.move_expert(f, home);
                    kept += 1;
                    changed = true;
                    break;
                }
            }
        }
        if !changed {
            break;
        }
    }
    if kept > 0 {
        for (n, set) in sets.iter_mut().enumerate() {
            let Ok(mut next) = ExpertSet::empty(n_experts) else {
                continue;
            };
            // Replicated experts stay; single-owner ones go where refinement put them.
            for e in set.iter().filter(|&e| st.owner[e].is_none()) {
                let _ = next.insert(e);
            }
            for e in (0..n_experts).filter(|&e| st.owner[e] == Some(n)) {
                let _ = next.insert(e);
            }
            *set = next;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize, experts: &[usize]) -> ExpertSet {
        let mut s = ExpertSet::empty(n).unwrap();
        for &e in experts {
            s.insert(e).unwrap();
        }
        s
    }

    /// Experts {0,2} always fire together and {1,3} together (one-token steps), and a
    /// packing that splits each pair over the two nodes.
    fn paired_trace_split_packing() -> (LayerTrace, Vec<ExpertSet>) {
        let steps = (0..40)
            .map(|i| vec![if i % 2 == 0 { vec![0, 2] } else { vec![1, 3] }])
            .collect();
        (LayerTrace { steps }, vec![set(4, &[0, 1]), set(4, &[2, 3])])
    }

    /// The split packing costs two rows per token; refinement brings each pair together.
    #[test]
    fn co_firing_experts_end_up_on_one_node() {
        let (trace, mut sets) = paired_trace_split_packing();
        let cost = RowPairCost {
            pair_us: 10.0,
            row_us: 50.0,
        };
        let kept = refine_layer(&mut sets, &trace, &[1.0, 1.0], &[true, true], cost);
        assert!(kept >= 1);
        let together = |a: usize, b: usize| sets.iter().any(|s| s.contains(a) && s.contains(b));
        assert!(together(0, 2) && together(1, 3), "{sets:?}");
        assert_eq!(sets[0].len() + sets[1].len(), 4);
        assert_eq!(sets[0].len(), 2, "swaps keep the node sizes");
    }

    /// When rows cost nothing, nothing is swapped away from a balanced packing.
    #[test]
    fn free_rows_leave_a_balanced_packing_alone() {
        let (trace, mut sets) = paired_trace_split_packing();
        let cost = RowPairCost {
            pair_us: 10.0,
            row_us: 0.0,
        };
        assert_eq!(
            refine_layer(&mut sets, &trace, &[1.0, 1.0], &[true, true], cost),
            0
        );
        assert_eq!(sets[0], set(4, &[0, 1]));
    }
}
