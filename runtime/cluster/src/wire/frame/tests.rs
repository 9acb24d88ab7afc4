//! Frame round trips, tampering, replay, truncation, and one test crossing each limit.

use super::*;
use crate::wire::hidden::WireDtype;
use crate::wire::limits::*;
use crate::wire::message::*;

const SHAPE: ModelShape = ModelShape {
    n_experts: 384,
    hidden_dim: 16,
};

fn pair() -> (SessionMac, SessionMac) {
    SessionMac::pair_from_key([42; 32])
}

fn request(n_tokens: usize, dtype: WireDtype, shape: &ModelShape) -> ExpertRequest {
    let mut request = ExpertRequest::new(9, 3, dtype, shape.hidden_dim as u32);
    for t in 0..n_tokens {
        let hidden: Vec<f32> = (0..shape.hidden_dim)
            .map(|i| (t * 100 + i) as f32 * 0.25)
            .collect();
        let routes = [
            ExpertRoute {
                expert: (t % shape.n_experts) as u16,
                weight: 0.5,
            },
            ExpertRoute {
                expert: ((t + 1) % shape.n_experts) as u16,
                weight: 0.25,
            },
        ];
        request.push_token(&hidden, &routes).unwrap();
    }
    request
}

fn every_message() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            nonce: [9; 32],
            encrypt: true,
        }),
        Message::Identity(Identity {
            model_fingerprint: [7; 32],
            node_name: "expert-1".into(),
            shards: ShardSummary {
                all_layers: "0-95".into(),
                overrides: vec![LayerShards {
                    layer: 3,
                    experts: "0-63".into(),
                }],
            },
            exact: true,
        }),
        Message::AuthProof(AuthProof { hmac: [1; 32] }),
        Message::ExpertRequest(request(3, WireDtype::F32, &SHAPE)),
        Message::ExpertRequest(request(2, WireDtype::Bf16, &SHAPE)),
        Message::ExpertReply(ExpertReply {
            step_id: 9,
            layer: 3,
            dtype: WireDtype::Bf16,
            n_tokens: 2,
            hidden_dim: 16,
            partials: vec![5; 2 * 16 * 2],
        }),
        Message::Heartbeat(Heartbeat { counter: u64::MAX }),
        Message::Error(ErrorMessage::new(ErrorCode::Other, "shutting down")),
    ]
}

/// Seals `message` as the sender's next frame and opens it at the receiver.
fn round_trip(message: &Message) -> Result<Message, ClusterError> {
    let (mut a, mut b) = pair();
    let frame = encode_frame(message, &mut a.send)?;
    decode_frame(&frame, &mut b.recv, &SHAPE)
}

fn invalid(message: Message) -> String {
    match round_trip(&message) {
        Err(ClusterError::FrameInvalid(reason)) => reason,
        other => panic!("expected FrameInvalid, got {other:?}"),
    }
}

fn over_limit(message: Message) -> (&'static str, &'static str) {
    match round_trip(&message) {
        Err(ClusterError::FrameLimit {
            field, limit_name, ..
        }) => (field, limit_name),
        other => panic!("expected FrameLimit, got {other:?}"),
    }
}

#[test]
fn every_message_round_trips_in_sequence() {
    let (mut a, mut b) = pair();
    for message in every_message() {
        let frame = encode_frame(&message, &mut a.send).unwrap();
        assert_eq!(decode_frame(&frame, &mut b.recv, &SHAPE).unwrap(), message);
        // And the other direction.
        let frame = encode_frame(&message, &mut b.send).unwrap();
        assert_eq!(decode_frame(&frame, &mut a.recv, &SHAPE).unwrap(), message);
    }
    assert_eq!(a.send.next_seq(), 8);
    assert_eq!(b.recv.next_seq(), 8);
}

