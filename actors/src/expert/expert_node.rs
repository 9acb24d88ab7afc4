//! `moe-node --role expert`: serves this node's experts to authenticated routers.
//!
//! Per accepted connection: the handshake on the async runtime (nothing is read past a failed
//! one), then the connection's own thread (`session.rs`) that checks every frame (length,
//! MAC, sequence, archive, limits), answers heartbeats, computes requests and writes their
//! replies. A bad frame drops that connection only; other peers go on.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use moe_cluster::placement::{ExpertSet, NodeName, Placement};
use moe_cluster::wire::{server_handshake, Connection, HandshakeConfig, ModelShape, ShardSummary};
use moe_model::config::ModelConfig;
use moe_model::gguf::GgufFile;
use moe_model::model::{Model, WeightSet};
use moe_model::LayerExperts;
use tokio::net::{TcpListener, TcpStream};

use super::handshake_slots::{HandshakeSlot, HandshakeSlots};
use super::live_shard::{Current, LiveShard, Rebuild};
use super::session::{self, NodeWork};
use crate::options::{
    load_placement, read_secret, BackendKind, ComputeArgs, ExpertArgs, DEFAULT_NODE_NAME,
};
use crate::telemetry::{self, ErrorKind, LinkEnd, PeerMetrics};

/// Authenticated connections an expert node keeps at once.
pub const CONNECTIONS_MAX: usize = 64;
/// Pause after a failed `accept` before the next one.
pub const ACCEPT_RETRY_MS: u64 = 100;

/// Runs an expert node until killed (the role's parsed options, as `main` has them).
#[allow(clippy::too_many_arguments)]
pub fn run(
    model_path: PathBuf,
    threads: usize,
    mode: moe_kernels::NumericMode,
    placement: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    encrypt: bool,
    a: ExpertArgs,
    compute: ComputeArgs,
) -> anyhow::Result<()> {
    moe_kernels::set_compute_threads(threads);
    let secret_file = secret_file.context("--role expert needs --secret-file")?;
    let secret = read_secret(&secret_file)?;
    // The header first: the config decides the shard sets, which decide what gets mapped.
    let header =
        GgufFile::open(&model_path).with_context(|| format!("opening {}", model_path.display()))?;
    let cfg = &ModelConfig::from_gguf(&header)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let name = a
        .node
        .clone()
        .unwrap_or_else(|| DEFAULT_NODE_NAME.to_string());
    let node_name = NodeName::new(&name).map_err(anyhow::Error::msg)?;
    let (owned, summary): (LayerExperts, _) = match (&a.shards, &placement) {
        (Some(_), Some(_)) => bail!("give either --shards or --placement with --node, not both"),
        (None, None) => bail!("--role expert needs --shards or --placement with --node"),
        (Some(text), None) => {
            let set = ExpertSet::parse(text, cfg.n_experts).context("--shards")?;
            let owned = LayerExperts::uniform(&set, cfg.n_layers, |l| cfg.is_moe_layer(l));
            (owned, ShardSummary::uniform(&set))
        }
        (None, Some(path)) => {
            let p: Placement = load_placement(path, cfg)?;
            let idx = p
                .node_index(&name)
                .with_context(|| format!("node {name:?} is not in placement {}", path.display()))?;
            let node = p.node(idx).context("placement node")?;
            let owned = LayerExperts::new(
                (0..cfg.n_layers)
                    .map(|l| cfg.is_moe_layer(l).then(|| node.experts_in(l).clone()))
                    .collect(),
            );
            (owned, ShardSummary::of_node(node))
        }
    };
    let model = Arc::new(
        Model::open_with(
            &model_path,
            &WeightSet::Experts {
                owned: owned.clone(),
            },
        )
        .with_context(|| format!("loading {}", model_path.display()))
        .map(|m| crate::options::with_mode_reported(m, mode, compute.cpu_share()))?,
    );
    drop(header);
    eprintln!(
        "mapped {} of {} bytes (own experts and norms)",
        model.file().mapped_bytes(),
        file_bytes(&model_path)
    );
    let shard = Arc::new(owned);
    let shape = ModelShape {
        n_experts: cfg.n_experts,
        hidden_dim: cfg.n_embd,
    };
    let hs = HandshakeConfig {
        encrypt,
        exact: mode == moe_kernels::NumericMode::Exact,
        ..HandshakeConfig::new(
            node_name,
            model.file().fingerprint(),
            secret,
            summary,
            shape,
        )
    };
    let args = compute;
    let compute = args.handle(&model)?;
    // A re-placed model's experts go to the same device (the CPU needs nothing).
    let rebuild: Option<Rebuild> = (args.backend != BackendKind::Cpu)
        .then(|| Box::new(move |m: &Model| args.handle(m)) as Rebuild);
    let live = Arc::new(LiveShard::new(
        model_path.clone(),
        Current {
            model,
            shard,
            compute,
        },
        rebuild,
    ));
    let node = NodeWork {
        live: live.clone(),
        turn: Default::default(),
        shape: (cfg.n_experts, cfg.n_layers, cfg.moe_layers()),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        telemetry::register_unknown_peer();
        println!("listening on {}", listener.local_addr()?);
        let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
        let handshakes = Arc::new(HandshakeSlots::default());
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE, ECONNABORTED, ...: transient; the node keeps serving its peers.
                    eprintln!("accept failed: {e}; retrying in {ACCEPT_RETRY_MS} ms");
                    tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            };
            // Unauthenticated peers only hold handshake slots, never connection slots.
            let (permit, evicted) = handshakes.admit(peer.ip());
            if let Some(limit) = evicted {
                eprintln!("{peer} connects: an older handshake gave way ({limit})");
            }
            let slots = slots.clone();
            let _ = stream.set_nodelay(true);
            // A node re-placed since start advertises what it owns now.
            let mut hs = hs.clone();
            hs.shards = live.summary();
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, &hs, node, permit, slots).await {
                    eprintln!("connection from {peer} closed: {e:#}");
                }
            });
        }
    })
}

fn file_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

async fn serve_connection(
    mut stream: TcpStream,
    hs: &HandshakeConfig,
    node: NodeWork,
    handshake_permit: HandshakeSlot,
    slots: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    let handshake = tokio::select! {
        result = server_handshake(&mut stream, hs) => result,
        () = handshake_permit.evicted() => {
            bail!("handshake ended: a newer connection took its slot")
        }
    };
    let (peer, mac) = match handshake {
        Ok(accepted) => accepted,
        Err(e) => {
            telemetry::peer_error(telemetry::UNKNOWN_PEER, ErrorKind::Handshake);
            return Err(e).context("handshake refused");
        }
    };
    drop(handshake_permit);
    let Ok(_slot) = slots.try_acquire_owned() else {
        bail!("{CONNECTIONS_MAX} authenticated connections already open");
    };
    eprintln!("peer {} connected", peer.name.as_str());
    let metrics = PeerMetrics::new(peer.name.as_str(), LinkEnd::Expert);
    metrics.connection_opened();
    let std_stream = stream
        .into_std()
        .context("taking the connection off the async runtime")?;
    let (reader, writer) = Connection::new(std_stream, mac, hs.shape)
        .split_blocking(moe_cluster::wire::PEER_TIMEOUT)
        .context("setting up the connection")?;
    let name = peer.name.as_str().to_string();
    let served = metrics.clone();
    let result =
        tokio::task::spawn_blocking(move || session::serve(reader, writer, &node, &name, &served))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the connection's thread failed: {e}")));
    metrics.connection_closed();
    result
}
