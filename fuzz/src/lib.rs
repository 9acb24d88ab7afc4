//! The bodies of the fuzz targets, as plain functions so that both the libFuzzer targets
//! (`fuzz_targets/`, nightly) and the stable driver (`src/bin/fuzz_stable.rs`) run them.
//!
//! Each body must never panic on any input: a panic is a bug in the code under test (or a
//! broken invariant asserted here).

mod gguf_reader;
mod http_request;

pub use gguf_reader::{gguf_reader, gguf_seed_model, gguf_seeds};
pub use http_request::{http_exchange, http_request, http_seeds};

use moe_cluster::placement::{ExpertSet, Placement};
use moe_cluster::wire::{
    decode_frame, encode_frame, seal_frame, AuthProof, ErrorCode, ErrorMessage, ExpertReply,
    ExpertRequest, ExpertRoute, Heartbeat, Hello, Identity, LayerShards, Message, ModelShape,
    SendMac, SessionMac, ShardSummary, WireDtype, PROTOCOL_VERSION,
};

/// The receiver's model in the frame target: small, so valid requests are easy to reach.
pub const FUZZ_SHAPE: ModelShape = ModelShape {
    n_experts: 16,
    hidden_dim: 4,
};
/// The MoE layers and experts per layer in the placement target.
pub const FUZZ_MOE_LAYERS: [usize; 3] = [1, 2, 5];
/// Experts per MoE layer in the placement target.
pub const FUZZ_N_EXPERTS: usize = 16;

const KEY: [u8; 32] = [0x5a; 32];

/// One valid message of each kind, the starting points of mode 2 and good seeds.
pub fn sample_messages() -> Vec<Message> {
    let mut request = ExpertRequest::new(7, 2, WireDtype::Bf16, 4);
    let _ = request.push_token(
        &[1.0, -2.0, 0.5, 3.0],
        &[ExpertRoute {
            expert: 3,
            weight: 0.7,
        }],
    );
    let _ = request.push_token(
        &[0.0; 4],
        &[
            ExpertRoute {
                expert: 15,
                weight: 0.2,
            },
            ExpertRoute {
                expert: 0,
                weight: 0.1,
            },
        ],
    );
    vec![
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            nonce: [2; 32],
            encrypt: false,
        }),
        Message::Identity(Identity {
            model_fingerprint: [1; 32],
            node_name: "e1".into(),
            shards: ShardSummary {
                all_layers: "0-7,9".into(),
                overrides: vec![LayerShards {
                    layer: 2,
                    experts: "1-3".into(),
                }],
            },
            exact: true,
        }),
        Message::AuthProof(AuthProof { hmac: [3; 32] }),
        Message::ExpertRequest(request),
        Message::ExpertReply(ExpertReply {
            step_id: 7,
            layer: 2,
            dtype: WireDtype::F32,
            n_tokens: 1,
            hidden_dim: 4,
            partials: vec![0; 16],
        }),
        Message::Heartbeat(Heartbeat { counter: 9 }),
        Message::Error(ErrorMessage::new(ErrorCode::Other, "bye")),
    ]
}

/// Frame decoding. The first byte picks the mode:
/// - 0: the rest is a whole frame, decoded as received (length, MAC, truncation paths);
/// - 1: the rest is an archive, sealed with a valid MAC, then decoded (rkyv validation and
///   field checks on arbitrary archives);
/// - 2: a valid archive of sample message `rest[0]`, overwritten at (u16 offset, byte) pairs
///   from `rest[1..]`, sealed and decoded (field checks near valid messages).
///
/// A message that decodes must encode and decode again to itself.
pub fn frame_decode(data: &[u8]) -> Option<()> {
    let (&mode, rest) = data.split_first()?;
    let (mut sender, mut receiver) = SessionMac::pair_from_key(KEY);
    let frame = match mode % 3 {
        0 => rest.to_vec(),
        1 => seal_frame(rest, &mut sender.send).ok()?,
        _ => {
            let (&pick, edits) = rest.split_first()?;
            let messages = sample_messages();
            let message = messages.get(usize::from(pick) % messages.len())?;
            let mut archive = rkyv_bytes(message)?;
            let len = archive.len().max(1);
            for edit in edits.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]]));
                if let Some(byte) = archive.get_mut(at % len) {
                    *byte = edit[2];
                }
            }
            seal_frame(&archive, &mut sender.send).ok()?
        }
    };
    let message = decode_frame(&frame, &mut receiver.recv, &FUZZ_SHAPE).ok()?;
    let (mut again_tx, mut again_rx) = SessionMac::pair_from_key(KEY);
    let again = encode_frame(&message, &mut again_tx.send).expect("a decoded message encodes");
    let back = decode_frame(&again, &mut again_rx.recv, &FUZZ_SHAPE).expect("and decodes again");
    assert!(same(&back, &message), "re-decoded message differs");
    Some(())
}

/// Equality with NaN-free weights (checked on decode) but maybe-NaN f32 partial bytes: the
/// messages compare by their encoded bytes.
fn same(a: &Message, b: &Message) -> bool {
    rkyv_bytes(a) == rkyv_bytes(b)
}

fn rkyv_bytes(message: &Message) -> Option<Vec<u8>> {
    // A frame is [u32 len][archive][u64 seq][32 mac]; take the archive back out.
    let frame = encode_frame(message, &mut SendMac::new(KEY)).ok()?;
    frame
        .get(4..frame.len().checked_sub(40)?)
        .map(<[u8]>::to_vec)
}

/// Placement and expert-list parsing. Text that parses must satisfy the placement's
/// invariants and survive `to_toml` -> `parse` unchanged.
pub fn placement_parse(data: &[u8]) -> Option<()> {
    let text = std::str::from_utf8(data).ok()?;
    if let Ok(set) = ExpertSet::parse(text, FUZZ_N_EXPERTS) {
        let again =
            ExpertSet::parse(&set.to_string(), FUZZ_N_EXPERTS).expect("formatted set parses");
        assert_eq!(again, set);
    }
    let placement = Placement::parse(text, &FUZZ_MOE_LAYERS, FUZZ_N_EXPERTS).ok()?;
    for &layer in &FUZZ_MOE_LAYERS {
        for expert in 0..FUZZ_N_EXPERTS {
            assert!(
                !placement.owners(layer, expert).is_empty(),
                "unowned expert accepted"
            );
        }
    }
    let again = Placement::parse(&placement.to_toml(), &FUZZ_MOE_LAYERS, FUZZ_N_EXPERTS)
        .expect("to_toml output parses");
    for &layer in &FUZZ_MOE_LAYERS {
        for expert in 0..FUZZ_N_EXPERTS {
            assert_eq!(again.owners(layer, expert), placement.owners(layer, expert));
        }
    }
    Some(())
}
