//! `NodeSupervisorActor`: the root actor of an expert node. It spawns the
//! [`ExpertShardActor`] linked to itself and restarts it if it fails, so a panic while
//! computing one request fails that request and nothing else.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::expert_shard::{ExpertShardActor, ExpertShardMsg};
use super::live_shard::LiveShard;

/// Messages of [`NodeSupervisorActor`].
pub enum NodeSupervisorMsg {
    /// The current shard actor (it changes after a restart).
    CurrentShard(ractor::RpcReplyPort<ActorRef<ExpertShardMsg>>),
}

/// State: what a restarted child needs, and the child.
pub struct NodeSupervisorState {
    live: Arc<LiveShard>,
    child: ActorRef<ExpertShardMsg>,
    restarts: u64,
}

/// Supervises the node's shard actor.
pub struct NodeSupervisorActor;

impl Actor for NodeSupervisorActor {
    type Msg = NodeSupervisorMsg;
    type State = NodeSupervisorState;
    type Arguments = Arc<LiveShard>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        live: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (child, _) =
            Actor::spawn_linked(None, ExpertShardActor, live.clone(), myself.get_cell()).await?;
        Ok(NodeSupervisorState {
            live,
            child,
            restarts: 0,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeSupervisorMsg::CurrentShard(port) => {
                let _ = port.send(state.child.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let reason = match &evt {
            SupervisionEvent::ActorFailed(_, reason) => Some(reason.to_string()),
            SupervisionEvent::ActorTerminated(_, _, reason) => {
                Some(reason.clone().unwrap_or_else(|| "stopped".into()))
            }
            _ => None,
        };
        if let Some(reason) = reason {
            state.restarts += 1;
            eprintln!(
                "expert shard actor failed ({reason}); restart #{}",
                state.restarts
            );
            let (child, _) = Actor::spawn_linked(
                None,
                ExpertShardActor,
                state.live.clone(),
                myself.get_cell(),
            )
            .await?;
            state.child = child;
        }
        Ok(())
    }
}
