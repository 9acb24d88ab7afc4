//! Liveness while steps are in flight. An expert node answers heartbeats while it computes a
//! long step (a keeper thread beside the step, `actors/src/expert/session.rs`), so a router
//! judging the link by its silence does not drop a node busy with a long prompt; a short
//! step is answered in order. And a node that stops answering mid-generation fails the
//! router's step within the silence timeout, not the much longer step deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use moe_cluster::wire::{
    decode_frame, encode_frame, read_frame, ExpertRequest, ExpertRoute, Heartbeat, Message,
    ModelShape, SessionMac, WireDtype, FRAME_BYTES_MAX,
};
use moe_model::config::ModelConfig;
use moe_model::gguf::GgufFile;
use moe_tests::cluster::{
    connect_as_router, placement_toml, start_expert, Node, TempDir, TEST_SECRET,
};
use moe_tests::fixtures_dir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Tokens of the long step: above the node's `KEEPER_TOKENS_MIN` (32), and enough work that
/// the step outlasts the keeper's reaction (a 1 ms poll) many times over.
const LONG_STEP_TOKENS: usize = 2048;

struct Peer {
    stream: TcpStream,
    mac: SessionMac,
    shape: ModelShape,
    cfg: ModelConfig,
}

async fn connect(model: &Path, addr: &str) -> Peer {
    let (stream, mac, shape, cfg) = connect_as_router(model, addr, "keeper-test").await;
    Peer {
        stream,
        mac,
        shape,
        cfg,
    }
}

impl Peer {
    async fn send(&mut self, message: &Message) {
        let frame = encode_frame(message, &mut self.mac.send).unwrap();
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn recv(&mut self) -> Message {
        let frame = tokio::time::timeout(
            Duration::from_secs(60),
            read_frame(&mut self.stream, FRAME_BYTES_MAX),
        )
        .await
        .expect("the node answered within 60 s")
        .unwrap();
        decode_frame(&frame, &mut self.mac.recv, &self.shape).unwrap()
    }

    /// A request of `n` tokens for the first MoE layer, every token routed to the first
    /// `n_experts_used` experts.
    fn request(&self, step: u64, n: usize) -> Message {
        let d = self.cfg.n_embd;
        let layer = self.cfg.moe_layers()[0];
        let mut req = ExpertRequest::new(step, layer as u16, WireDtype::F32, d as u32);
        let routes: Vec<ExpertRoute> = (0..self.cfg.n_experts_used.min(self.cfg.n_experts))
            .map(|e| ExpertRoute {
                expert: e as u16,
                weight: 0.125,
            })
            .collect();
        for t in 0..n {
            let hidden: Vec<f32> = (0..d)
                .map(|i| ((t * 31 + i * 7) % 17) as f32 * 0.05 - 0.4)
                .collect();
            req.push_token(&hidden, &routes).unwrap();
        }
        Message::ExpertRequest(req)
    }
}

/// What came back, in order: "hb" for a heartbeat answer, "reply" for a step's reply.
fn kinds(messages: &[Message]) -> Vec<&'static str> {
    messages
        .iter()
        .map(|m| match m {
            Message::Heartbeat(_) => "hb",
            Message::ExpertReply(_) => "reply",
            other => panic!("unexpected {} frame", other.kind()),
        })
        .collect()
}

#[test]
fn heartbeats_are_answered_while_a_long_step_computes() {
    let dir = TempDir::new("keeper");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let n_experts = ModelConfig::from_gguf(&GgufFile::open(&model).unwrap())
        .unwrap()
        .n_experts;
    let e = start_expert(
        &model,
        &secret,
        &format!("0-{}", n_experts - 1),
        "e1",
        "127.0.0.1:0",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut peer = connect(&model, &e.addr).await;
        // A short step and a heartbeat behind it: answered in order, by the one thread.
        let short = peer.request(1, 1);
        peer.send(&short).await;
        peer.send(&Message::Heartbeat(Heartbeat { counter: 1 }))
            .await;
        let got = [peer.recv().await, peer.recv().await];
        assert_eq!(kinds(&got), ["reply", "hb"]);

        // A long step and a heartbeat behind it: the keeper answers the heartbeat while the
        // step computes, so it comes back first.
        let long = peer.request(2, LONG_STEP_TOKENS);
        peer.send(&long).await;
        peer.send(&Message::Heartbeat(Heartbeat { counter: 2 }))
            .await;
        let got = [peer.recv().await, peer.recv().await];
        assert_eq!(kinds(&got), ["hb", "reply"]);
        let Message::ExpertReply(reply) = &got[1] else {
            unreachable!()
        };
        assert_eq!(
            (reply.step_id, reply.n_tokens as usize),
            (2, LONG_STEP_TOKENS)
        );

        // A request read by the keeper during a long step is computed after it, in order.
        peer.send(&peer.request(3, LONG_STEP_TOKENS)).await;
        peer.send(&peer.request(4, 1)).await;
        let got = [peer.recv().await, peer.recv().await];
        let steps: Vec<u64> = got
            .iter()
            .map(|m| match m {
                Message::ExpertReply(r) => r.step_id,
                other => panic!("unexpected {} frame", other.kind()),
            })
            .collect();
        assert_eq!(steps, [3, 4]);
    });
}

#[test]
fn a_node_that_stops_answering_fails_the_step_within_the_silence_timeout() {
    // The router's limits (`PEER_TIMEOUT_MS` 5 s of silence; `STEP_TIMEOUT_MS` 30 s per step):
    // the failure must come from the first, with room for a slow machine.
    const FAILS_WITHIN: Duration = Duration::from_secs(20);
    let dir = TempDir::new("silence");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let n_experts = ModelConfig::from_gguf(&GgufFile::open(&model).unwrap())
        .unwrap()
        .n_experts;
    let all = format!("0-{}", n_experts - 1);
    let e = start_expert(&model, &secret, &all, "e1", "127.0.0.1:0");
    let placement = dir.write("p.toml", &placement_toml(&[("e1", &e.addr, &all, "")]));
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut router = Node::spawn(
        &[
            "run",
            "--model",
            &s(&model),
            "--exact",
            "-p",
            "a long generation that outlasts the test",
            "-n",
            "50000",
            "--ctx-size",
            "50100",
            "--ignore-eos",
            "--placement",
            &s(&placement),
            "--secret-file",
            &s(&secret),
        ]
        .map(String::from),
    );
    assert!(
        router.wait_stderr("link to e1 up", Duration::from_secs(30)),
        "the router did not connect: {}",
        router.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        router.is_running(),
        "the generation ended early: {}",
        router.stderr()
    );
    e.node.signal("STOP");
    let stopped = Instant::now();
    while router.is_running() && stopped.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = stopped.elapsed();
    e.node.signal("CONT");
    let err = router.stderr();
    assert!(
        !router.is_running(),
        "the router still waits after {took:?}: {err}"
    );
    assert!(err.contains("silent for more than"), "{err}");
    assert!(took < FAILS_WITHIN, "failed after {took:?}: {err}");
}
