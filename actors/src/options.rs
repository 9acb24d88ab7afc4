//! Command-line options shared by the subcommands and the roles, parsed once here: where the
//! model is and how to compute it (`ModelArgs`), the cluster options of a router
//! (`RouterArgs`) and of an expert node (`ExpertArgs`), and loading the placement and secret
//! files they name.
//!
//! This module sits below `cli`, `serve`, `expert`, `router` and `cluster`: it imports none
//! of them. What a router's options build (the expert backend) lives in `router::backend`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use moe_cluster::placement::{ExpertSet, NodeAddr, NodeIndex, Placement};
use moe_cluster::wire::{ClusterSecret, WireDtype};
use moe_kernels::{KvType, NumericMode};
use moe_model::config::ModelConfig;
use moe_model::forward::ComputeHandle;
use moe_model::gguf::GgufFile;
use moe_model::model::{CpuShare, Model, WeightSet};
use moe_model::LayerExperts;

/// The node name of an expert when `--node` is not given.
pub const DEFAULT_NODE_NAME: &str = "expert";

/// Where the model is and how to compute it.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// GGUF file (for a split set, the `-00001-of-0000N.gguf` shard). Without it, a tiny
    /// random-weight Kimi-K2.5-shaped model is synthesized once into the temp directory.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Compute threads (0 = all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Largest context (positions) per sequence.
    #[arg(long, default_value_t = 4096)]
    pub ctx_size: usize,
    /// Exact arithmetic: f32 activations over exactly dequantized weights (the verification
    /// reference; the default of `logits`).
    #[arg(long, conflicts_with = "fast")]
    pub exact: bool,
    /// Fast arithmetic: activations rounded to int8 per block, integer dot products, as
    /// llama.cpp computes (the default of run, bench, serve and the roles).
    #[arg(long)]
    pub fast: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Element type of the KV cache: `f32`, `bf16`, `f16` or `q8_0` (default f32 in exact
    /// mode, f16 in fast mode). Exact mode takes only f32 (a narrower cache rounds every
    /// cached value, so the result would no longer be the reference).
    #[arg(long, value_parser = parse_kv_type)]
    pub kv_type: Option<KvType>,
}

/// `--kv-type`'s parser.
pub fn parse_kv_type(s: &str) -> Result<KvType, String> {
    s.parse()
        .map_err(|e: moe_kernels::KernelError| e.to_string())
}

/// Where routed experts (and, with `--vulkan-layers on`, attention, dense FFNs and shared
/// experts) are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The CPU kernels over the mapped file.
    Cpu,
    /// A GPU through Vulkan (`moe-node devices` lists them): the experts (and a router's layers,
    /// `--vulkan-layers`) are uploaded once and computed there in the model's numeric mode: f32
    /// activations with `--exact`, int8 activations and integer dot products in the fast mode (on a
    /// device with integer dot products; f32 otherwise).
    Vulkan,
}

/// Whether a Vulkan device computes a call's routes to one expert in tiles that share each
/// weight read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteTiles {
    /// On for GPUs, off for CPU implementations such as lavapipe (whose caches already share
    /// the reads between workgroups).
    Auto,
    /// Up to 8 routes of one expert per workgroup (a prompt's tokens routed to one expert).
    On,
    /// One route per workgroup.
    Off,
}

/// `--backend`, `--device` and `--route-tiles`: the device routed experts run on.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ComputeArgs {
    /// Where routed experts are computed: `cpu` or `vulkan`.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// Vulkan device index for `--backend vulkan` (see `moe-node devices`).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// With `--backend vulkan`: whether a prompt's routes to one expert are computed in
    /// tiles that read the expert's weights once (results are the same bit for bit).
    #[arg(long, value_enum, default_value_t = RouteTiles::Auto)]
    pub route_tiles: RouteTiles,
    /// With `--backend vulkan`: `import` lets a unified-memory device (an integrated GPU)
    /// read the weights (the experts, and the layers with `--vulkan-layers on`) where the
    /// page cache holds the file (host-memory import, with
    /// VK_EXT_external_memory_host; a discrete GPU, or a device without it, gets a copy),
    /// `copy` always copies them (llama.cpp's `--no-mmap`; a discrete GPU through a staging
    /// buffer into its own memory), `stage` always through a staging buffer into memory the
    /// host does not map.
    #[arg(long, value_enum, default_value_t = VulkanMemory::Import)]
    pub vulkan_memory: VulkanMemory,
    /// With `--backend vulkan`, for a router or a single process: `on` computes each layer's
    /// attention (projections, rope, scores, softmax, values, with each sequence's KV rows
    /// kept there), the dense layers' FFNs, the shared experts and the output head on the
    /// device too, `off`
    /// keeps them on the CPU (only the routed experts on the device; faster on a CPU
    /// implementation such as lavapipe, whose shaders run on the same cores).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub vulkan_layers: OnOff,
}

