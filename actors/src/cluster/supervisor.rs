//! `NodeSupervisorActor`: the root actor of an expert node. It spawns the
//! [`ExpertShardActor`] linked to itself and restarts it if it fails, so a panic while
//! computing one request fails that request and nothing else.

use std::sync::Arc;

use moe_runtime::model::Model;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::expert_shard::{ExpertShardActor, ExpertShardMsg, ShardSpec};

/// Messages of [`NodeSupervisorActor`].
pub enum NodeSupervisorMsg {
    /// The current shard actor (it changes after a restart).
    CurrentShard(ractor::RpcReplyPort<ActorRef<ExpertShardMsg>>),
}

/// State: what a restarted child needs, and the child.
pub struct NodeSupervisorState {
    model: Arc<Model>,
    shard: Arc<ShardSpec>,
    child: ActorRef<ExpertShardMsg>,
    restarts: u64,
}

/// Supervises the node's shard actor.
pub struct NodeSupervisorActor;

impl Actor for NodeSupervisorActor {
    type Msg = NodeSupervisorMsg;
    type State = NodeSupervisorState;
    type Arguments = (Arc<Model>, Arc<ShardSpec>);

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, (model, shard): Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        let (child, _) = Actor::spawn_linked(None, ExpertShardActor, (model.clone(), shard.clone()), myself.get_cell()).await?;
        Ok(NodeSupervisorState { model, shard, child, restarts: 0 })
    }

    async fn handle(&self, _: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeSupervisorMsg::CurrentShard(port) => {
                let _ = port.send(state.child.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(&self, myself: ActorRef<Self::Msg>, evt: SupervisionEvent, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let reason = match &evt {
            SupervisionEvent::ActorFailed(_, reason) => Some(reason.to_string()),
            SupervisionEvent::ActorTerminated(_, _, reason) => Some(reason.clone().unwrap_or_else(|| "stopped".into())),
            _ => None,
        };
        if let Some(reason) = reason {
            state.restarts += 1;
            eprintln!("expert shard actor failed ({reason}); restart #{}", state.restarts);
            let (child, _) =
                Actor::spawn_linked(None, ExpertShardActor, (state.model.clone(), state.shard.clone()), myself.get_cell()).await?;
            state.child = child;
        }
        Ok(())
    }
}
