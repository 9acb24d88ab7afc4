//! The `moe-node` binary.
fn main() {}