#[test]
fn request_accessors_and_bf16_hidden() {
    let req = request(3, WireDtype::Bf16, &SHAPE);
    assert_eq!(
        req.routes_of(2),
        &[
            ExpertRoute {
                expert: 2,
                weight: 0.5
            },
            ExpertRoute {
                expert: 3,
                weight: 0.25
            }
        ]
    );
    assert!(req.routes_of(3).is_empty());
    let mut hidden = Vec::new();
    crate::wire::decode_hidden(req.hidden_of(1), WireDtype::Bf16, &mut hidden).unwrap();
    assert_eq!(hidden.len(), 16);
    assert_eq!(hidden[4], 26.0); // (100 + 4) * 0.25, exact in bf16
    assert!(req.hidden_of(3).is_empty());
}

#[test]
fn every_mutated_byte_is_refused() {
    for message in every_message() {
        let (mut a, _) = pair();
        let frame = encode_frame(&message, &mut a.send).unwrap();
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x01;
            let (_, mut b) = pair();
            let result = decode_frame(&bad, &mut b.recv, &SHAPE);
            assert!(
                result.is_err(),
                "{} byte {at} of {}",
                message.kind(),
                frame.len()
            );
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    let (mut a, _) = pair();
    let frame = encode_frame(&every_message()[2], &mut a.send).unwrap();
    for len in 0..frame.len() {
        let (_, mut b) = pair();
        match decode_frame(&frame[..len], &mut b.recv, &SHAPE) {
            Err(ClusterError::FrameTruncated { .. }) => {}
            other => panic!("length {len}: {other:?}"),
        }
    }
    let mut longer = frame.clone();
    longer.push(0);
    let (_, mut b) = pair();
    assert!(matches!(
        decode_frame(&longer, &mut b.recv, &SHAPE),
        Err(ClusterError::FrameInvalid(_))
    ));
}

#[test]
fn replay_reorder_and_reflection_are_refused() {
    let (mut a, mut b) = pair();
    let first = encode_frame(&Message::Heartbeat(Heartbeat { counter: 1 }), &mut a.send).unwrap();
    let second = encode_frame(&Message::Heartbeat(Heartbeat { counter: 2 }), &mut a.send).unwrap();
    // Reordered: the second frame first.
    let (_, mut fresh) = pair();
    assert!(matches!(
        decode_frame(&second, &mut fresh.recv, &SHAPE),
        Err(ClusterError::FrameSequence {
            expected: 0,
            got: 1
        })
    ));
    decode_frame(&first, &mut b.recv, &SHAPE).unwrap();
    // Replayed.
    assert!(matches!(
        decode_frame(&first, &mut b.recv, &SHAPE),
        Err(ClusterError::FrameSequence {
            expected: 1,
            got: 0
        })
    ));
    decode_frame(&second, &mut b.recv, &SHAPE).unwrap();
    // Reflected back to its sender: the other direction's key.
    assert!(matches!(
        decode_frame(&first, &mut a.recv, &SHAPE),
        Err(ClusterError::FrameMac)
    ));
    // Another session's key.
    let (_, mut other) = SessionMac::pair_from_key([43; 32]);
    assert!(matches!(
        decode_frame(&first, &mut other.recv, &SHAPE),
        Err(ClusterError::FrameMac)
    ));
}

#[test]
fn handshake_frames_need_a_zero_mac() {
    let mut send = SendMac::unkeyed();
    let mut frame = encode_frame(&Message::Heartbeat(Heartbeat { counter: 1 }), &mut send).unwrap();
    assert!(frame.ends_with(&[0; MAC_BYTES]));
    decode_handshake_frame(&frame, &mut RecvMac::unkeyed(), &SHAPE).unwrap();
    let last = frame.len() - 1;
    frame[last] = 1;
    assert!(matches!(
        decode_handshake_frame(&frame, &mut RecvMac::unkeyed(), &SHAPE),
        Err(ClusterError::FrameMac)
    ));
    // A keyed receiver never accepts an unkeyed frame.
    frame[last] = 0;
    let (_, mut b) = pair();
    assert!(matches!(
        decode_frame(&frame, &mut b.recv, &SHAPE),
        Err(ClusterError::FrameMac)
    ));
}

#[test]
fn garbage_archives_with_valid_macs_are_refused_without_panic() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut refused = 0;
    for len in 0..600 {
        let archive: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let (mut a, mut b) = pair();
        let frame = seal_frame(&archive, &mut a.send).unwrap();
        match decode_frame(&frame, &mut b.recv, &SHAPE) {
            // The MAC and the sequence are right, so the refusal must be about the archive
            // or its fields, and say which.
            Err(ClusterError::FrameInvalid(detail)) => {
                assert!(
                    !detail.trim().is_empty(),
                    "garbage archive of {len} bytes refused without a reason"
                );
                refused += 1;
            }
            Err(ClusterError::FrameLimit { field, .. }) => {
                assert!(!field.is_empty(), "limit refusal of {len} bytes names no field");
                refused += 1;
            }
            Err(other) => panic!(
                "garbage archive of {len} bytes with a valid MAC refused for the wrong reason: {other}"
            ),
            // Random bytes can form a valid small message (a heartbeat with a random
            // counter): then it must be exactly that message, surviving a round trip.
            Ok(message) => {
                let again = encode_frame(&message, &mut a.send).unwrap();
                assert_eq!(
                    decode_frame(&again, &mut b.recv, &SHAPE).unwrap(),
                    message,
                    "an accepted garbage archive of {len} bytes"
                );
            }
        }
    }
    // Nearly all of them are refused (a valid tag with valid fields is rare).
    assert!(
        refused >= 500,
        "only {refused} of 600 garbage archives refused"
    );
}

