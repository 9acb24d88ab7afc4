//! Live re-placement: the router takes a new placement file on SIGHUP without dropping
//! requests.
//!
//! 1. A watcher task parses the file on each SIGHUP; an invalid file is refused with its
//!    error and the old placement stays.
//! 2. At the next step boundary (every step in flight has finished on the old placement),
//!    each remote node gets `Reassign{Prepare}` with its new experts and maps them in
//!    addition to its old ones. If any node refuses, every node is told to `Commit` its old
//!    experts again and the old placement stays.
//! 3. The router switches to the new placement, then sends `Reassign{Commit}`: nodes release
//!    the experts they no longer own.
//!
//! The node set itself (names, addresses, which are `local`) and the local experts cannot
//! change live; such a file is refused and needs a router restart.

use std::path::PathBuf;
use std::time::Duration;

use moe_cluster::placement::{NodeIndex, Placement};
use moe_cluster::wire::{Reassign, ReassignPhase, ShardSummary};

use super::RemoteExperts;
use crate::router::peer_link::PeerLinkMsg;

/// Longest wait for a node's answer to one re-placement phase.
pub const REASSIGN_TIMEOUT_MS: u64 = 60_000;

impl RemoteExperts {
    /// Reloads `path` on every SIGHUP (for a model with these MoE layers and experts).
    pub fn watch_placement(
        &mut self,
        path: PathBuf,
        moe_layers: Vec<usize>,
        n_experts: usize,
    ) -> anyhow::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut hup = {
            let _guard = self.rt.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?
        };
        self.rt.spawn(async move {
            while hup.recv().await.is_some() {
                let parsed = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| {
                        Placement::parse(&text, &moe_layers, n_experts).map_err(|e| e.to_string())
                    });
                match parsed {
                    Err(e) => eprintln!(
                        "refused new placement {}: {e}; keeping the current one",
                        path.display()
                    ),
                    Ok(p) => {
                        eprintln!(
                            "new placement {} parsed; applying at the next step",
                            path.display()
                        );
                        if tx.try_send(p).is_err() {
                            eprintln!("a re-placement is already pending; this one is dropped");
                        }
                    }
                }
            }
        });
        self.reload = Some(rx);
        Ok(())
    }

    /// Applies a pending new placement, if any (called at step boundaries).
    pub(super) fn apply_reloaded_placement(&mut self) {
        let Some(new) = self.reload.as_ref().and_then(|rx| rx.try_recv().ok()) else {
            return;
        };
        match self.replace_placement(new) {
            Ok(()) => eprintln!("placement replaced (epoch {})", self.epoch),
            Err(e) => eprintln!("refused new placement: {e}; keeping the current one"),
        }
    }

    /// Switches to `new` with the two-phase protocol above.
    pub fn replace_placement(&mut self, new: Placement) -> Result<(), String> {
        let old_nodes = self.placement.nodes();
        let same_nodes = old_nodes.len() == new.nodes().len()
            && old_nodes
                .iter()
                .zip(new.nodes())
                .all(|(a, b)| a.name == b.name && a.addr == b.addr);
        if !same_nodes {
            return Err(
                "live re-placement cannot add, remove, rename or move nodes; restart the router"
                    .into(),
            );
        }
        for (i, link) in self.links.iter().enumerate() {
            let idx = NodeIndex(i as u16);
            let moved = self
                .placement
                .moe_layers()
                .iter()
                .any(|&l| self.placement.experts_of(idx, l) != new.experts_of(idx, l));
            if link.is_none() && moved {
                return Err(format!(
                    "the local node {}'s experts cannot change live; restart the router",
                    old_nodes[i].name.as_str()
                ));
            }
        }
        self.epoch += 1;
        let prepared = self.phase_all(&new, ReassignPhase::Prepare);
        if let Err(e) = prepared {
            let old = self.placement.clone();
            let _ = self.phase_all(&old, ReassignPhase::Commit);
            return Err(e);
        }
        let old = std::mem::replace(&mut self.placement, new.clone());
        for (i, link) in self.links.iter().enumerate() {
            if let Some(link) = link {
                let idx = NodeIndex(i as u16);
                let expected = super::expected_shards(&new, idx);
                let _ = link
                    .actor
                    .cast(PeerLinkMsg::SetExpected(std::sync::Arc::new(expected)));
            }
        }
        // Old steps are done: nodes may release what they no longer own. A node that fails
        // here keeps its extra experts mapped, which costs memory but no correctness.
        if let Err(e) = self.phase_all(&new, ReassignPhase::Commit) {
            eprintln!("re-placement committed on the router, but a node kept its old experts: {e}");
        }
        drop(old);
        Ok(())
    }

    /// Sends one phase to every remote node and waits for every ack.
    fn phase_all(&self, placement: &Placement, phase: ReassignPhase) -> Result<(), String> {
        let mut waiting = Vec::new();
        for (i, link) in self.links.iter().enumerate() {
            let Some(link) = link else { continue };
            let Some(node) = placement.node(NodeIndex(i as u16)) else {
                continue;
            };
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let msg = Reassign {
                epoch: self.epoch,
                phase,
                shards: ShardSummary::of_node(node),
            };
            link.actor
                .cast(PeerLinkMsg::Reassign(msg, tx))
                .map_err(|e| format!("node {}: {e}", link.shared.name))?;
            waiting.push((link.shared.name.clone(), rx));
        }
        for (name, rx) in waiting {
            match rx.recv_timeout(Duration::from_millis(REASSIGN_TIMEOUT_MS)) {
                Ok(Ok(ack)) if ack.error.is_empty() => {}
                Ok(Ok(ack)) => return Err(format!("node {name} refused {phase:?}: {}", ack.error)),
                Ok(Err(e)) => return Err(format!("node {name}: {e}")),
                Err(_) => {
                    return Err(format!(
                        "node {name} did not answer {phase:?} within {REASSIGN_TIMEOUT_MS} ms"
                    ))
                }
            }
        }
        Ok(())
    }
}
