//! Cluster options shared by the roles and the model-running commands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use moe_model::config::ModelConfig;
use moe_model::forward::{ExpertBackend, LocalExperts};
use moe_model::model::Model;

use super::remote_experts::{LinkHealth, RemoteExperts};
use moe_cluster::placement::Placement;
use moe_cluster::wire::{ClusterSecret, WireDtype};

/// Options that turn a model-running command into a router with remote experts.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Expert placement (TOML): which node owns which experts; makes this process a router.
    #[arg(long)]
    pub placement: Option<PathBuf>,
    /// File holding the cluster secret (at least 16 bytes; surrounding whitespace ignored).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Encoding of hidden states on the wire.
    #[arg(long, default_value = "f32")]
    pub wire_dtype: WireDtype,
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

impl RouterArgs {
    /// The routed-expert backend: every expert in-process without a placement; else the
    /// placement's nodes (with SIGHUP re-placement, and `--record-routing` in both cases).
    /// The link health handle is there when experts are remote.
    pub fn backend(
        &self,
        model: &Model,
    ) -> anyhow::Result<(Box<dyn ExpertBackend>, Option<LinkHealth>)> {
        let (backend, health): (Box<dyn ExpertBackend>, _) = match self.load(&model.cfg)? {
            None => (Box::new(LocalExperts::default()), None),
            Some((placement, secret)) => {
                let mut remote = RemoteExperts::connect(
                    model,
                    placement,
                    secret,
                    &self.node_name,
                    self.wire_dtype,
                    self.wire_encrypt,
                )?;
                if let Some(path) = &self.placement {
                    // Live re-placement: `kill -HUP` re-reads the placement file.
                    remote.watch_placement(
                        path.clone(),
                        model.cfg.moe_layers(),
                        model.cfg.n_experts,
                    )?;
                }
                let health = remote.link_health();
                (Box::new(remote), Some(health))
            }
        };
        let backend =
            crate::cli::record::with_recording(backend, model, self.record_routing.as_deref())?;
        Ok((backend, health))
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