/// A switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// How a Vulkan device gets the expert (and layer) weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VulkanMemory {
    /// Read in place from maps of the model file on a unified-memory device that can import
    /// host memory.
    Import,
    /// Copied into device memory.
    Copy,
    /// Copied through a staging buffer into device memory the host does not map.
    Stage,
}

impl ComputeArgs {
    /// Submissions to the Vulkan device so far (each a host round trip), with `--backend
    /// vulkan` while this process holds the device; `None` otherwise.
    pub fn device_submissions(&self) -> Option<u64> {
        #[cfg(feature = "vulkan")]
        if self.backend == BackendKind::Vulkan {
            return moe_vulkan::Device::shared(self.device)
                .ok()
                .map(|d| d.submissions());
        }
        None
    }

    /// What these options leave to the CPU: the routed experts with `--backend cpu`; the
    /// layers (attention, dense FFNs, shared experts) unless `--backend vulkan` with
    /// `--vulkan-layers on`.
    pub fn cpu_share(&self) -> CpuShare {
        let vulkan = self.backend == BackendKind::Vulkan;
        CpuShare {
            routed_experts: !vulkan,
            layers: !(vulkan && self.vulkan_layers == OnOff::On),
        }
    }

    /// The expert-compute device for `model`: the CPU, or the chosen Vulkan device with
    /// `model`'s mapped experts uploaded to it.
    pub fn handle(&self, model: &Model) -> anyhow::Result<ComputeHandle> {
        match self.backend {
            BackendKind::Cpu => Ok(ComputeHandle::default()),
            BackendKind::Vulkan => vulkan_handle(self, model),
        }
    }
}

#[cfg(feature = "vulkan")]
fn with_vulkan_layers(args: &ComputeArgs, model: Model) -> anyhow::Result<Model> {
    let index = args.device;
    let device = moe_vulkan::Device::shared(index)?;
    let host = host_memory(args.vulkan_memory);
    let mut layers = moe_vulkan::VulkanLayers::with_upload(device, &model, host)
        .with_context(|| format!("uploading the attention, dense FFN and shared-expert weights to Vulkan device {index} (--vulkan-layers off keeps them on the CPU)"))?;
    match args.route_tiles {
        RouteTiles::Auto => {}
        RouteTiles::On => layers = layers.with_route_tiles(true),
        RouteTiles::Off => layers = layers.with_route_tiles(false),
    }
    eprintln!(
        "attention, dense FFNs, shared experts and the output head on Vulkan device {index} ({}): {:.1} MiB of weights on the device ({:.1} MiB read in place from the file), KV cache rows copied there",
        layers.device().info.name,
        layers.uploaded_bytes() as f64 / 1048576.0,
        layers.imported_bytes() as f64 / 1048576.0,
    );
    if let Some(why) = layers.head_on_cpu() {
        eprintln!("the output head stays on the CPU: {why}");
    }
    Ok(model.with_layer_compute(std::sync::Arc::new(layers)))
}

#[cfg(not(feature = "vulkan"))]
fn with_vulkan_layers(_: &ComputeArgs, _: Model) -> anyhow::Result<Model> {
    bail!(
        "this moe-node was built without Vulkan: rebuild with `--features vulkan` (on by default)"
    )
}

/// The Vulkan crate's name for `--vulkan-memory`'s choice.
#[cfg(feature = "vulkan")]
fn host_memory(choice: VulkanMemory) -> moe_vulkan::HostMemory {
    match choice {
        VulkanMemory::Import => moe_vulkan::HostMemory::Import,
        VulkanMemory::Copy => moe_vulkan::HostMemory::Copy,
        VulkanMemory::Stage => moe_vulkan::HostMemory::Stage,
    }
}

#[cfg(feature = "vulkan")]
fn vulkan_handle(args: &ComputeArgs, model: &Model) -> anyhow::Result<ComputeHandle> {
    let index = args.device;
    let device = moe_vulkan::Device::shared(index)?;
    let host = host_memory(args.vulkan_memory);
    let mut compute =
        moe_vulkan::VulkanCompute::with_upload(device, model, moe_vulkan::CHUNK_BYTES_MAX, host)
            .with_context(|| format!("uploading the experts to Vulkan device {index}"))?;
    match args.route_tiles {
        RouteTiles::Auto => {}
        RouteTiles::On => compute = compute.with_route_tiles(true),
        RouteTiles::Off => compute = compute.with_route_tiles(false),
    }
    eprintln!(
        "routed experts on Vulkan device {index} ({}): {:.1} MiB on the device ({:.1} MiB read in place from the file, the rest copied); route tiles {}{}",
        compute.device().info.name,
        compute.uploaded_bytes() as f64 / 1048576.0,
        compute.imported_bytes() as f64 / 1048576.0,
        if compute.route_tiles() { "on" } else { "off" },
        match (model.mode(), compute.has_fast_shaders()) {
            (NumericMode::Fast, true) => "; fast mode: int8 activations, integer dot products",
            (NumericMode::Fast, false) =>
                "; this device has no integer dot products (shaderIntegerDotProduct), so the \
                 fast mode computes the experts with f32 activations there",
            (NumericMode::Exact, _) => "",
        }
    );
    Ok(ComputeHandle(std::sync::Arc::new(compute)))
}

