//! Handshakes over in-memory pipes and real TCP: success, and each refusal seen on both sides.

use super::*;
use crate::placement::ExpertSet;
use crate::wire::frame::decode_frame;
use crate::wire::message::{ExpertRoute, Heartbeat};
use crate::wire::{ExpertRequest, WireDtype};
use tokio::io::DuplexStream;

const SHAPE: ModelShape = ModelShape {
    n_experts: 384,
    hidden_dim: 8,
};

fn config(name: &str, secret: &[u8], fingerprint: u8, shards: &str) -> HandshakeConfig {
    HandshakeConfig::new(
        NodeName::new(name).unwrap(),
        [fingerprint; 32],
        ClusterSecret::new(secret).unwrap(),
        ShardSummary::uniform(&ExpertSet::parse(shards, SHAPE.n_experts).unwrap()),
        SHAPE,
    )
}

const SECRET: &[u8] = b"correct horse battery staple";

type Outcome = Result<(PeerInfo, SessionMac), ClusterError>;

/// A request of one token (`hidden`, 8 values) routed to expert 7 of layer 3.
fn one_token_request(dtype: WireDtype, hidden: &[f32; 8]) -> Message {
    let mut request = ExpertRequest::new(1, 3, dtype, 8);
    request
        .push_token(
            hidden,
            &[ExpertRoute {
                expert: 7,
                weight: 1.0,
            }],
        )
        .unwrap();
    Message::ExpertRequest(request)
}

async fn run(client: &HandshakeConfig, server: &HandshakeConfig) -> (Outcome, Outcome) {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    tokio::join!(
        client_handshake(&mut a, client),
        server_handshake(&mut b, server)
    )
}

#[tokio::test]
async fn success_gives_peer_info_and_working_session_keys() {
    let mut router = config("router", SECRET, 1, "");
    router.shards.overrides.push(crate::wire::LayerShards {
        layer: 3,
        experts: "5".into(),
    });
    let expert = config("e1", SECRET, 1, "0-95,200");
    let (client, server) = run(&router, &expert).await;
    let (server_info, mut router_mac) = client.unwrap();
    let (client_info, mut expert_mac) = server.unwrap();
    assert_eq!(server_info.name.as_str(), "e1");
    assert_eq!(server_info.shards.all_layers.to_string(), "0-95,200");
    assert_eq!(server_info.protocol_version, PROTOCOL_VERSION);
    assert_eq!(client_info.name.as_str(), "router");
    assert!(client_info.shards.all_layers.is_empty());
    let layers = client_info
        .shards
        .parse(SHAPE.n_experts, 4, |_| true)
        .unwrap();
    assert_eq!(layers.in_layer(3).unwrap().to_string(), "5");
    assert!(layers.in_layer(2).unwrap().is_empty());

    let message = one_token_request(WireDtype::Bf16, &[1.0; 8]);
    let frame = encode_frame(&message, &mut router_mac.send).unwrap();
    assert_eq!(
        decode_frame(&frame, &mut expert_mac.recv, &SHAPE).unwrap(),
        message
    );
    let back = Message::Heartbeat(Heartbeat { counter: 1 });
    let frame = encode_frame(&back, &mut expert_mac.send).unwrap();
    assert_eq!(
        decode_frame(&frame, &mut router_mac.recv, &SHAPE).unwrap(),
        back
    );
}

#[tokio::test]
async fn sessions_get_fresh_keys() {
    let (c, s) = (config("c", SECRET, 1, ""), config("s", SECRET, 1, ""));
    let (first, _) = run(&c, &s).await;
    let (_, second) = run(&c, &s).await;
    let (_, mut old) = first.unwrap();
    let (_, mut new) = second.unwrap();
    let frame = encode_frame(&Message::Heartbeat(Heartbeat { counter: 0 }), &mut old.send).unwrap();
    // A frame of an earlier session does not open in a later one (the nonces differ).
    assert!(matches!(
        decode_frame(&frame, &mut new.recv, &SHAPE),
        Err(ClusterError::FrameMac)
    ));
}

