//! The shipped deployment files pass their own validators: `promtool check config` on the
//! Prometheus configurations (with their rule files), `docker compose config` on the compose
//! file, a Kubernetes schema check (`kubernetes-validate --strict`, offline schemas) on the
//! manifests, `systemd-analyze verify` on the units; placements parse; the dashboards use
//! the datasource variable; the network-namespace script builds a shaped 2-node cluster,
//! generates through it and tears it down (as root only).
//!
//! `.ci/run` installs the validators (Debian's `prometheus` and `docker-compose`, PyPI's
//! `kubernetes-validate`); a missing one fails its test with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moe_cluster::placement::Placement;
use moe_tests::cluster::TempDir;
use moe_tests::moe_node_bin;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// Runs `tool args` in the repository root; fails with `install` when it is missing and with
/// its output when it fails.
fn validate(tool: &str, args: &[&str], install: &str) -> Output {
    assert!(
        on_path(tool),
        "`{tool}` is not installed: {install} (.ci/run does it)"
    );
    let out = Command::new(tool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn prometheus_configs_and_rules_pass_promtool() {
    for config in [
        "deploy/prometheus/prometheus.yml",
        "deploy/compose/prometheus.yml",
    ] {
        validate(
            "promtool",
            &["check", "config", config],
            "apt-get install -y prometheus",
        );
    }
    validate(
        "promtool",
        &["check", "rules", "deploy/prometheus/rules/moe-node.yml"],
        "apt-get install -y prometheus",
    );
}

#[test]
fn compose_file_passes_docker_compose_config() {
    let file = "deploy/compose/docker-compose.yml";
    // The compose v2 plugin when the docker CLI has it, else Debian's docker-compose.
    let plugin = on_path("docker")
        && Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if plugin {
        validate(
            "docker",
            &["compose", "-f", file, "config", "--quiet"],
            "install the docker compose plugin",
        );
    } else {
        validate(
            "docker-compose",
            &["-f", file, "config", "--quiet"],
            "apt-get install -y docker-compose",
        );
    }
}

#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the namespace, secret, configmap, statefulset and deployment manifests"
    );
    let mut args = vec!["--strict", "--quiet"];
    args.extend(files.iter().map(String::as_str));
    validate(
        "kubernetes-validate",
        &args,
        "python3 -m pip install kubernetes-validate",
    );
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("manifest"))
        .collect();
    for kind in [
        "kind: StatefulSet",
        "kind: Deployment",
        "kind: ConfigMap",
        "kind: Secret",
    ] {
        assert!(all.contains(kind), "no {kind} in deploy/kubernetes");
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    // verify checks that ExecStart's binary exists: point the units at the built one.
    let dir = TempDir::new("systemd");
    let bin = moe_node_bin().to_string_lossy().into_owned();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(repo().join("deploy/systemd")).expect("deploy/systemd") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path)
            .expect("unit")
            .replace("/usr/local/bin/moe-node", &bin);
        for option in [
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "SystemCallFilter=@system-service",
        ] {
            assert!(
                !name.ends_with(".service") || text.contains(option),
                "{name} lacks {option}"
            );
        }
        dir.write(&name, &text);
        // A template is verified through an instance of it.
        units.push(
            dir.path()
                .join(name.replace("@.service", "@e1.service"))
                .to_string_lossy()
                .into_owned(),
        );
        if name.contains('@') {
            std::os::unix::fs::symlink(
                dir.path().join(&name),
                dir.path().join(name.replace("@.service", "@e1.service")),
            )
            .expect("instance link");
        }
    }
    assert!(
        units.len() >= 2,
        "router service and expert template expected"
    );
    let mut args = vec!["verify", "--man=no"];
    args.extend(units.iter().map(String::as_str));
    // verify exits 0 on options it ignores; any complaint fails the test.
    let out = validate("systemd-analyze", &args, "apt-get install -y systemd");
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify complained:\n{complaints}"
    );
}