#[test]
fn frame_bytes_max_is_enforced_on_both_ends() {
    let (mut a, mut b) = pair();
    let archive = vec![0u8; FRAME_BYTES_MAX - MAC_BYTES - 8 + 1];
    assert!(matches!(
        seal_frame(&archive, &mut a.send),
        Err(ClusterError::FrameTooLarge {
            limit_name: "FRAME_BYTES_MAX",
            ..
        })
    ));
    let mut frame = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&[0; 64]);
    assert!(matches!(
        decode_frame(&frame, &mut b.recv, &SHAPE),
        Err(ClusterError::FrameTooLarge {
            limit_name: "FRAME_BYTES_MAX",
            ..
        })
    ));
    // The handshake's smaller limit.
    let big = Message::Error(ErrorMessage {
        code: ErrorCode::Other,
        message: "x".repeat(HANDSHAKE_FRAME_BYTES_MAX),
        step_id: 0,
    });
    let frame = encode_frame(&big, &mut SendMac::unkeyed()).unwrap();
    assert!(matches!(
        decode_handshake_frame(&frame, &mut RecvMac::unkeyed(), &SHAPE),
        Err(ClusterError::FrameTooLarge {
            limit_name: "HANDSHAKE_FRAME_BYTES_MAX",
            ..
        })
    ));
}

#[test]
fn tokens_per_frame_max() {
    let shape = ModelShape {
        n_experts: 8,
        hidden_dim: 1,
    };
    let at = request(TOKENS_PER_FRAME_MAX, WireDtype::Bf16, &shape);
    let mut over = at.clone();
    assert!(over
        .push_token(
            &[0.0],
            &[ExpertRoute {
                expert: 0,
                weight: 1.0
            }]
        )
        .is_err());
    let (mut a, mut b) = pair();
    let frame = encode_frame(&Message::ExpertRequest(at.clone()), &mut a.send).unwrap();
    decode_frame(&frame, &mut b.recv, &shape).unwrap();
    // Built by hand past the limit.
    over.n_tokens += 1;
    over.hidden.extend_from_slice(&[0, 0]);
    over.routes.push(ExpertRoute {
        expert: 0,
        weight: 1.0,
    });
    over.token_offsets.push(over.routes.len() as u32);
    let frame = encode_frame(&Message::ExpertRequest(over), &mut a.send).unwrap();
    assert!(matches!(
        decode_frame(&frame, &mut b.recv, &shape),
        Err(ClusterError::FrameLimit {
            limit_name: "TOKENS_PER_FRAME_MAX",
            ..
        })
    ));
    let reply = ExpertReply {
        step_id: 0,
        layer: 0,
        dtype: WireDtype::Bf16,
        n_tokens: TOKENS_PER_FRAME_MAX as u32 + 1,
        hidden_dim: 1,
        partials: vec![0; (TOKENS_PER_FRAME_MAX + 1) * 2],
    };
    let frame = encode_frame(&Message::ExpertReply(reply), &mut a.send).unwrap();
    assert!(matches!(
        decode_frame(&frame, &mut b.recv, &shape),
        Err(ClusterError::FrameLimit {
            limit_name: "TOKENS_PER_FRAME_MAX",
            ..
        })
    ));
}

