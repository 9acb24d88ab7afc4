//! What an attacker on the LAN could do to a cluster, tried against real `moe-node`
//! processes on 127.0.0.1: idle connections holding every handshake slot, a connection reset
//! mid-handshake, binary secrets that a text decoding would make equal, and encrypted links.

use std::io::Read as _;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use moe_tests::cluster::{
    placement_toml, spawn_expert, start_expert, start_expert_with, TempDir, TEST_SECRET,
};
use moe_tests::{fixtures_dir, moe_node, moe_node_ok};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn model() -> std::path::PathBuf {
    fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf")
}

/// Teacher-forced logits of a short prompt; `cluster` = (placement, secret, extra options).
fn logits(dir: &TempDir, tag: &str, cluster: Option<(&Path, &Path, &[&str])>) -> Vec<u8> {
    let out = dir.path().join(format!("{tag}.npy"));
    let mut args = vec![
        "logits".to_string(),
        "--model".into(),
        s(&model()),
        "--tokens".into(),
        "5,17,300,2,44".into(),
        "--out".into(),
        s(&out),
    ];
    if let Some((placement, secret, extra)) = cluster {
        args.extend([
            "--placement".into(),
            s(placement),
            "--secret-file".into(),
            s(secret),
        ]);
        args.extend(extra.iter().map(|x| x.to_string()));
    }
    moe_node_ok(&args);
    std::fs::read(out).unwrap()
}