#[tokio::test]
async fn success_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_config = config("e1", SECRET, 3, "0-383");
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        server_handshake(&mut stream, &server_config)
            .await
            .map(|(info, _)| info)
    });
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (info, _) = client_handshake(&mut stream, &config("router", SECRET, 3, ""))
        .await
        .unwrap();
    let layers = info.shards.parse(SHAPE.n_experts, 1, |_| true).unwrap();
    assert_eq!(layers.in_layer(0).unwrap().len(), 384);
    assert_eq!(server.await.unwrap().unwrap().name.as_str(), "router");
}

#[tokio::test]
async fn wrong_secret_fails_on_both_sides() {
    let router = config("router", SECRET, 1, "");
    let expert = config("e1", b"a different secret, 16+ bytes", 1, "0-95");
    let (client, server) = run(&router, &expert).await;
    let server_error = server.unwrap_err();
    assert_eq!(
        server_error.to_string(),
        "authentication failed: peer \"(unauthenticated)\" did not prove the cluster secret"
    );
    let client_error = client.unwrap_err();
    match &client_error {
        ClusterError::AuthFailed { peer, detail } => {
            // Names are exchanged only after both proofs: a failed proof learns none.
            assert_eq!(peer, "(unauthenticated)");
            assert!(
                detail.starts_with("rejected our proof of the cluster secret"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn fingerprint_mismatch_fails_on_both_sides_with_both_prefixes() {
    let (client, server) = run(
        &config("router", SECRET, 0xab, ""),
        &config("e1", SECRET, 0xcd, ""),
    )
    .await;
    // The server judges the client's identity first and refuses with both nodes' values.
    match client.unwrap_err() {
        ClusterError::PeerRefused { reason, .. } => {
            assert_eq!(
                reason,
                "model fingerprint mismatch: node \"e1\" runs cdcdcdcdcdcdcdcd…, node \"router\" runs abababababababab…"
            );
        }
        other => panic!("{other:?}"),
    }
    let server_error = server.unwrap_err();
    assert_eq!(
        server_error.to_string(),
        "model fingerprint mismatch with peer \"router\": ours cdcdcdcdcdcdcdcd…, theirs abababababababab…"
    );
}

/// A peer speaking `version`: sends its hello (first when `client`), returns what it read.
async fn old_peer(stream: &mut DuplexStream, version: u32, client: bool) -> Vec<Message> {
    other_peer(stream, version, false, client).await
}

/// A peer that sends a hello with `version` and `encrypt` (first when `client`) and returns
/// every handshake frame it reads until the other side closes.
async fn other_peer(
    stream: &mut DuplexStream,
    version: u32,
    encrypt: bool,
    client: bool,
) -> Vec<Message> {
    let mut send = SendMac::unkeyed();
    let mut recv = RecvMac::unkeyed();
    let hello = Message::Hello(Hello {
        protocol_version: version,
        nonce: [0; 32],
        encrypt,
    });
    let hello_frame = encode_frame(&hello, &mut send).unwrap();
    let mut seen = Vec::new();
    if client {
        write_frame(stream, &hello_frame).await.unwrap();
    }
    while let Ok(frame) = read_frame(stream, HANDSHAKE_FRAME_BYTES_MAX).await {
        seen.push(decode_handshake_frame(&frame, &mut recv, &SHAPE).unwrap());
        if !client && seen.len() == 1 {
            write_frame(stream, &hello_frame).await.unwrap();
        }
    }
    seen
}

#[tokio::test]
async fn version_mismatch_is_reported_and_sent_as_error_frame() {
    // We are the server; the peer is an old client.
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let me = config("e1", SECRET, 1, "");
    let (seen, result) = tokio::join!(old_peer(&mut a, 7, true), async {
        let r = server_handshake(&mut b, &me).await;
        drop(b);
        r
    });
    assert_eq!(
        result.unwrap_err().to_string(),
        format!("protocol version mismatch with peer \"(unauthenticated)\": ours {PROTOCOL_VERSION}, theirs 7")
    );
    assert!(matches!(&seen[..], [Message::Hello(_), Message::Error(e)]
        if e.code == ErrorCode::ProtocolMismatch && e.message.contains("theirs 7")));

    // We are the client; the peer is an old server.
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let me = config("router", SECRET, 1, "");
    let (seen, result) = tokio::join!(old_peer(&mut a, 0, false), async {
        let r = client_handshake(&mut b, &me).await;
        drop(b);
        r
    });
    assert!(matches!(
        result,
        Err(ClusterError::ProtocolMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 0,
            ..
        })
    ));
    assert!(
        matches!(&seen[..], [Message::Hello(_), Message::Error(e)] if e.code == ErrorCode::ProtocolMismatch)
    );
}

#[tokio::test]
async fn silent_peer_times_out() {
    let (_a, mut b) = tokio::io::duplex(1 << 16);
    let mut me = config("router", SECRET, 1, "");
    me.step_timeout = Duration::from_millis(50);
    assert!(matches!(
        client_handshake(&mut b, &me).await,
        Err(ClusterError::HandshakeTimeout {
            step: "waiting for the peer's hello",
            ms: 50
        })
    ));
}

#[tokio::test]
async fn oversized_hello_is_refused_before_allocation() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let me = config("e1", SECRET, 1, "");
    tokio::io::AsyncWriteExt::write_all(&mut a, &u32::MAX.to_le_bytes())
        .await
        .unwrap();
    assert!(matches!(
        server_handshake(&mut b, &me).await,
        Err(ClusterError::FrameTooLarge {
            limit_name: "HANDSHAKE_FRAME_BYTES_MAX",
            ..
        })
    ));
}

#[tokio::test]
async fn shards_past_the_model_are_refused_on_both_sides() {
    let mut client = config("router", SECRET, 1, "");
    client.shards.all_layers = "0-400".into();
    let (c, s) = run(&client, &config("e1", SECRET, 1, "")).await;
    assert!(
        matches!(
            s,
            Err(ClusterError::Model(
                moe_model::ModelError::ExpertSetSyntax { .. }
            ))
        ),
        "{s:?}"
    );
    assert!(matches!(c, Err(ClusterError::PeerRefused { .. })), "{c:?}");
}

/// Everything a server sends to a peer that has not proven the secret, as raw bytes.
async fn bytes_sent_to_a_stranger(server: &HandshakeConfig) -> Vec<u8> {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let stranger = async {
        let mut send = SendMac::unkeyed();
        let hello = Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            nonce: [5; 32],
            encrypt: server.encrypt,
        });
        write_frame(&mut a, &encode_frame(&hello, &mut send).unwrap())
            .await
            .unwrap();
        let proof = Message::AuthProof(AuthProof { hmac: [0; 32] });
        write_frame(&mut a, &encode_frame(&proof, &mut send).unwrap())
            .await
            .unwrap();
        let mut seen = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut a, &mut seen)
            .await
            .unwrap();
        seen
    };
    let (seen, result) = tokio::join!(stranger, async {
        let r = server_handshake(&mut b, server).await;
        drop(b);
        r
    });
    assert!(matches!(result, Err(ClusterError::AuthFailed { .. })));
    seen
}

