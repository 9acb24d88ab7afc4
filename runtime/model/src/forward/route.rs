//! [`Route`]: one routed (token, expert, weight) triple, what the router hands the expert
//! backends (`moe.rs`) and the CPU's FFN region (`ffn_region.rs`) computes.

/// One routed (token, expert, weight) triple.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route {
    /// Row of the batch.
    pub token: u32,
    /// Expert id.
    pub expert: u32,
    /// Final weight.
    pub weight: f32,
}
