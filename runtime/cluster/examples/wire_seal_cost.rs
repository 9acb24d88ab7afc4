//! What sealing and opening one expert-request frame costs, with the MAC only (the default)
//! and with `--wire-encrypt`, per frame size: `cargo run --release -p moe-cluster --example
//! wire_seal_cost`. Sizes follow Kimi K2.5 (hidden 7168): one decode token's hidden state in
//! f32 is 28 KiB, a 512-token prefill chunk 14 MiB.

use std::time::Instant;

use moe_cluster::wire::{
    decode_frame, encode_frame, ExpertRequest, ExpertRoute, Message, ModelShape, SessionMac,
    WireDtype,
};

/// Kimi K2.5's hidden size.
const HIDDEN: u32 = 7168;
/// Total bytes each measurement seals and opens (more repetitions for small frames).
const BYTES_PER_MEASUREMENT: usize = 256 << 20;

fn request(tokens: usize) -> Message {
    let mut r = ExpertRequest::new(1, 3, WireDtype::F32, HIDDEN);
    let hidden: Vec<f32> = (0..HIDDEN as usize)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let routes = [ExpertRoute {
        expert: 5,
        weight: 0.5,
    }];
    for _ in 0..tokens {
        r.push_token(&hidden, &routes).expect("a valid token");
    }
    Message::ExpertRequest(r)
}

/// Seconds per seal+open of `message` over one session pair.
fn seconds_per_frame(message: &Message, pair: (SessionMac, SessionMac), reps: usize) -> f64 {
    let shape = ModelShape {
        n_experts: 384,
        hidden_dim: HIDDEN as usize,
    };
    let (mut a, mut b) = pair;
    let start = Instant::now();
    for _ in 0..reps {
        let frame = encode_frame(message, &mut a.send).expect("frame");
        let back = decode_frame(&frame, &mut b.recv, &shape).expect("opens");
        std::hint::black_box(back);
    }
    start.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    println!("| tokens | frame bytes | MAC only µs | encrypted µs | encrypted / MAC only | encrypted GB/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for tokens in [1usize, 8, 64, 512] {
        let message = request(tokens);
        let bytes = encode_frame(&message, &mut SessionMac::pair_from_key([1; 32]).0.send)
            .expect("frame")
            .len();
        let reps = (BYTES_PER_MEASUREMENT / bytes).max(3);
        let mac = seconds_per_frame(&message, SessionMac::pair_from_key([1; 32]), reps);
        let enc = seconds_per_frame(&message, SessionMac::encrypted_pair_from_key([1; 32]), reps);
        println!(
            "| {tokens} | {bytes} | {:.1} | {:.1} | {:.2} | {:.2} |",
            mac * 1e6,
            enc * 1e6,
            enc / mac,
            bytes as f64 / enc / 1e9
        );
    }
}
