//! The real `moe-node` binary with `--backend vulkan` (device 0: lavapipe in CI):
//! - `devices` lists the device with the properties that matter, and without a driver exits
//!   non-zero with a clear message and no panic;
//! - `logits --backend vulkan` on the fixture GGUFs matches the reference within
//!   [`LOGIT_ABS_TOL`] with the same routing; `run --backend vulkan --exact` prints the
//!   reference greedy continuation; `bench --backend vulkan` (fast mode by default)
//!   completes on the integer-dot shaders;
//! - `--device N` past the last device is an error naming N.
//!
//! Without a Vulkan device (and without `MOE_REQUIRE_VULKAN=1`, which `.ci/run` sets) the
//! tests that need one print why they skipped.

use std::path::Path;
use std::process::Command;

use moe_devdata::npy;
use moe_tests::fixtures::{fixture_cases, ids};
use moe_tests::{moe_node, moe_node_bin, moe_node_ok};
use serde_json::Value;

/// Largest accepted |logit - reference| with the experts on Vulkan (f32 activations).
const LOGIT_ABS_TOL: f32 = 1e-4;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Whether `moe-node devices` finds a device; prints why not (or fails under
/// `MOE_REQUIRE_VULKAN=1`).
fn vulkan_present(test: &str) -> bool {
    let out = moe_node(&["devices"]);
    if out.status.success() {
        return true;
    }
    let why = String::from_utf8_lossy(&out.stderr);
    if std::env::var("MOE_REQUIRE_VULKAN").is_ok_and(|v| v == "1") {
        panic!("{test}: MOE_REQUIRE_VULKAN=1 but `moe-node devices` failed: {why}");
    }
    println!("SKIPPED {test}: {}", why.trim());
    false
}

/// `devices` prints device 0 with its driver, integer dot support, subgroup size, the
/// largest binding and the memory heaps.
#[test]
fn devices_lists_what_vulkan_sees() {
    if !vulkan_present("devices_lists_what_vulkan_sees") {
        return;
    }
    let out = moe_node_ok(&["devices"]);
    for want in [
        "device 0:",
        "driver:",
        "integer dot product:",
        "host memory import:",
        "subgroup size:",
        "maxStorageBufferRange:",
        "memory heap 0:",
        "Q4_K",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    println!("{out}");
}

/// With the loader pointed at no driver, `devices` and `--backend vulkan` exit non-zero with
/// a message saying there is no device, and do not panic.
#[test]
fn no_vulkan_driver_is_a_clear_error() {
    let fixture = moe_tests::fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("never-written.npy");
    for args in [
        vec!["devices"],
        vec![
            "logits",
            "-m",
            path_str(&fixture),
            "--tokens",
            "1,2",
            "--out",
            path_str(&out),
            "--backend",
            "vulkan",
        ],
    ] {
        let out = Command::new(moe_node_bin())
            .args(&args)
            .env("VK_ICD_FILENAMES", "/nonexistent/no-driver.json")
            .env("VK_DRIVER_FILES", "/nonexistent/no-driver.json")
            .output()
            .expect("starting moe-node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded without a driver");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.contains("no device") || stderr.contains("no Vulkan loader"),
            "{args:?}: {stderr}"
        );
    }
}

/// `logits`, `run` and `bench` with the experts on Vulkan, against the reference of one case
/// of each fixture GGUF (the kq files with `--route-tiles on --vulkan-memory stage`, the tiny
/// BF16 one with `--vulkan-layers off`, the tiny Q8_0 one with the defaults); `--device` past
/// the last device is named.
#[test]
fn model_commands_on_vulkan_match_the_reference() {
    if !vulkan_present("model_commands_on_vulkan_match_the_reference") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for dir in ["kimi-k25-tiny", "kimi-k25-kq"] {
        let cases = fixture_cases(dir).expect("the fixture manifest");
        let mut seen = std::collections::HashSet::new();
        for fc in cases.iter().filter(|c| c.limit == c.tokens.len()) {
            if !seen.insert(fc.gguf.clone()) {
                continue;
            }
            let m = path_str(&fc.gguf);
            let tokens = fc
                .tokens
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let out = scratch.path().join(format!("{checked}.npy"));
            let routing = scratch.path().join(format!("{checked}.routing.json"));
            // The tiny Q8_0 file with the defaults (experts imported from the file, attention,
            // dense FFNs and shared experts on the device too; lavapipe, a CPU device,
            // computes one route per tile), the tiny BF16 one with only the routed experts on
            // the device, the kq files with the other choices.
            let choices: &[&str] = match dir {
                "kimi-k25-kq" => &["--route-tiles", "on", "--vulkan-memory", "stage"],
                _ if m.contains("BF16") => &["--vulkan-layers", "off"],
                _ => &[],
            };
            let mut args = vec![
                "logits",
                "-m",
                m,
                "--tokens",
                &tokens,
                "--backend",
                "vulkan",
                "--out",
                path_str(&out),
                "--routing",
                path_str(&routing),
            ];
            args.extend_from_slice(choices);
            moe_node_ok(&args);
            let got = npy::read_f32(&out).unwrap();
            let want =
                npy::read_f32(&fc.ref_dir.join(fc.json["logits"].as_str().unwrap())).unwrap();
            assert_eq!(got.shape, want.shape, "{}", fc.what);
            let max_diff = got
                .data
                .iter()
                .zip(&want.data)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                max_diff <= LOGIT_ABS_TOL,
                "{}: max |logit diff| {max_diff:e}",
                fc.what
            );
            let got_routing: Value =
                serde_json::from_str(&std::fs::read_to_string(&routing).unwrap()).unwrap();
            for (layer, reference) in fc.json["routing"].as_object().unwrap() {
                for pos in 0..fc.limit {
                    assert_eq!(
                        ids(&got_routing[layer]["experts"][pos], "routing").unwrap(),
                        ids(&reference["experts"][pos], "reference").unwrap(),
                        "{}: layer {layer} position {pos}",
                        fc.what
                    );
                }
            }
            // Greedy generation through the decode path, exact mode.
            let continuation = ids(&fc.json["greedy_continuation"], "continuation").unwrap();
            let run_vk = moe_node_ok(&[
                "run",
                "-m",
                m,
                "-p",
                &fc.prompt,
                "-n",
                "16",
                "--ignore-eos",
                "--exact",
                "--backend",
                "vulkan",
            ]);
            let run_cpu = moe_node_ok(&[
                "run",
                "-m",
                m,
                "-p",
                &fc.prompt,
                "-n",
                "16",
                "--ignore-eos",
                "--exact",
            ]);
            assert_eq!(run_vk, run_cpu, "{}: run output", fc.what);
            assert_eq!(continuation.len(), 16);
            println!(
                "{}: logits max|diff| {max_diff:.2e}, routing identical, run identical to the CPU's",
                fc.what
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "fixture files checked");
    let kq = moe_tests::fixtures_dir().join("kimi-k25-kq/kimi-k25-kq-Q2_K.gguf");
    // `bench` runs in the fast mode by default: the experts on the integer-dot shaders.
    let bench = moe_node(&[
        "bench",
        "-m",
        path_str(&kq),
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
        "--backend",
        "vulkan",
    ]);
    let (table, log) = (
        String::from_utf8_lossy(&bench.stdout),
        String::from_utf8_lossy(&bench.stderr),
    );
    assert!(bench.status.success(), "bench failed: {log}");
    assert!(table.contains("pp16") && table.contains("tg4"), "{table}");
    // A decoded token of this 2-layer file (a dense layer, a MoE layer) is five host round
    // trips with everything on the device: one attention per layer (the new KV rows
    // completed on the device), the dense FFN, the MoE layer's experts with its shared expert
    // in the same submission, the head.
    assert!(
        table.contains("tg4: 5.0 Vulkan submissions (host round trips) per decoded token"),
        "{table}"
    );
    assert!(
        log.contains("fast mode: int8 activations, integer dot products"),
        "bench did not report the integer-dot shaders: {log}"
    );
    let never = scratch.path().join("never-written.npy");
    let out = moe_node(&[
        "logits",
        "-m",
        path_str(&kq),
        "--tokens",
        "1,2",
        "--out",
        path_str(&never),
        "--backend",
        "vulkan",
        "--device",
        "77",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("device 77"),
        "{stderr}"
    );
}

/// A 3-node cluster where expert node e1 computes on Vulkan and e2, e3 on the CPU gives the
/// single CPU process's routing and greedy output, with logits within [`LOGIT_ABS_TOL`]; so
/// does the same cluster with the router on Vulkan too (its attention, dense FFN and shared
/// experts there, the shared expert computed while the nodes' frames are in flight).
#[test]
fn a_vulkan_expert_node_in_a_cpu_cluster_matches_the_single_process() {
    use moe_tests::cluster::{
        placement_toml, start_expert, start_expert_with, TempDir, TEST_SECRET,
    };
    if !vulkan_present("a_vulkan_expert_node_in_a_cpu_cluster_matches_the_single_process") {
        return;
    }
    let dir = TempDir::new("vulkan-cluster");
    let secret = dir.write("secret", TEST_SECRET);
    let fc = fixture_cases("kimi-k25-kq")
        .unwrap()
        .into_iter()
        .find(|c| c.limit == c.tokens.len() && c.gguf.to_string_lossy().contains("Q4_K_M"))
        .expect("a Q4_K_M case without near ties");
    let model = fc.gguf.clone();
    let e1 = start_expert_with(
        &model,
        &secret,
        "0-127",
        "e1",
        "127.0.0.1:0",
        &["--backend", "vulkan"],
    );
    let e2 = start_expert(&model, &secret, "128-255", "e2", "127.0.0.1:0");
    let e3 = start_expert(&model, &secret, "256-383", "e3", "127.0.0.1:0");
    let placement = dir.write(
        "p.toml",
        &placement_toml(&[
            ("e1", e1.addr.as_str(), "0-127", ""),
            ("e2", e2.addr.as_str(), "128-255", ""),
            ("e3", e3.addr.as_str(), "256-383", ""),
        ]),
    );
    let m = path_str(&model);
    let tokens = fc
        .tokens
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let cluster = [
        "--placement",
        path_str(&placement),
        "--secret-file",
        path_str(&secret),
    ];
    let mut vulkan_router = cluster.to_vec();
    vulkan_router.extend_from_slice(&["--backend", "vulkan"]);
    let mut outputs = Vec::new();
    for (tag, extra) in [
        ("single", &[][..]),
        ("cluster", &cluster[..]),
        ("vulkan router", &vulkan_router[..]),
    ] {
        let out = dir.path().join(format!("{tag}.npy"));
        let routing = dir.path().join(format!("{tag}.json"));
        let mut args = vec![
            "logits",
            "-m",
            m,
            "--tokens",
            &tokens,
            "--out",
            path_str(&out),
            "--routing",
            path_str(&routing),
        ];
        args.extend_from_slice(extra);
        let logits = moe_node(&args);
        let stderr = String::from_utf8_lossy(&logits.stderr);
        assert!(logits.status.success(), "{tag}: {stderr}");
        assert_eq!(
            stderr.contains(
                "attention, dense FFNs, shared experts and the output head on Vulkan device 0"
            ),
            tag == "vulkan router",
            "{tag}: {stderr}"
        );
        let mut run = vec![
            "run",
            "-m",
            m,
            "-p",
            &fc.prompt,
            "-n",
            "16",
            "--ignore-eos",
            "--exact",
        ];
        run.extend_from_slice(extra);
        outputs.push((
            npy::read_f32(&out).unwrap().data,
            std::fs::read_to_string(&routing).unwrap(),
            moe_node_ok(&run),
        ));
    }
    let single = &outputs[0];
    let mut max_diffs = Vec::new();
    for (tag, cluster) in ["cluster", "vulkan router"].iter().zip(&outputs[1..]) {
        let max_diff = single
            .0
            .iter()
            .zip(&cluster.0)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(max_diff <= LOGIT_ABS_TOL, "{} {tag}: {max_diff:e}", fc.what);
        let (a, b): (Value, Value) = (
            serde_json::from_str(&single.1).unwrap(),
            serde_json::from_str(&cluster.1).unwrap(),
        );
        for (layer, r) in a.as_object().unwrap() {
            assert_eq!(
                r["experts"], b[layer]["experts"],
                "{} {tag}: routing of layer {layer}",
                fc.what
            );
        }
        assert_eq!(single.2, cluster.2, "{} {tag}: greedy output", fc.what);
        max_diffs.push(max_diff);
    }
    assert!(
        e1.node
            .stderr()
            .contains("routed experts on Vulkan device 0"),
        "e1 did not run on Vulkan: {}",
        e1.node.stderr()
    );
    println!("{}: cluster with a Vulkan expert node, router on the CPU / on Vulkan: logits max|diff| {:.2e} / {:.2e} vs the single process, routing and greedy identical", fc.what, max_diffs[0], max_diffs[1]);
}

/// Live re-placement onto an expert node computing on Vulkan: a SIGHUP during a generation
/// swaps the two nodes' experts; the Vulkan node puts its new experts on the device (its log
/// names the device for both phases), and the router's greedy tokens during and after the
/// swap are the ones from before.
#[test]
fn a_vulkan_expert_node_is_re_placed_live() {
    use std::time::Duration;

    use moe_tests::cluster::{
        placement_toml, start_expert, start_expert_with, start_router, TempDir, TEST_SECRET,
    };
    if !vulkan_present("a_vulkan_expert_node_is_re_placed_live") {
        return;
    }
    let dir = TempDir::new("vulkan-replace");
    let secret = dir.write("secret", TEST_SECRET);
    let model = moe_tests::fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let e1 = start_expert_with(
        &model,
        &secret,
        "0-191",
        "e1",
        "127.0.0.1:0",
        &["--backend", "vulkan"],
    );
    let e2 = start_expert(&model, &secret, "192-383", "e2", "127.0.0.1:0");
    let swapped = placement_toml(&[
        ("e1", &e1.addr, "192-383", ""),
        ("e2", &e2.addr, "0-191", ""),
    ]);
    let placement = dir.write(
        "p.toml",
        &placement_toml(&[
            ("e1", &e1.addr, "0-191", ""),
            ("e2", &e2.addr, "192-383", ""),
        ]),
    );
    let mut r = start_router(&model, &placement, &secret);
    let prompt = r#"{"prompt": "def fibonacci(n):", "max_tokens": 48, "ignore_eos": true}"#;
    r.send_line(prompt);
    let before = r.answer(Duration::from_secs(120));
    assert!(before.get("tokens").is_some(), "{before}");

    // The router applies a new placement at its next step: swap while a generation runs.
    r.send_line(prompt);
    std::fs::write(&placement, swapped).unwrap();
    r.hangup();
    let during = r.answer(Duration::from_secs(120));
    assert_eq!(during["tokens"], before["tokens"], "{during}");
    assert!(
        r.wait_stderr("placement replaced", Duration::from_secs(60)),
        "{}",
        r.stderr()
    );
    assert!(
        e1.node
            .wait_stderr("reassigned: Commit", Duration::from_secs(30)),
        "{}",
        e1.node.stderr()
    );
    let log = e1.node.stderr();
    for phase in ["Prepare", "Commit"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{phase}: now owns"))
                    && l.contains("computed on vulkan")),
            "{phase} not computed on Vulkan:\n{log}"
        );
    }
    assert!(log.contains("Commit: now owns layer 1: 192-383"), "{log}");
    r.send_line(prompt);
    let after = r.answer(Duration::from_secs(120));
    assert_eq!(after["tokens"], before["tokens"], "{after}");
}
