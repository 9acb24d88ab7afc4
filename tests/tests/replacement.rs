//! Live re-placement: a router re-reads its placement on SIGHUP while a generation runs; no
//! generated token changes, no request is lost, expert nodes map their new experts and drop
//! the old ones; an invalid new placement is refused and the old one stays.

use std::time::Duration;

use moe_tests::cluster::{placement_toml, start_expert, start_router, TempDir, TEST_SECRET};
use moe_tests::fixtures_dir;

#[test]
fn sighup_replaces_the_placement_under_load_without_changing_tokens() {
    let dir = TempDir::new("replace");
    let secret = dir.write("secret", TEST_SECRET);
    let model = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let e1 = start_expert(&model, &secret, "0-191", "e1", "127.0.0.1:0");
    let e2 = start_expert(&model, &secret, "192-383", "e2", "127.0.0.1:0");
    let a = placement_toml(&[
        ("e1", &e1.addr, "0-191", ""),
        ("e2", &e2.addr, "192-383", ""),
    ]);
    let b = placement_toml(&[
        ("e1", &e1.addr, "192-383", ""),
        ("e2", &e2.addr, "0-191", ""),
    ]);
    let placement = dir.write("p.toml", &a);
    let mut r = start_router(&model, &placement, &secret);
    let long = r#"{"prompt": "def fibonacci(n):", "max_tokens": 800, "ignore_eos": true}"#;
    r.send_line(long);
    let reference = r.answer(Duration::from_secs(120));
    assert!(reference.get("tokens").is_some(), "{reference}");

    // Swap the two nodes' experts while a generation runs.
    r.send_line(long);
    std::fs::write(&placement, &b).unwrap();
    r.hangup();
    let during = r.answer(Duration::from_secs(120));
    assert_eq!(during["tokens"], reference["tokens"], "{during}");
    assert!(
        r.wait_stderr("placement replaced", Duration::from_secs(30)),
        "{}",
        r.stderr()
    );
    for e in [&e1, &e2] {
        assert!(
            e.node
                .wait_stderr("reassigned: Commit", Duration::from_secs(30)),
            "{}",
            e.node.stderr()
        );
    }
    assert!(
        e1.node
            .stderr()
            .contains("Commit: now owns layer 1: 192-383"),
        "{}",
        e1.node.stderr()
    );

    // An invalid placement (experts 0-9 without owner) is refused; the old one keeps serving.
    let bad = placement_toml(&[
        ("e1", &e1.addr, "192-383", ""),
        ("e2", &e2.addr, "10-191", ""),
    ]);
    std::fs::write(&placement, bad).unwrap();
    r.hangup();
    assert!(
        r.wait_stderr("refused new placement", Duration::from_secs(30)),
        "{}",
        r.stderr()
    );
    r.send_line(long);
    let after = r.answer(Duration::from_secs(120));
    assert_eq!(after["tokens"], reference["tokens"], "{after}");
}
