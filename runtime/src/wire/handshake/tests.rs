//! Handshakes over in-memory pipes and real TCP: success, and each refusal seen on both sides.

use super::*;
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

type Outcome = Result<(PeerInfo, SessionMac), RuntimeError>;

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
    assert_eq!(client_info.shards.overrides[&3].to_string(), "5");

    let mut request = ExpertRequest::new(1, 3, WireDtype::Bf16, 8);
    request
        .push_token(
            &[1.0; 8],
            &[ExpertRoute {
                expert: 7,
                weight: 1.0,
            }],
        )
        .unwrap();
    let message = Message::ExpertRequest(request);
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
        Err(RuntimeError::FrameMac)
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
    assert_eq!(info.shards.all_layers.len(), 384);
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
        "authentication failed: peer \"router\" did not prove the cluster secret"
    );
    let client_error = client.unwrap_err();
    match &client_error {
        RuntimeError::AuthFailed { peer, detail } => {
            assert_eq!(peer, "e1");
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
    match client.unwrap_err() {
        RuntimeError::FingerprintMismatch { peer, ours, theirs } => {
            assert_eq!(
                (peer.as_str(), ours.as_str(), theirs.as_str()),
                ("e1", "abababababababab", "cdcdcdcdcdcdcdcd")
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
    let mut send = SendMac::unkeyed();
    let mut recv = RecvMac::unkeyed();
    let hello = Message::Hello(Hello {
        protocol_version: version,
        model_fingerprint: [1; 32],
        node_name: "old".into(),
        nonce: [0; 32],
        shards: ShardSummary::default(),
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
        format!("protocol version mismatch with peer \"old\": ours {PROTOCOL_VERSION}, theirs 7")
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
        Err(RuntimeError::ProtocolMismatch {
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
    let mut me = config("e1", SECRET, 1, "");
    me.step_timeout = Duration::from_millis(50);
    assert!(matches!(
        server_handshake(&mut b, &me).await,
        Err(RuntimeError::HandshakeTimeout {
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
        Err(RuntimeError::FrameTooLarge {
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
        matches!(s, Err(RuntimeError::ExpertSetSyntax { .. })),
        "{s:?}"
    );
    assert!(matches!(c, Err(RuntimeError::PeerRefused { .. })), "{c:?}");
}

#[test]
fn secrets_are_bounded_and_never_printed() {
    assert!(ClusterSecret::new(vec![1; CLUSTER_SECRET_BYTES_MIN - 1]).is_err());
    let secret = ClusterSecret::new(b"0123456789abcdef".to_vec()).unwrap();
    assert!(!format!("{secret:?}").contains("0123"));
    assert!(ClusterSecret::new(vec![1; 4097]).is_err());
}