/// A failing `logits` run with a placement; returns its stderr.
fn refused_logits(dir: &TempDir, placement: &Path, secret: &Path, extra: &[&str]) -> String {
    let out = dir.path().join("refused.npy");
    let mut args = vec![
        "logits".to_string(),
        "--model".into(),
        s(&model()),
        "--tokens".into(),
        "5,17".into(),
        "--out".into(),
        s(&out),
        "--placement".into(),
        s(placement),
        "--secret-file".into(),
        s(secret),
    ];
    args.extend(extra.iter().map(|x| x.to_string()));
    let output = moe_node(&args);
    assert!(!output.status.success(), "the run should have been refused");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Holds `n` idle, silent connections to `addr`, reopening each one the node closes, until
/// `stop`; counts the connections opened.
fn idle_flood(addr: String, n: usize, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    while !stop.load(Ordering::SeqCst) {
        for slot in conns.iter_mut() {
            let closed = match slot {
                None => true,
                Some(c) => {
                    let mut b = [0u8; 256];
                    // Non-blocking: 0 bytes = closed by the node; WouldBlock = still open.
                    match c.read(&mut b) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    }
                }
            };
            if closed {
                if let Ok(c) = TcpStream::connect(&addr) {
                    c.set_nonblocking(true).unwrap();
                    opened.fetch_add(1, Ordering::SeqCst);
                    *slot = Some(c);
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Issue: 16 idle unauthenticated connections (reopened when closed) kept every router out
/// ("refused this router: connection closed by peer"). Now they cannot.
#[test]
fn idle_connections_do_not_keep_a_router_out() {
    let dir = TempDir::new("hard-idle");
    let secret = dir.write("secret", TEST_SECRET);
    let e = start_expert(&model(), &secret, "0-383", "e1", "127.0.0.1:0");
    let placement = dir.write("p.toml", &placement_toml(&[("e1", &e.addr, "0-383", "")]));
    let single = logits(&dir, "single", None);

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (addr, stop, opened) = (e.addr.clone(), stop.clone(), opened.clone());
        thread::spawn(move || idle_flood(addr, 16, stop, opened))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while opened.load(Ordering::SeqCst) < 16 {
        assert!(Instant::now() < deadline, "the flood could not connect");
        thread::sleep(Duration::from_millis(20));
    }
    for run in 0..5 {
        let clustered = logits(&dir, &format!("c{run}"), Some((&placement, &secret, &[])));
        assert_eq!(clustered.len(), single.len(), "run {run}");
    }
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    assert!(
        opened.load(Ordering::SeqCst) >= 16,
        "the flood held its connections"
    );
}

/// A proxy to `target` that closes the first `drop_first` connections at once (a reset
/// mid-handshake as the router sees it) and forwards the rest.
fn flaky_proxy(target: String, drop_first: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(client) = conn else { continue };
            if i < drop_first {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                })
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(server, client);
        }
    });
    addr
}

/// Issue: a TCP reset during the handshake was treated as a refusal (the run failed at once);
/// it is a transport failure, retried within the connect window.
#[test]
fn a_connection_closed_mid_handshake_is_retried() {
    let dir = TempDir::new("hard-reset");
    let secret = dir.write("secret", TEST_SECRET);
    let e = start_expert(&model(), &secret, "0-383", "e1", "127.0.0.1:0");
    let proxy = flaky_proxy(e.addr.clone(), 3);
    let placement = dir.write("p.toml", &placement_toml(&[("e1", &proxy, "0-383", "")]));
    let single = logits(&dir, "single", None);
    let clustered = logits(&dir, "cluster", Some((&placement, &secret, &[])));
    assert_eq!(clustered.len(), single.len());
}

/// Issue: the secret file was decoded as lossy UTF-8, so sixteen bytes 0x80..0x8f and
/// sixteen 0xff bytes (both sixteen U+FFFD) authenticated each other.
#[test]
fn binary_secrets_that_decode_alike_as_text_do_not_authenticate() {
    let dir = TempDir::new("hard-binary-secret");
    let a = dir.path().join("a.secret");
    let b = dir.path().join("b.secret");
    std::fs::write(&a, (0x80u8..0x90).collect::<Vec<u8>>()).unwrap();
    std::fs::write(&b, [0xffu8; 16]).unwrap();
    let e = start_expert(&model(), &a, "0-383", "e1", "127.0.0.1:0");
    let placement = dir.write("p.toml", &placement_toml(&[("e1", &e.addr, "0-383", "")]));
    let err = refused_logits(&dir, &placement, &b, &[]);
    assert!(err.contains("authentication failed"), "{err}");
    // The right binary secret works.
    logits(&dir, "ok", Some((&placement, &a, &[])));
}

/// `--wire-encrypt`: the same bits as the clear link (encryption changes no arithmetic), and a
/// router that does not encrypt is refused by name of the option.
#[test]
fn encrypted_links_give_the_same_logits_and_must_be_chosen_alike() {
    let dir = TempDir::new("hard-encrypt");
    let secret = dir.write("secret", TEST_SECRET);
    let clear = start_expert(&model(), &secret, "0-383", "e1", "127.0.0.1:0");
    let sealed = start_expert_with(
        &model(),
        &secret,
        "0-383",
        "e1",
        "127.0.0.1:0",
        &["--wire-encrypt"],
    );
    let p_clear = dir.write(
        "clear.toml",
        &placement_toml(&[("e1", &clear.addr, "0-383", "")]),
    );
    let p_sealed = dir.write(
        "sealed.toml",
        &placement_toml(&[("e1", &sealed.addr, "0-383", "")]),
    );
    let a = logits(&dir, "clear", Some((&p_clear, &secret, &[])));
    let b = logits(
        &dir,
        "sealed",
        Some((&p_sealed, &secret, &["--wire-encrypt"])),
    );
    assert_eq!(a, b, "encryption changed the logits");
    let err = refused_logits(&dir, &p_sealed, &secret, &[]);
    assert!(err.contains("--wire-encrypt"), "{err}");
}

/// An exact run (`logits` defaults to exact) against an expert node in the fast mode (the
/// roles' default) would silently not be exact: the handshake refuses it, naming both modes
/// and the flags; the same router in the fast mode is accepted.
#[test]
fn a_router_and_expert_nodes_in_different_numeric_modes_are_refused() {
    let dir = TempDir::new("hard-modes");
    let secret = dir.write("secret", TEST_SECRET);
    let model = s(&model());
    let fast_expert: Vec<String> = [
        "--role",
        "expert",
        "--model",
        &model,
        "--shards",
        "0-383",
        "--node",
        "e1",
        "--secret-file",
        &s(&secret),
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let e = spawn_expert(&fast_expert);
    let placement = dir.write("p.toml", &placement_toml(&[("e1", &e.addr, "0-383", "")]));
    let err = refused_logits(&dir, &placement, &secret, &[]);
    assert!(err.contains("numeric modes differ"), "{err}");
    assert!(err.contains("--exact or --fast"), "{err}");
    logits(&dir, "fast", Some((&placement, &secret, &["--fast"])));
}