#[cfg(not(feature = "vulkan"))]
fn vulkan_handle(_: &ComputeArgs, _: &Model) -> anyhow::Result<ComputeHandle> {
    bail!(
        "this moe-node was built without Vulkan: rebuild with `--features vulkan` (on by default)"
    )
}

impl ModelArgs {
    /// The numeric mode `--exact` / `--fast` select, else `default` (the command's).
    pub fn mode(&self, default: NumericMode) -> NumericMode {
        match (self.exact, self.fast) {
            (true, _) => NumericMode::Exact,
            (_, true) => NumericMode::Fast,
            _ => default,
        }
    }

    /// The KV cache type for `mode`: `--kv-type`, else [`KvType::default_for`] the mode.
    /// Refuses a non-f32 type in Exact mode.
    pub fn kv_type(&self, mode: NumericMode) -> anyhow::Result<KvType> {
        match self.kv_type {
            None => Ok(KvType::default_for(mode)),
            Some(t) if mode == NumericMode::Exact && t != KvType::F32 => bail!(
                "--kv-type {t} needs --fast: exact mode is the f32 reference and keeps an f32 \
                 KV cache (use --kv-type f32, or --fast for a narrower cache)"
            ),
            Some(t) => Ok(t),
        }
    }

    /// Opens the model for a router using `cluster`'s placement, if any: routed experts of
    /// remote nodes are not mapped at all, only those of `local` nodes. It computes in
    /// [`ModelArgs::mode`] with the command's `default`, with KV caches of
    /// [`ModelArgs::kv_type`].
    pub fn load_for(
        &self,
        cluster: Option<&RouterArgs>,
        default: NumericMode,
    ) -> anyhow::Result<Model> {
        moe_kernels::set_compute_threads(self.threads);
        let mode = self.mode(default);
        let kv_type = self.kv_type(mode)?;
        let path = match &self.model {
            Some(p) => p.clone(),
            None => default_model()?,
        };
        let set = match cluster.and_then(|c| c.placement.as_ref()) {
            None => WeightSet::All,
            Some(placement) => {
                let header =
                    GgufFile::open(&path).with_context(|| format!("opening {}", path.display()))?;
                let cfg = ModelConfig::from_gguf(&header)?;
                let p = load_placement(placement, &cfg)?;
                let local = LayerExperts::new(
                    (0..cfg.n_layers)
                        .map(|l| {
                            let mut set = ExpertSet::empty(cfg.n_experts).ok()?;
                            for (i, node) in p.nodes().iter().enumerate() {
                                if node.addr == NodeAddr::Local {
                                    set.union_with(p.experts_of(NodeIndex(i as u16), l)?);
                                }
                            }
                            Some(set)
                        })
                        .collect(),
                );
                WeightSet::Router { local }
            }
        };
        let model =
            Model::open_with(&path, &set).with_context(|| format!("loading {}", path.display()))?;
        let model = with_mode_reported(model, mode, self.compute.cpu_share()).with_kv_type(kv_type);
        if self.compute.backend == BackendKind::Vulkan && self.compute.vulkan_layers == OnOff::On {
            return with_vulkan_layers(&self.compute, model);
        }
        Ok(model)
    }
}

/// `model` in `mode`, saying on stderr what Fast mode repacked and how long it took. What
/// another device computes (`cpu` says what is left to the CPU) is not repacked for the
/// CPU's kernels: that device reads the file's blocks.
pub fn with_mode_reported(model: Model, mode: NumericMode, cpu: CpuShare) -> Model {
    let start = std::time::Instant::now();
    let model = model.with_mode_packing(mode, cpu);
    let (n, bytes) = model.packed_summary();
    if n > 0 {
        eprintln!(
            "repacked {n} matrices ({:.1} MiB) for the fast kernels in {:.2} s",
            bytes as f64 / 1048576.0,
            start.elapsed().as_secs_f64()
        );
    }
    model
}

