//! `moe-node placement plan|simulate`: placements from routing traces, and what-if replays.
//!
//! ```text
//! moe-node placement plan --trace T --nodes e1=1.0,e2=1.0,e3=0.5 [--replicas R]
//!     [--mem-gib e1=96,...] [--addrs e1=10.0.0.1:7001,...] --out P.toml [--contiguous-out C.toml]
//! moe-node placement simulate --trace T --placement C.toml P.toml [--speeds e3=0.5]
//!     [--link-gbit 5] [--latency-ms 0.2] [--mem-gbps 50 | --pair-us U] [--wire-bytes 4]
//! ```
//! Tables go to stdout, file notes to stderr. The algorithms and the step-time model are
//! documented in `moe_cluster::placement::{plan, simulate}`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use moe_cluster::placement::{NodeAddr, NodeName, Placement};
use moe_planner::plan::{plan, speeds_of, Balance, NodeSpec, PlanOptions};
use moe_planner::simulate::{
    simulate, CostModel, SimReport, DEFAULT_LATENCY_MS, DEFAULT_LINK_GBIT, DEFAULT_MEM_GBPS,
    DEFAULT_ROUTER_US_PER_KIB, FRAME_OVERHEAD_BYTES,
};
use moe_planner::trace::{read_trace_file, Trace};

/// Port written for nodes given no `--addrs` entry (the node name is the host).
pub const DEFAULT_NODE_PORT: u16 = 7000;