#[tokio::test]
async fn a_peer_without_the_secret_learns_no_name_model_or_shards() {
    let fingerprint = 0x5a;
    let server = config("expert-secret-name", SECRET, fingerprint, "17-42");
    let seen = bytes_sent_to_a_stranger(&server).await;
    let contains = |needle: &[u8]| seen.windows(needle.len()).any(|w| w == needle);
    assert!(
        !seen.is_empty(),
        "the server answers with its hello and a refusal"
    );
    assert!(!contains(b"expert-secret-name"), "node name leaked");
    assert!(!contains(&[fingerprint; 16]), "model fingerprint leaked");
    assert!(!contains(b"17-42"), "shards leaked");
}

#[tokio::test]
async fn encrypted_links_hide_the_archive_and_still_carry_it() {
    let mut router = config("router", SECRET, 1, "");
    let mut expert = config("e1", SECRET, 1, "0-95");
    router.encrypt = true;
    expert.encrypt = true;
    let (client, server) = run(&router, &expert).await;
    let (info, mut router_mac) = client.unwrap();
    let (_, mut expert_mac) = server.unwrap();
    assert_eq!(info.name.as_str(), "e1");

    let hidden = [0.25_f32, -1.5, 3.0, 1e-3, 7.0, -2.0, 0.5, 42.0];
    let message = one_token_request(WireDtype::F32, &hidden);
    let frame = encode_frame(&message, &mut router_mac.send).unwrap();
    // The hidden state's f32 bytes do not appear in the frame in clear.
    let clear: Vec<u8> = hidden.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(!frame.windows(clear.len()).any(|w| w == clear));
    assert_eq!(
        decode_frame(&frame, &mut expert_mac.recv, &SHAPE).unwrap(),
        message
    );
    // A flipped ciphertext bit fails the MAC before anything is decrypted or parsed.
    let frame = encode_frame(&message, &mut router_mac.send).unwrap();
    let mut tampered = frame.clone();
    tampered[8] ^= 1;
    assert!(matches!(
        decode_frame(&tampered, &mut expert_mac.recv, &SHAPE),
        Err(ClusterError::FrameMac)
    ));
}

