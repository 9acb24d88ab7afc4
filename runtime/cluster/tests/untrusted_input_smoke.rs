//! Stable-toolchain stand-in for the fuzz targets in `fuzz/` (which need nightly): random
//! and mutated inputs into the frame decoder and the placement parser must give errors,
//! never panics, and whatever is accepted must round-trip.

use moe_cluster::placement::{ExpertSet, Placement};
use moe_cluster::wire::{
    decode_frame, encode_frame, seal_frame, ExpertRequest, ExpertRoute, Heartbeat, Message,
    ModelShape, SessionMac, WireDtype,
};
use proptest::prelude::*;

const SHAPE: ModelShape = ModelShape {
    n_experts: 16,
    hidden_dim: 4,
};
const KEY: [u8; 32] = [0x5a; 32];

fn request_archive() -> Vec<u8> {
    let mut request = ExpertRequest::new(1, 2, WireDtype::Bf16, 4);
    request
        .push_token(
            &[1.0, 2.0, 3.0, 4.0],
            &[ExpertRoute {
                expert: 3,
                weight: 0.5,
            }],
        )
        .unwrap();
    request
        .push_token(
            &[0.0; 4],
            &[
                ExpertRoute {
                    expert: 1,
                    weight: 0.5,
                },
                ExpertRoute {
                    expert: 15,
                    weight: 0.5,
                },
            ],
        )
        .unwrap();
    let (mut a, _) = SessionMac::pair_from_key(KEY);
    let frame = encode_frame(&Message::ExpertRequest(request), &mut a.send).unwrap();
    frame[4..frame.len() - 40].to_vec()
}

proptest! {
    #[test]
    fn raw_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let (_, mut b) = SessionMac::pair_from_key(KEY);
        let _ = decode_frame(&bytes, &mut b.recv, &SHAPE);
    }

    #[test]
    fn sealed_random_archives_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (mut a, mut b) = SessionMac::pair_from_key(KEY);
        let frame = seal_frame(&bytes, &mut a.send).unwrap();
        let _ = decode_frame(&frame, &mut b.recv, &SHAPE);
    }

    #[test]
    fn mutated_request_archives_are_checked(
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6)
    ) {
        let mut archive = request_archive();
        let len = archive.len();
        for (at, byte) in edits {
            archive[usize::from(at) % len] = byte;
        }
        let (mut a, mut b) = SessionMac::pair_from_key(KEY);
        let frame = seal_frame(&archive, &mut a.send).unwrap();
        if let Ok(Message::ExpertRequest(request)) = decode_frame(&frame, &mut b.recv, &SHAPE) {
            // Accepted means every index is usable.
            for token in 0..request.n_tokens as usize {
                prop_assert_eq!(Some(request.hidden_of(token).len()), request.dtype.row_bytes(4));
                prop_assert!(!request.routes_of(token).is_empty());
                for route in request.routes_of(token) {
                    prop_assert!(usize::from(route.expert) < SHAPE.n_experts);
                }
            }
        }
    }

    #[test]
    fn mutated_frames_fail_the_mac(at in any::<usize>(), flip in 1u8..=255) {
        let (mut a, mut b) = SessionMac::pair_from_key(KEY);
        let mut frame = encode_frame(&Message::Heartbeat(Heartbeat { counter: 3 }), &mut a.send).unwrap();
        let len = frame.len();
        frame[at % len] ^= flip;
        prop_assert!(decode_frame(&frame, &mut b.recv, &SHAPE).is_err());
    }

    #[test]
    fn expert_lists_never_panic_and_round_trip(text in "[0-9, \\-x]{0,40}") {
        if let Ok(set) = ExpertSet::parse(&text, 16) {
            prop_assert_eq!(ExpertSet::parse(&set.to_string(), 16).unwrap(), set);
        }
    }

    #[test]
    fn placement_text_never_panics(text in "(\\[\\[node\\]\\]\n|name = \"e[12]\"\n|addr = \"(local|127.0.0.1:[0-9]|h:1)\"\n|shards = \"[0-9,\\-]{0,8}\"\n|layers = \\{ \"[0-9]\" = \"[0-9\\-]{0,5}\" \\}\n|[ -~]{0,6}\n){0,12}") {
        if let Ok(placement) = Placement::parse(&text, &[1, 2, 5], 16) {
            for layer in [1, 2, 5] {
                for expert in 0..16 {
                    prop_assert!(!placement.owners(layer, expert).is_empty());
                }
            }
            let again = Placement::parse(&placement.to_toml(), &[1, 2, 5], 16).unwrap();
            prop_assert_eq!(again.to_toml(), placement.to_toml());
        }
    }
}