/// Arguments of `placement`.
#[derive(Debug, clap::Args)]
pub struct PlacementArgs {
    #[command(subcommand)]
    command: PlacementCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PlacementCommand {
    /// Plan a placement from a routing trace: replicate hot experts, balance load by speed.
    Plan(PlanArgs),
    /// Replay a routing trace against placements and compare load, bytes and step time.
    Simulate(SimulateArgs),
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// Routing trace (written by `--record-routing`).
    #[arg(long)]
    trace: PathBuf,
    /// Nodes and relative speeds, in placement order: `e1=1.0,e2=1.0,e3=0.5`.
    #[arg(long)]
    nodes: String,
    /// Extra expert copies per MoE layer, given to the hottest experts.
    #[arg(long, default_value_t = 0)]
    replicas: usize,
    /// Memory for expert weights per node, GiB: `e1=96,e2=96` (nodes not named: unlimited).
    #[arg(long)]
    mem_gib: Option<String>,
    /// Data addresses per node: `e1=10.0.0.1:7001,e2=local` (default: `<name>:7000`).
    #[arg(long)]
    addrs: Option<String>,
    /// No node holds more than this factor times an even share of a layer's experts.
    #[arg(long, default_value_t = 2.0)]
    max_experts_factor: f64,
    /// Where to write the planned placement (TOML).
    #[arg(long)]
    out: PathBuf,
    /// Also write the contiguous split it is compared with (what `--shards` ranges give).
    #[arg(long)]
    contiguous_out: Option<PathBuf>,
    /// Trade balance against fan-out with the cost model below: experts that fire together
    /// for the same token go onto one node where the token rows saved on the wire outweigh
    /// the compute balance lost.
    #[arg(long)]
    network_aware: bool,
    #[command(flatten)]
    cost: CostArgs,
}

/// The step-time model's constants (`placement simulate`, `placement plan --network-aware`).
#[derive(Debug, clap::Args)]
struct CostArgs {
    /// Router link bandwidth, Gbit/s.
    #[arg(long, default_value_t = DEFAULT_LINK_GBIT)]
    link_gbit: f64,
    /// One-way link latency, ms.
    #[arg(long, default_value_t = DEFAULT_LATENCY_MS)]
    latency_ms: f64,
    /// Memory bandwidth of a speed-1.0 node, GB/s (sets the per-pair compute cost).
    #[arg(long, default_value_t = DEFAULT_MEM_GBPS)]
    mem_gbps: f64,
    /// Compute per (token, expert) pair on a speed-1.0 node, µs (overrides --mem-gbps).
    #[arg(long)]
    pair_us: Option<f64>,
    /// Bytes per hidden-state element on the wire (4 = f32, 2 = bf16).
    #[arg(long, default_value_t = 4)]
    wire_bytes: u64,
    /// Router CPU time per KiB on the wire (archive, MAC, copies), µs.
    #[arg(long, default_value_t = DEFAULT_ROUTER_US_PER_KIB)]
    router_us_per_kib: f64,
}

impl CostArgs {
    /// The cost model for a trace's model, and where its pair cost comes from.
    fn model(&self, expert_bytes: u64) -> (CostModel, String) {
        let mut model = CostModel::for_expert_bytes(expert_bytes, self.mem_gbps);
        let note = match self.pair_us {
            Some(us) => {
                model.pair_us = us;
                "given".to_string()
            }
            None => format!("expert_bytes {expert_bytes} / {} GB/s", self.mem_gbps),
        };
        model.link_gbit = self.link_gbit;
        model.latency_ms = self.latency_ms;
        model.wire_bytes = self.wire_bytes;
        model.router_us_per_kib = self.router_us_per_kib;
        (model, note)
    }
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Routing trace (written by `--record-routing`).
    #[arg(long)]
    trace: PathBuf,
    /// Placements to compare, one table column each (the first is the ratio baseline).
    #[arg(long, num_args = 1.., required = true)]
    placement: Vec<PathBuf>,
    /// Relative node speeds by name: `e3=0.5` (nodes not named: 1.0).
    #[arg(long)]
    speeds: Option<String>,
    #[command(flatten)]
    cost: CostArgs,
}

/// Runs a `placement` subcommand.
pub fn run(a: PlacementArgs) -> anyhow::Result<()> {
    match a.command {
        PlacementCommand::Plan(a) => run_plan(a),
        PlacementCommand::Simulate(a) => run_simulate(a),
    }
}

/// `name=value,name=value` in order; names must be unique.
fn name_values(text: &str, flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in text.split(',').filter(|s| !s.trim().is_empty()) {
        let (name, value) = item
            .split_once('=')
            .with_context(|| format!("{flag}: {item:?} is not name=value"))?;
        let name = name.trim().to_string();
        if out.iter().any(|(n, _)| *n == name) {
            bail!("{flag}: node {name:?} given twice");
        }
        out.push((name, value.trim().to_string()));
    }
    Ok(out)
}

fn name_numbers(text: &str, flag: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    name_values(text, flag)?
        .into_iter()
        .map(|(n, v)| {
            let x: f64 = v
                .parse()
                .with_context(|| format!("{flag}: {n}={v}: not a number"))?;
            anyhow::ensure!(
                x.is_finite() && x > 0.0,
                "{flag}: {n}={v}: must be positive"
            );
            Ok((n, x))
        })
        .collect()
}

fn load_trace(path: &std::path::Path) -> anyhow::Result<Trace> {
    let trace = read_trace_file(path)
        .with_context(|| format!("reading routing trace {}", path.display()))?;
    if trace.records.is_empty() {
        bail!("routing trace {} has no route records", path.display());
    }
    Ok(trace)
}

fn trace_summary(trace: &Trace, path: &std::path::Path) -> String {
    let h = &trace.header;
    format!(
        "trace {}: {} steps, {} tokens, {} MoE layers x {} experts, k = {}",
        path.display(),
        trace.steps().count(),
        trace.n_tokens(),
        h.moe_layers.len(),
        h.n_experts,
        h.k
    )
}

fn run_plan(a: PlanArgs) -> anyhow::Result<()> {
    let trace = load_trace(&a.trace)?;
    let speeds = name_values(&a.nodes, "--nodes")?;
    let mem = match &a.mem_gib {
        Some(t) => name_numbers(t, "--mem-gib")?,
        None => BTreeMap::new(),
    };
    let addrs: BTreeMap<String, String> = match &a.addrs {
        Some(t) => name_values(t, "--addrs")?.into_iter().collect(),
        None => BTreeMap::new(),
    };
    for name in mem.keys().chain(addrs.keys()) {
        if !speeds.iter().any(|(n, _)| n == name) {
            bail!("node {name:?} is not in --nodes");
        }
    }
    let mut nodes = Vec::new();
    for (name, speed) in &speeds {
        let speed: f64 = speed
            .parse()
            .with_context(|| format!("--nodes: {name}={speed}: not a number"))?;
        let addr_text = addrs
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("{name}:{DEFAULT_NODE_PORT}"));
        nodes.push(NodeSpec {
            name: NodeName::new(name).map_err(|e| anyhow::anyhow!("--nodes: {e}"))?,
            addr: NodeAddr::parse(&addr_text).map_err(|e| anyhow::anyhow!("node {name}: {e}"))?,
            speed,
            mem_bytes: mem.get(name).map(|g| (g * (1u64 << 30) as f64) as u64),
        });
    }
    let opts = PlanOptions {
        replicas: a.replicas,
        max_experts_factor: a.max_experts_factor,
        network: a
            .network_aware
            .then(|| a.cost.model(trace.header.expert_bytes).0),
    };
    let p = plan(&trace, &nodes, &opts)?;
    print!("{}", plan_table(&trace, &a, &nodes, &p));
    std::fs::write(&a.out, p.placement.to_toml())
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {}", a.out.display());
    if let Some(path) = &a.contiguous_out {
        std::fs::write(path, p.contiguous.to_toml())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn plan_table(
    trace: &Trace,
    a: &PlanArgs,
    nodes: &[NodeSpec],
    p: &moe_planner::plan::Plan,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", trace_summary(trace, &a.trace));
    let _ = writeln!(
        s,
        "replicas asked {} per layer, placed {:?}",
        a.replicas, p.replicas_placed
    );
    if a.network_aware {
        let _ = writeln!(
            s,
            "network-aware swaps per layer {:?} (co-firing experts brought together where the wire time saved outweighs the balance lost)",
            p.swaps
        );
    }
    let _ = writeln!(
        s,
        "{:<8} {:>6} {:>16}",
        "node", "speed", "experts/layer max"
    );
    for (n, cap) in nodes.iter().zip(&p.caps) {
        let _ = writeln!(s, "{:<8} {:>6.2} {:>16}", n.name.as_str(), n.speed, cap);
    }
    let _ = writeln!(
        s,
        "balance factor per MoE layer = mean/max over nodes of load/speed (1 = even):"
    );
    let _ = writeln!(s, "{:<8} {:>12} {:>12}", "layer", "contiguous", "planned");
    for ((layer, before), (_, after)) in p.before.per_layer.iter().zip(&p.after.per_layer) {
        let _ = writeln!(s, "{:<8} {:>12.3} {:>12.3}", layer, before, after);
    }
    let row = |s: &mut String, name: &str, f: fn(&Balance) -> f64| {
        let _ = writeln!(
            s,
            "{:<8} {:>12.3} {:>12.3}",
            name,
            f(&p.before),
            f(&p.after)
        );
    };
    row(&mut s, "mean", Balance::mean);
    row(&mut s, "min", Balance::min);
    s
}

fn run_simulate(a: SimulateArgs) -> anyhow::Result<()> {
    let trace = load_trace(&a.trace)?;
    let h = &trace.header;
    let speeds = match &a.speeds {
        Some(t) => name_numbers(t, "--speeds")?,
        None => BTreeMap::new(),
    };
    let (model, pair_note) = a.cost.model(h.expert_bytes);
    let mut columns: Vec<(String, Placement, SimReport)> = Vec::new();
    for path in &a.placement {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading placement {}", path.display()))?;
        let placement = Placement::parse(&text, &h.moe_layers, h.n_experts)
            .with_context(|| format!("placement {}", path.display()))?;
        for name in speeds.keys() {
            if placement.node_index(name).is_none() {
                bail!(
                    "--speeds names {name:?}, which placement {} does not list",
                    path.display()
                );
            }
        }
        let node_speeds = speeds_of(&placement, &speeds);
        let report = simulate(&trace, &placement, &node_speeds, &model)
            .with_context(|| format!("simulating {}", path.display()))?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        columns.push((label, placement, report));
    }
    let mut s = String::new();
    let _ = writeln!(s, "{}", trace_summary(&trace, &a.trace));
    let _ = writeln!(
        s,
        "model: t_step = sum over MoE layers of [ max_n(pairs_n x pair_us / speed_n) + 2 x latency + sum_remote_n(request_n + reply_n) x (1 / link + router_us_per_kib / 1024) ]"
    );
    let _ = writeln!(
        s,
        "       request = {FRAME_OVERHEAD_BYTES} + rows x (hidden x wire + 4) + pairs x 8 bytes, reply = {FRAME_OVERHEAD_BYTES} + rows x hidden x wire bytes"
    );
    let _ = writeln!(
        s,
        "constants: pair_us {:.4} ({pair_note}), link {} Gbit/s, latency {} ms, router {} µs/KiB, hidden {}, wire {} bytes/element",
        model.pair_us, model.link_gbit, model.latency_ms, model.router_us_per_kib, h.hidden, model.wire_bytes
    );
    let _ = writeln!(s);
    let width = columns
        .iter()
        .map(|(l, _, _)| l.len())
        .max()
        .unwrap_or(0)
        .max(16);
    let line = |s: &mut String, name: &str, cells: Vec<String>| {
        let _ = write!(s, "{name:<28}");
        for c in cells {
            let _ = write!(s, " {c:>width$}");
        }
        let _ = writeln!(s);
    };
    line(
        &mut s,
        "",
        columns.iter().map(|(l, _, _)| l.clone()).collect(),
    );
    let balance = |r: &SimReport| r.balance().iter().sum::<f64>() / r.balance().len().max(1) as f64;
    line(
        &mut s,
        "balance (mean/max, avg)",
        columns
            .iter()
            .map(|(_, _, r)| format!("{:.3}", balance(r)))
            .collect(),
    );
    for (slot, layer) in h.moe_layers.iter().enumerate() {
        line(
            &mut s,
            &format!("layer {layer} max/mean pairs"),
            columns
                .iter()
                .map(|(_, _, r)| {
                    let (max, mean) = r.layer_max_mean(slot);
                    format!("{max}/{mean:.1}")
                })
                .collect(),
        );
    }
    let mut names: Vec<String> = Vec::new();
    for (_, p, _) in &columns {
        for n in p.nodes() {
            if !names.iter().any(|x| x == n.name.as_str()) {
                names.push(n.name.to_string());
            }
        }
    }
    for name in &names {
        line(
            &mut s,
            &format!("node {name} pairs/tokens"),
            columns
                .iter()
                .map(|(_, p, r)| match p.node_index(name) {
                    Some(i) => format!(
                        "{}/{}",
                        r.node_pairs[usize::from(i.0)],
                        r.node_rows[usize::from(i.0)]
                    ),
                    None => "-".into(),
                })
                .collect(),
        );
    }
    line(
        &mut s,
        "wire bytes",
        columns
            .iter()
            .map(|(_, _, r)| r.wire_bytes.to_string())
            .collect(),
    );
    line(
        &mut s,
        "predicted compute s",
        columns
            .iter()
            .map(|(_, _, r)| format!("{:.6}", r.compute_s))
            .collect(),
    );
    line(
        &mut s,
        "predicted network s",
        columns
            .iter()
            .map(|(_, _, r)| format!("{:.6}", r.network_s))
            .collect(),
    );
    line(
        &mut s,
        "predicted step ms (mean)",
        columns
            .iter()
            .map(|(_, _, r)| format!("{:.4}", r.mean_step_ms()))
            .collect(),
    );
    let base = columns
        .first()
        .map(|(_, _, r)| r.predicted_s())
        .unwrap_or(1.0);
    line(
        &mut s,
        "predicted time / first",
        columns
            .iter()
            .map(|(_, _, r)| format!("{:.3}", r.predicted_s() / base.max(1e-300)))
            .collect(),
    );
    print!("{s}");
    Ok(())
}