#[tokio::test]
async fn encryption_must_be_chosen_alike_on_both_sides() {
    let mut router = config("router", SECRET, 1, "");
    router.encrypt = true;
    let (client, server) = run(&router, &config("e1", SECRET, 1, "0-95")).await;
    for outcome in [client, server] {
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("wire encryption differs"), "{error}");
        assert!(error.contains("--wire-encrypt"), "{error}");
    }
}

#[tokio::test]
async fn numeric_modes_must_match_on_both_sides() {
    let router = config("router", SECRET, 1, "");
    let mut expert = config("e1", SECRET, 1, "0-95");
    expert.exact = false;
    let (client, server) = run(&router, &expert).await;
    for outcome in [client, server] {
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("numeric modes differ"), "{error}");
        assert!(error.contains("--exact or --fast"), "{error}");
    }
}

#[tokio::test]
async fn a_silent_peer_frees_the_server_after_the_hello_timeout() {
    let (_a, mut b) = tokio::io::duplex(1 << 16);
    let mut me = config("e1", SECRET, 1, "");
    me.hello_timeout = Duration::from_millis(30);
    me.step_timeout = Duration::from_secs(60);
    let started = std::time::Instant::now();
    assert!(matches!(
        server_handshake(&mut b, &me).await,
        Err(ClusterError::HandshakeTimeout {
            step: "waiting for the peer's hello",
            ms: 30
        })
    ));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn transport_failures_are_retried_and_refusals_are_not() {
    assert!(!ClusterError::PeerClosed.is_refusal());
    assert!(!ClusterError::WireIo(std::io::ErrorKind::ConnectionReset.into()).is_refusal());
    assert!(!ClusterError::HandshakeTimeout { step: "x", ms: 1 }.is_refusal());
    assert!(ClusterError::AuthFailed {
        peer: String::new(),
        detail: String::new()
    }
    .is_refusal());
}

#[test]
fn secret_files_are_read_as_bytes() {
    // Two binary secrets that a lossy UTF-8 decoding would make equal (all U+FFFD).
    let a: Vec<u8> = (0x80..0x90).collect();
    let b = vec![0xff; 16];
    let mac = |s: &ClusterSecret| s.mac().chain_update(b"x").finalize().into_bytes();
    let (sa, sb) = (
        ClusterSecret::from_file_bytes(&a).unwrap(),
        ClusterSecret::from_file_bytes(&b).unwrap(),
    );
    assert_ne!(mac(&sa), mac(&sb));
    // Only surrounding ASCII whitespace is trimmed; bytes inside are kept.
    let with_newline = ClusterSecret::from_file_bytes(b"  0123456789abcdef\n").unwrap();
    let plain = ClusterSecret::new(b"0123456789abcdef".to_vec()).unwrap();
    assert_eq!(mac(&with_newline), mac(&plain));
    let inner_space = ClusterSecret::from_file_bytes(b"0123456789 abcdef").unwrap();
    assert_ne!(mac(&inner_space), mac(&plain));
    // Empty, whitespace-only and short files are refused, naming the problem.
    for bad in [&b""[..], b" \n\t\r\n", b"short\n"] {
        let error = ClusterSecret::from_file_bytes(bad).unwrap_err().to_string();
        assert!(error.contains("cluster secret"), "{error}");
    }
    assert!(ClusterSecret::from_file_bytes(b"\n")
        .unwrap_err()
        .to_string()
        .contains("empty"));
}

#[test]
fn secrets_are_bounded_and_never_printed() {
    assert!(ClusterSecret::new(vec![1; CLUSTER_SECRET_BYTES_MIN - 1]).is_err());
    let secret = ClusterSecret::new(b"0123456789abcdef".to_vec()).unwrap();
    assert!(!format!("{secret:?}").contains("0123"));
    assert!(ClusterSecret::new(vec![1; 4097]).is_err());
}