#[test]
fn experts_per_token_max() {
    let routes: Vec<ExpertRoute> = (0..=EXPERTS_PER_TOKEN_MAX as u16)
        .map(|e| ExpertRoute {
            expert: e,
            weight: 0.1,
        })
        .collect();
    let hidden = vec![0.0; 16];
    let mut at = ExpertRequest::new(1, 1, WireDtype::F32, 16);
    at.push_token(&hidden, &routes[..EXPERTS_PER_TOKEN_MAX])
        .unwrap();
    round_trip(&Message::ExpertRequest(at)).unwrap();
    let mut over = ExpertRequest::new(1, 1, WireDtype::F32, 16);
    assert!(over.push_token(&hidden, &routes).is_err());
    encode_hidden_into(&mut over, &hidden);
    over.routes = routes;
    over.token_offsets = vec![0, over.routes.len() as u32];
    over.n_tokens = 1;
    assert_eq!(
        over_limit(Message::ExpertRequest(over)).1,
        "EXPERTS_PER_TOKEN_MAX"
    );
}

fn encode_hidden_into(request: &mut ExpertRequest, hidden: &[f32]) {
    crate::wire::encode_hidden(hidden, request.dtype, &mut request.hidden);
}

#[test]
fn hidden_dim_max() {
    let reply = |dim: usize| {
        Message::ExpertReply(ExpertReply {
            step_id: 0,
            layer: 0,
            dtype: WireDtype::Bf16,
            n_tokens: 1,
            hidden_dim: dim as u32,
            partials: vec![0; dim * 2],
        })
    };
    let at = ModelShape {
        n_experts: 8,
        hidden_dim: HIDDEN_DIM_MAX,
    };
    let (mut a, mut b) = pair();
    let frame = encode_frame(&reply(HIDDEN_DIM_MAX), &mut a.send).unwrap();
    decode_frame(&frame, &mut b.recv, &at).unwrap();
    let over = ModelShape {
        n_experts: 8,
        hidden_dim: HIDDEN_DIM_MAX + 1,
    };
    let frame = encode_frame(&reply(HIDDEN_DIM_MAX + 1), &mut a.send).unwrap();
    assert!(matches!(
        decode_frame(&frame, &mut b.recv, &over),
        Err(ClusterError::FrameLimit {
            limit_name: "HIDDEN_DIM_MAX",
            ..
        })
    ));
}

fn identity(name: &str, shards: ShardSummary) -> Message {
    Message::Identity(Identity {
        model_fingerprint: [0; 32],
        node_name: name.into(),
        shards,
        exact: true,
    })
}

#[test]
fn node_name_bytes_max() {
    use crate::placement::NODE_NAME_BYTES_MAX;
    round_trip(&identity(
        &"n".repeat(NODE_NAME_BYTES_MAX),
        ShardSummary::default(),
    ))
    .unwrap();
    let reason = invalid(identity(
        &"n".repeat(NODE_NAME_BYTES_MAX + 1),
        ShardSummary::default(),
    ));
    assert!(reason.contains("NODE_NAME_BYTES_MAX"), "{reason}");
    assert!(invalid(identity("bad name", ShardSummary::default())).contains("' '"));
}

