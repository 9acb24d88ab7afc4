//! Route tiles (`src/tiles.rs`, `src/kernels/tile_main.glsl`): a prompt's routes to one
//! expert share a matvec workgroup (up to `ROUTE_TILE` of them), each reading its own token's
//! row. What this proves on Vulkan device 0, in both numeric modes, on the kq fixture's
//! Q4_K_M file (Q4_K gate/up, Q6_K down) with its expert stacks split over several buffers:
//!
//! - a 21-token call whose routes fill tiles of 8, 8 and 5 routes of one expert, of 1..3
//!   routes of others, gives bit for bit what the 21 tokens give one call each (tiles of one
//!   route, the single-route pipeline) and what the same call gives with tiles switched off:
//!   a tile's size changes no result, and no route reads another's token row or writes
//!   another's output row (a shifted input or output row changes the bits);
//! - in exact mode, the tiled call matches the CPU's exact experts within `EXACT_ABS_TOL`.

mod common;

use moe_kernels::NumericMode;
use moe_model::forward::{CpuCompute, ExpertCompute, Route};
use moe_model::model::Model;
use moe_vulkan::VulkanCompute;

/// Largest accepted |device - CPU| of one routed output value in exact mode (as in
/// `fast_experts.rs`).
const EXACT_ABS_TOL: f32 = 1e-5;
/// Expert chunks of at most this many bytes, so the layer's stacks span several buffers and
/// the tiles' dispatches are cut at chunk boundaries.
const TEST_CHUNK_BYTES: u64 = 1 << 20;
/// Tokens of the prompt: expert 5 gets all of them (tiles of 8, 8 and 5 routes).
const TOKENS: u32 = 21;

/// Token `t`'s routes: expert 5, plus one of experts 0..3 and (every other token) one of
/// 100..103, listed in no particular expert order.
fn routes_of(t: u32) -> Vec<Route> {
    let mut r = vec![
        Route {
            token: t,
            expert: t % 3,
            weight: 0.25 + 0.01 * t as f32,
        },
        Route {
            token: t,
            expert: 5,
            weight: 0.5,
        },
    ];
    if t.is_multiple_of(2) {
        r.insert(
            0,
            Route {
                token: t,
                expert: 100 + t % 4,
                weight: -0.125,
            },
        );
    }
    r
}

#[test]
fn a_prompts_tiled_routes_give_what_its_tokens_give_one_at_a_time() {
    let Some(device) =
        common::device_or_skip("a_prompts_tiled_routes_give_what_its_tokens_give_one_at_a_time")
    else {
        return;
    };
    let path = common::kq_q4_k_m();
    for mode in [NumericMode::Exact, NumericMode::Fast] {
        let model = Model::open(&path).unwrap().with_mode(mode);
        // Tiles on whatever the device (lavapipe computes one route per tile by default).
        let vk = VulkanCompute::with_chunk_bytes(device.clone(), &model, TEST_CHUNK_BYTES)
            .unwrap()
            .with_route_tiles(true);
        let d = model.cfg.n_embd;
        let n = TOKENS as usize;
        let h: Vec<f32> = (0..n * d)
            .map(|i| ((i * 53 % 199) as f32 - 99.0) / 150.0)
            .collect();
        let start: Vec<f32> = (0..n * d).map(|i| (i % 5) as f32 * 0.05).collect();
        let routes: Vec<Route> = (0..TOKENS).flat_map(routes_of).collect();
        let mut tiled = start.clone();
        vk.apply_routes(&model, 1, &h, &routes, &mut tiled).unwrap();
        let untiled_vk = VulkanCompute::with_chunk_bytes(device.clone(), &model, TEST_CHUNK_BYTES)
            .unwrap()
            .with_route_tiles(false);
        let mut untiled = start.clone();
        untiled_vk
            .apply_routes(&model, 1, &h, &routes, &mut untiled)
            .unwrap();
        assert!(
            tiled
                .iter()
                .zip(&untiled)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{mode:?}: tiles on and off differ"
        );
        for t in 0..n {
            let one: Vec<Route> = routes_of(t as u32)
                .into_iter()
                .map(|r| Route { token: 0, ..r })
                .collect();
            let mut alone = start[t * d..(t + 1) * d].to_vec();
            vk.apply_routes(&model, 1, &h[t * d..(t + 1) * d], &one, &mut alone)
                .unwrap();
            let row = &tiled[t * d..(t + 1) * d];
            let same = row
                .iter()
                .zip(&alone)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{mode:?}: token {t} computed in the prompt differs from computed alone"
            );
            assert!(
                row.iter().zip(&start[t * d..]).any(|(a, b)| a != b),
                "{mode:?}: token {t}'s routes added nothing"
            );
        }
        if mode == NumericMode::Exact {
            let mut cpu = start.clone();
            CpuCompute
                .apply_routes(&model, 1, &h, &routes, &mut cpu)
                .unwrap();
            let worst = cpu
                .iter()
                .zip(&tiled)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            println!("exact: |vulkan tiled - cpu| <= {worst:.2e}");
            assert!(worst <= EXACT_ABS_TOL, "exact tiled vs CPU: {worst:e}");
        }
    }
}