/// The embedded default: `synth --preset tiny` (seed 0, BF16), written once to the temp dir.
pub fn default_model() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("moe-node");
    let path = dir.join("default-tiny-BF16-seed0.gguf");
    if !path.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Write under a unique name, then rename, so concurrent first runs never see half a file.
        let tmp = dir.join(format!("default-tiny.{}.partial", std::process::id()));
        let s = moe_devdata::synth::synthesize(&moe_devdata::synth::SynthOptions::default(), &tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        eprintln!(
            "no --model given: synthesized the default tiny model at {} ({} bytes)",
            path.display(),
            s.file_bytes
        );
    }
    Ok(path)
}

/// Options that turn a model-running command into a router with remote experts.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Expert placement (TOML): which node owns which experts; makes this process a router.
    #[arg(long)]
    pub placement: Option<PathBuf>,
    /// File holding the cluster secret (at least 16 bytes; surrounding whitespace ignored).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Encoding of hidden states on the wire: `bf16` (half the bytes) by default in the fast
    /// numeric mode, `f32` in the exact one; `q8` sends hidden states as int8 blocks of 32
    /// with an f32 scale (1.125 bytes a value) and gets the partial sums back in bf16.
    #[arg(long)]
    pub wire_dtype: Option<WireDtype>,
    /// Encrypt every frame after the handshake (ChaCha20 under the session keys; the MAC
    /// covers the ciphertext). Every node of a cluster must be started with the same choice.
    #[arg(long)]
    pub wire_encrypt: bool,
    /// This router's node name in handshakes.
    #[arg(long, default_value = "router")]
    pub node_name: String,
    /// Append every MoE layer's routing to this routing trace (for `moe-node placement`).
    #[arg(long)]
    pub record_routing: Option<PathBuf>,
}

impl RouterArgs {
    /// The placement and secret, when a placement is given.
    pub fn load(&self, cfg: &ModelConfig) -> anyhow::Result<Option<(Placement, ClusterSecret)>> {
        let Some(path) = &self.placement else {
            if self.secret_file.is_some() {
                bail!("--secret-file needs --placement");
            }
            return Ok(None);
        };
        let secret_path = self
            .secret_file
            .as_deref()
            .context("--placement needs --secret-file")?;
        let placement = load_placement(path, cfg)?;
        Ok(Some((placement, read_secret(secret_path)?)))
    }
}

/// Parses a placement file against a model.
pub fn load_placement(path: &Path, cfg: &ModelConfig) -> anyhow::Result<Placement> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading placement {}", path.display()))?;
    Placement::parse(&text, &cfg.moe_layers(), cfg.n_experts)
        .with_context(|| format!("placement {}", path.display()))
}

/// Reads the cluster secret from a file (bytes as they are, see
/// [`ClusterSecret::from_file_bytes`]).
pub fn read_secret(path: &Path) -> anyhow::Result<ClusterSecret> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading secret file {}", path.display()))?;
    ClusterSecret::from_file_bytes(&bytes)
        .with_context(|| format!("secret file {}", path.display()))
}

/// Options of `--role expert`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExpertArgs {
    /// Experts owned in every MoE layer, e.g. `0-95,200,310-320`.
    #[arg(long)]
    pub shards: Option<String>,
    /// This node's name (also selects its entry in --placement).
    #[arg(long)]
    pub node: Option<String>,
    /// Data-plane listen address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        model: ModelArgs,
    }

    fn kv(args: &[&str], default: NumericMode) -> anyhow::Result<KvType> {
        let cmd = Cmd::try_parse_from([&["cmd"], args].concat())?;
        cmd.model.kv_type(cmd.model.mode(default))
    }

    /// f32 in exact mode and f16 in fast mode unless `--kv-type` says otherwise; exact mode
    /// refuses a narrower cache with an error naming the option; a bad name is a parse error.
    #[test]
    fn kv_type_defaults_per_mode_and_exact_refuses_narrow_caches() {
        assert_eq!(kv(&[], NumericMode::Exact).unwrap(), KvType::F32);
        assert_eq!(kv(&[], NumericMode::Fast).unwrap(), KvType::F16);
        assert_eq!(kv(&["--exact"], NumericMode::Fast).unwrap(), KvType::F32);
        assert_eq!(
            kv(&["--kv-type", "q8_0"], NumericMode::Fast).unwrap(),
            KvType::Q8_0
        );
        assert_eq!(
            kv(&["--fast", "--kv-type", "bf16"], NumericMode::Exact).unwrap(),
            KvType::Bf16
        );
        assert_eq!(
            kv(&["--exact", "--kv-type", "f32"], NumericMode::Fast).unwrap(),
            KvType::F32
        );
        let refused = kv(&["--kv-type", "bf16"], NumericMode::Exact).unwrap_err();
        assert!(
            refused.to_string().contains("--kv-type bf16 needs --fast"),
            "{refused}"
        );
        assert!(kv(&["--kv-type", "q4"], NumericMode::Fast).is_err());
    }
}
