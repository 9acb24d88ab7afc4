//! An authenticated peer that sends a mutated, truncated or oversized frame loses that
//! connection with an error naming the problem; the expert node keeps serving others.

use std::path::Path;
use std::time::Duration;

use moe_cluster::wire::{encode_frame, read_frame, Heartbeat, Message, FRAME_BYTES_MAX};
use moe_model::config::ModelConfig;
use moe_model::gguf::GgufFile;
use moe_tests::cluster::{
    connect_as_router, placement_toml, start_expert, Expert, TempDir, TEST_SECRET,
};
use moe_tests::{fixtures_dir, moe_node_ok};
use tokio::io::AsyncWriteExt;

/// Connects and authenticates like a router, then sends `tamper(valid heartbeat frame)`.
async fn send_tampered(model: &Path, addr: &str, tamper: impl Fn(Vec<u8>) -> Vec<u8>) -> String {
    let (mut stream, mut mac, _, _) = connect_as_router(model, addr, "tamperer").await;
    // One good heartbeat first: the node answers it.
    let good = encode_frame(&Message::Heartbeat(Heartbeat { counter: 1 }), &mut mac.send).unwrap();
    stream.write_all(&good).await.unwrap();
    read_frame(&mut stream, FRAME_BYTES_MAX)
        .await
        .expect("heartbeat answered");
    let frame = encode_frame(&Message::Heartbeat(Heartbeat { counter: 2 }), &mut mac.send).unwrap();
    stream.write_all(&tamper(frame)).await.unwrap();
    let _ = stream.shutdown().await;
    // The node closes the connection: the next read ends.
    match tokio::time::timeout(
        Duration::from_secs(10),
        read_frame(&mut stream, FRAME_BYTES_MAX),
    )
    .await
    {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("the node answered a tampered frame"),
        Err(_) => panic!("the node kept the connection open"),
    }
}

fn check(e: &Expert, needle: &str) {
    assert!(
        e.node.wait_stderr(needle, Duration::from_secs(10)),
        "expected {needle:?} in: {}",
        e.node.stderr()
    );
}

#[test]
fn tampered_frames_drop_only_their_connection() {
    let dir = TempDir::new("tamper");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    // Every expert of the fixture, whatever its shape.
    let n_experts = ModelConfig::from_gguf(&GgufFile::open(&model).unwrap())
        .unwrap()
        .n_experts;
    let all_experts = format!("0-{}", n_experts - 1);
    let e = start_expert(&model, &secret, &all_experts, "e1", "127.0.0.1:0");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // A flipped byte inside the archive: the MAC check fails.
    rt.block_on(send_tampered(&model, &e.addr, |mut f| {
        let mid = f.len() / 2;
        f[mid] ^= 0x40;
        f
    }));
    check(&e, "bad frame from tamperer");
    // A frame cut short (the length says more than arrives before the stream ends).
    rt.block_on(send_tampered(&model, &e.addr, |f| {
        f[..f.len() - 10].to_vec()
    }));
    check(&e, "reading from tamperer");
    // A length prefix over FRAME_BYTES_MAX: refused before allocating.
    rt.block_on(send_tampered(&model, &e.addr, |_| {
        ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes().to_vec()
    }));
    check(&e, "FRAME_BYTES_MAX");

    // The node still serves a real router, with the right answer.
    let placement = dir.write(
        "p.toml",
        &placement_toml(&[("e1", &e.addr, &all_experts, "")]),
    );
    let m = model.to_string_lossy().to_string();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "run",
            "--model",
            &m,
            "--prompt",
            "def fibonacci(n):",
            "-n",
            "8",
            "--ignore-eos",
            "--exact",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let single = moe_node_ok(&args(&[]));
    let clustered = moe_node_ok(&args(&[
        "--placement",
        &placement.to_string_lossy(),
        "--secret-file",
        &secret.to_string_lossy(),
    ]));
    assert_eq!(single, clustered);
}
