//! `--record-routing`, `placement plan` and `placement simulate` on a skewed tiny synth model:
//! the trace matches the routing `logits` reports, the plan beats the contiguous split and is
//! byte-identical when repeated, the simulator agrees and is repeatable, bad traces are
//! refused with the line, and a real 4-node cluster serves the planned placement with the
//! single process's tokens.

use std::path::Path;

use moe_planner::trace::read_trace_file;
use moe_tests::cluster::{Node, TempDir, NODE_START_TIMEOUT_MS, TEST_SECRET};
use moe_tests::{moe_node, moe_node_ok};
use serde_json::Value;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The `mean` row of `placement plan`'s balance table: (contiguous, planned).
fn plan_means(stdout: &str) -> (f64, f64) {
    let row = stdout
        .lines()
        .find(|l| l.starts_with("mean "))
        .unwrap_or_else(|| panic!("no mean row:\n{stdout}"));
    let v: Vec<f64> = row
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1])
}

/// The cells of the simulate table row starting with `name`.
fn sim_row(stdout: &str, name: &str) -> Vec<String> {
    let row = stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} row:\n{stdout}"));
    row[name.len()..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn record_plan_simulate_and_serve_a_skewed_model() {
    let dir = TempDir::new("placement-cli");
    let model = dir.path().join("skewed.gguf");
    moe_node_ok(&[
        "synth",
        "--preset",
        "tiny",
        "--skew",
        "1.0",
        "--out",
        &s(&model),
    ]);

    // The trace of a teacher-forced pass holds exactly the routing `logits` reports.
    let tokens = "1,5,9,200,33,7,64,300,2,11,12,13";
    let json = dir.path().join("routing.json");
    let short = dir.path().join("short.trace");
    moe_node_ok(&[
        "logits",
        "-m",
        &s(&model),
        "--tokens",
        tokens,
        "--out",
        &s(&dir.path().join("l.npy")),
        "--routing",
        &s(&json),
        "--record-routing",
        &s(&short),
    ]);
    let trace = read_trace_file(&short).unwrap();
    assert_eq!(
        (trace.header.n_experts, trace.header.k, trace.header.hidden),
        (384, 8, 128)
    );
    assert_eq!(
        trace.header.expert_bytes,
        3 * 128 * 32 * 2,
        "BF16 gate + up + down"
    );
    let routing: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(trace.records.len(), routing.as_object().unwrap().len());
    for r in &trace.records {
        let want: Vec<u32> = routing[r.layer.to_string()]["experts"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| {
                t.as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_u64().unwrap() as u32)
            })
            .collect();
        assert_eq!(r.experts, want, "layer {}", r.layer);
    }

    // A longer trace from generation (prefill + decode steps).
    let trace_path = dir.path().join("gen.trace");
    moe_node_ok(&[
        "run",
        "-m",
        &s(&model),
        "-p",
        "The quick brown fox jumps over the lazy dog",
        "-n",
        "24",
        "--ignore-eos",
        "--record-routing",
        &s(&trace_path),
    ]);
    let trace = read_trace_file(&trace_path).unwrap();
    assert_eq!(
        trace.steps().count(),
        24,
        "one prefill step and 23 decode steps"
    );

    let plan_args = |out: &Path, contiguous: &Path| -> Vec<String> {
        [
            "placement",
            "plan",
            "--trace",
            &s(&trace_path),
            "--nodes",
            "e1=1,e2=1,e3=1,e4=1",
            "--replicas",
            "8",
            "--out",
            &s(out),
            "--contiguous-out",
            &s(contiguous),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let (planned, contiguous) = (
        dir.path().join("planned.toml"),
        dir.path().join("contiguous.toml"),
    );
    let stdout = moe_node_ok(&plan_args(&planned, &contiguous));
    let (before, after) = plan_means(&stdout);
    assert!(
        after > before + 0.2,
        "planned {after} vs contiguous {before}:\n{stdout}"
    );
    let again = dir.path().join("planned-again.toml");
    let stdout_again = moe_node_ok(&plan_args(&again, &dir.path().join("c2.toml")));
    assert_eq!(stdout, stdout_again);
    assert_eq!(
        std::fs::read(&planned).unwrap(),
        std::fs::read(&again).unwrap(),
        "plans are deterministic"
    );

    let sim = |extra: &[&str]| -> String {
        let mut args = vec!["placement", "simulate", "--trace"];
        let t = s(&trace_path);
        let (c, p) = (s(&contiguous), s(&planned));
        args.extend([t.as_str(), "--placement", c.as_str(), p.as_str()]);
        args.extend(extra);
        moe_node_ok(&args)
    };
    let table = sim(&[]);
    assert!(table.contains("link 5 Gbit/s, latency 0.2 ms"), "{table}");
    let balance = sim_row(&table, "balance (mean/max, avg)");
    assert!(
        balance[1].parse::<f64>().unwrap() > balance[0].parse::<f64>().unwrap(),
        "{table}"
    );
    // With compute dominant (a slow pair cost) the planned placement is predicted faster.
    let slow = sim(&["--pair-us", "1000"]);
    let ratio = sim_row(&slow, "predicted time / first");
    assert_eq!(ratio[0], "1.000");
    assert!(ratio[1].parse::<f64>().unwrap() < 0.8, "{slow}");
    assert_eq!(
        slow,
        sim(&["--pair-us", "1000"]),
        "simulations are deterministic"
    );

    // Bad input: a truncated trace names the line; unknown nodes in flags are refused.
    let text = std::fs::read_to_string(&trace_path).unwrap();
    let cut = dir.write("cut.trace", &text[..text.len() - 3]);
    let out = moe_node(&[
        "placement",
        "simulate",
        "--trace",
        &s(&cut),
        "--placement",
        &s(&planned),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("routing trace line") && err.contains("no newline"),
        "{err}"
    );
    let out = moe_node(&[
        "placement",
        "plan",
        "--trace",
        &s(&trace_path),
        "--nodes",
        "e1=1",
        "--mem-gib",
        "e9=1",
        "--out",
        &s(&again),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"e9\" is not in --nodes"));

    // A real cluster serves the planned (per-layer, replicated) placement: experts read their
    // sets from the file; the router's copy gets their real addresses.
    let secret = dir.write("secret", TEST_SECRET);
    let mut plan_text = std::fs::read_to_string(&planned).unwrap();
    let mut experts = Vec::new();
    for name in ["e1", "e2", "e3", "e4"] {
        let node = Node::spawn(
            &[
                "--role",
                "expert",
                "--model",
                &s(&model),
                "--placement",
                &s(&planned),
                "--node",
                name,
                "--secret-file",
                &s(&secret),
                "--threads",
                "1",
                "--exact",
            ]
            .map(String::from),
        );
        let line = node
            .next_line(std::time::Duration::from_millis(NODE_START_TIMEOUT_MS))
            .unwrap_or_else(|| panic!("expert {name} did not start: {}", node.stderr()));
        let addr = line.strip_prefix("listening on ").unwrap().to_string();
        plan_text = plan_text.replace(
            &format!("addr = \"{name}:7000\""),
            &format!("addr = \"{addr}\""),
        );
        experts.push(node);
    }
    let cluster_plan = dir.write("cluster.toml", &plan_text);
    let prompt = [
        "run",
        "-m",
        &s(&model),
        "-p",
        "Hello there",
        "-n",
        "8",
        "--ignore-eos",
        "--exact",
    ];
    let local = moe_node_ok(&prompt);
    let mut remote_args: Vec<String> = prompt.iter().map(|a| a.to_string()).collect();
    remote_args.extend(
        [
            "--placement",
            &s(&cluster_plan),
            "--secret-file",
            &s(&secret),
        ]
        .map(String::from),
    );
    assert_eq!(
        moe_node_ok(&remote_args),
        local,
        "the planned cluster generates the single process's tokens"
    );
}