#[test]
fn shipped_placements_parse() {
    let moe_layers: Vec<usize> = (1..61).collect();
    let configmap =
        std::fs::read_to_string(repo().join("deploy/kubernetes/placement-configmap.yaml"))
            .expect("configmap");
    // The TOML is the block under `placement.toml: |`, indented by four spaces.
    let k8s: String = configmap
        .split_once("placement.toml: |\n")
        .expect("placement.toml key")
        .1
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let compose = std::fs::read_to_string(repo().join("deploy/compose/placement.toml"))
        .expect("compose placement");
    for (what, text) in [("kubernetes", k8s), ("compose", compose)] {
        let p = Placement::parse(&text, &moe_layers, 384)
            .unwrap_or_else(|e| panic!("{what} placement: {e}"));
        assert_eq!(p.nodes().len(), 3, "{what}");
    }
}

#[test]
fn dashboards_use_the_datasource_variable_and_unique_ids() {
    let dir = repo().join("grafana/dashboards");
    let mut uids = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("grafana/dashboards") {
        let path = entry.expect("entry").path();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.display();
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        assert!(
            vars.iter().any(|v| v["type"] == "datasource"
                && v["name"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: no datasource variable"
        );
        uids.push(d["uid"].as_str().expect("uid").to_string());
        let mut ids = Vec::new();
        for p in d["panels"].as_array().expect("panels") {
            ids.push(p["id"].as_u64().expect("panel id"));
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: panel {} does not use $datasource",
                p["title"]
            );
            assert!(
                !p["description"].as_str().unwrap_or("").is_empty(),
                "{name}: panel {} has no description",
                p["title"]
            );
            for t in p["targets"].as_array().expect("targets") {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{name}: a target of {} does not use $datasource",
                    p["title"]
                );
            }
        }
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "{name}: duplicate panel ids");
    }
    let n = uids.len();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), n, "duplicate dashboard uids");
    assert!(n >= 4, "four dashboards expected");
}

/// Root only (network namespaces): a 2-node cluster behind a shaped switch, one generation
/// through it, then teardown. Every address is inside the test's own namespaces.
#[test]
fn netns_script_builds_a_shaped_cluster_and_tears_it_down() {
    let script = repo().join("deploy/netns/cluster.sh");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash -n");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let netns = root
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !netns {
        eprintln!(
            "skipped: needs root for network namespaces (and `ip netns`); only `bash -n` ran, \
             the namespace cluster was NOT tested"
        );
        return;
    }
    let state = TempDir::new("netns");
    let prefix = format!("mt{}", std::process::id());
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(&script)
            .args(args)
            .env("MOE_NETNS_STATE", state.path())
            .env("MOE_NETNS_PREFIX", &prefix)
            .output()
            .expect("cluster.sh")
    };
    struct Down<F: Fn()>(F);
    impl<F: Fn()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _down = Down(|| {
        run(&["down"]);
    });
    let bin = moe_node_bin().to_string_lossy().into_owned();
    let up = run(&[
        "up", "--nodes", "2", "--rate", "1gbit", "--delay", "1ms", "--bin", &bin,
    ]);
    let up_text = format!(
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(up.status.success(), "cluster.sh up failed:\n{up_text}");
    assert!(up_text.contains("up: 2 expert nodes"), "{up_text}");
    let status = run(&["status"]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status_text.contains("tbf") && status_text.contains("rate 1Gbit"),
        "no tbf qdisc:\n{status_text}"
    );
    let gen = run(&["run", "--prompt", "Hello", "-n", "4", "--ignore-eos"]);
    assert!(
        gen.status.success(),
        "generation through the namespaces failed:\n{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    assert!(
        String::from_utf8_lossy(&gen.stderr).contains("generation: 4 tokens"),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let down = run(&["down"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(&format!("{prefix}-")),
        "namespaces left behind"
    );
}