#[test]
fn shards_text_bytes_max_and_overrides_max() {
    let text = |n: usize| ",".repeat(n);
    let at = ShardSummary {
        all_layers: text(SHARDS_TEXT_BYTES_MAX),
        overrides: vec![],
    };
    round_trip(&identity("e", at)).unwrap();
    let over = ShardSummary {
        all_layers: text(SHARDS_TEXT_BYTES_MAX + 1),
        overrides: vec![],
    };
    assert_eq!(over_limit(identity("e", over)).1, "SHARDS_TEXT_BYTES_MAX");
    let entry = |n: usize| LayerShards {
        layer: 1,
        experts: text(n),
    };
    let over = ShardSummary {
        all_layers: String::new(),
        overrides: vec![entry(SHARDS_TEXT_BYTES_MAX + 1)],
    };
    assert_eq!(over_limit(identity("e", over)).1, "SHARDS_TEXT_BYTES_MAX");
    let at = ShardSummary {
        all_layers: String::new(),
        overrides: vec![entry(1); SHARD_OVERRIDES_MAX],
    };
    round_trip(&identity("e", at)).unwrap();
    let over = ShardSummary {
        all_layers: String::new(),
        overrides: vec![entry(1); SHARD_OVERRIDES_MAX + 1],
    };
    assert_eq!(over_limit(identity("e", over)).1, "SHARD_OVERRIDES_MAX");
}

#[test]
fn error_message_bytes_max() {
    let at = ErrorMessage::new(ErrorCode::Other, &"é".repeat(ERROR_MESSAGE_BYTES_MAX));
    assert!(at.message.len() <= ERROR_MESSAGE_BYTES_MAX);
    round_trip(&Message::Error(at)).unwrap();
    let over = ErrorMessage {
        code: ErrorCode::Other,
        message: "x".repeat(ERROR_MESSAGE_BYTES_MAX + 1),
        step_id: 0,
    };
    assert_eq!(
        over_limit(Message::Error(over)).1,
        "ERROR_MESSAGE_BYTES_MAX"
    );
}

#[test]
fn request_fields_are_checked() {
    let good = request(2, WireDtype::F32, &SHAPE);
    let with = |f: &dyn Fn(&mut ExpertRequest)| {
        let mut r = good.clone();
        f(&mut r);
        Message::ExpertRequest(r)
    };
    assert!(invalid(with(&|r| r.routes[1].expert = 384)).contains("expert 384 is past"));
    assert!(invalid(with(&|r| r.routes[0].weight = f32::NAN)).contains("weight NaN"));
    assert!(invalid(with(&|r| r.routes[1].weight = f32::INFINITY)).contains("weight inf"));
    assert!(invalid(with(&|r| r.routes[1].expert = r.routes[0].expert)).contains("twice"));
    assert!(invalid(with(&|r| r.token_offsets[1] = 0)).contains("not increasing"));
    assert!(invalid(with(&|r| r.token_offsets[1] = 5)).contains("out of range"));
    assert!(invalid(with(&|r| r.token_offsets[0] = 1)).contains("start at 0"));
    assert!(invalid(with(&|r| r.token_offsets[2] = 3)).contains("end at"));
    assert!(invalid(with(&|r| {
        r.token_offsets.pop();
    }))
    .contains("token offsets for 2 tokens"));
    assert!(invalid(with(&|r| {
        r.hidden.pop();
    }))
    .contains("hidden is 127 bytes"));
    assert!(invalid(with(&|r| r.dtype = WireDtype::Bf16)).contains("hidden is 128 bytes"));
    assert!(invalid(with(&|r| r.hidden_dim = 8)).contains("hidden_dim 8"));
    assert!(invalid(with(&|r| {
        r.n_tokens = 0;
        r.hidden.clear();
        r.routes.clear();
        r.token_offsets = vec![0];
    }))
    .contains("n_tokens is 0"));
}

#[test]
fn reply_fields_are_checked() {
    let reply = |n_tokens: u32, bytes: usize| {
        Message::ExpertReply(ExpertReply {
            step_id: 1,
            layer: 1,
            dtype: WireDtype::F32,
            n_tokens,
            hidden_dim: 16,
            partials: vec![0; bytes],
        })
    };
    round_trip(&reply(2, 128)).unwrap();
    assert!(invalid(reply(2, 127)).contains("partials is 127 bytes"));
    assert!(invalid(reply(3, 128)).contains("partials is 128 bytes"));
}

#[test]
fn wire_dtype_parses() {
    assert_eq!("bf16".parse::<WireDtype>().unwrap(), WireDtype::Bf16);
    assert_eq!("f32".parse::<WireDtype>().unwrap().to_string(), "f32");
    assert!("f16".parse::<WireDtype>().is_err());
}
