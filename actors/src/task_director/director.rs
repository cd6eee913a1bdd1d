//! The TaskDirector: spawns and supervises TaskActors, routes hand-backs to them.

use super::task_actor::{TaskActor, TaskArgs, TaskMsg};
use crate::domain::TaskStatus;
use crate::robot_registry::RobotRegistryMsg;
use crate::store::{PendingItem, Store};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, SupervisionEvent};
use std::collections::HashMap;
use std::time::Duration;
use tracing::{info, warn};

/// The director actor.
#[derive(Debug)]
pub struct TaskDirector;

/// Messages of the [`TaskDirector`].
#[derive(Debug)]
pub enum TaskDirectorMsg {
    /// A task was uploaded or reopened: make sure an actor dispatches it.
    Activate { task_id: i64 },
    /// Items of a task went back to PENDING.
    Requeued {
        task_id: i64,
        items: Vec<PendingItem>,
    },
    /// A task was cancelled: stop dispatching it.
    Cancelled { task_id: i64 },
    /// Timer: give every task with PENDING items in the store an actor, and stop the actors of
    /// tasks no longer dispatchable (cancelled on another node). Hand-backs sent to an actor
    /// that was just stopping are lost; the store is the truth, so this recovers them.
    Reconcile,
}

impl Message for TaskDirectorMsg {}

/// Start-up arguments.
#[derive(Debug, Clone)]
pub struct TaskDirectorArgs {
    pub store: Store,
    pub registry: ActorRef<RobotRegistryMsg>,
    /// Writes the task actors' leases.
    pub batcher: ActorRef<crate::transition_batcher::BatcherMsg>,
    pub default_lease_ttl: Duration,
    pub clock: crate::domain::Clock,
    /// The nodes alive: each starts on its own stripe of a task's ids.
    pub view: std::sync::Arc<crate::cluster_view::ClusterView>,
}

/// Running state: the live task actors, by task id and by actor.
#[derive(Debug)]
pub struct DirectorState {
    args: TaskDirectorArgs,
    tasks: HashMap<i64, ActorRef<TaskMsg>>,
    by_actor: HashMap<ractor::ActorId, i64>,
}

impl DirectorState {
    async fn ensure(
        &mut self,
        myself: &ActorRef<TaskDirectorMsg>,
        task_id: i64,
    ) -> Result<(), ActorProcessingErr> {
        if self.tasks.contains_key(&task_id) {
            return Ok(());
        }
        let Some(task) = self.args.store.task(task_id).await? else {
            return Ok(());
        };
        if !matches!(task.status, TaskStatus::Created | TaskStatus::Started) {
            return Ok(());
        }
        let lease_ttl = match self.args.store.process(task.process_id).await? {
            Some(p) => p
                .lease_ttl_ms
                .map(|ms| Duration::from_millis(ms as u64))
                .unwrap_or(self.args.default_lease_ttl),
            None => self.args.default_lease_ttl,
        };
        let args = TaskArgs {
            task_id,
            process_id: task.process_id,
            priority: task.priority,
            lease_ttl,
            store: self.args.store.clone(),
            registry: self.args.registry.clone(),
            batcher: self.args.batcher.clone(),
            clock: self.args.clock.clone(),
            stripe: stripe_of(&self.args.view),
        };
        let supervisor: ActorCell = myself.get_cell();
        match Actor::spawn_linked(None, TaskActor, args, supervisor).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), task_id);
                self.tasks.insert(task_id, actor);
            }
            Err(err) => warn!(task_id, error = %err, "task actor did not start"),
        }
        Ok(())
    }

    fn forget(&mut self, actor: &ActorCell) -> Option<i64> {
        let task_id = self.by_actor.remove(&actor.get_id())?;
        // A newer actor may serve the task already (one was started while this one stopped).
        if self
            .tasks
            .get(&task_id)
            .is_some_and(|a| a.get_id() == actor.get_id())
        {
            self.tasks.remove(&task_id);
        }
        crate::mailbox::tell(
            &self.args.registry,
            RobotRegistryMsg::TaskGone {
                task_id,
                actor: actor.get_id(),
            },
        );
        Some(task_id)
    }
}

/// This node's stripe: its place among the nodes alive, by id.
fn stripe_of(view: &crate::cluster_view::ClusterView) -> (usize, usize) {
    let mut alive = view.alive();
    alive.sort();
    let part = alive
        .iter()
        .position(|id| id == view.node_id())
        .unwrap_or(0);
    (part, alive.len().max(1))
}

impl Actor for TaskDirector {
    type Msg = TaskDirectorMsg;
    type State = DirectorState;
    type Arguments = TaskDirectorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = DirectorState {
            args,
            tasks: HashMap::new(),
            by_actor: HashMap::new(),
        };
        // Rebuild from the store: every task that may still dispatch gets an actor.
        for task in state.args.store.dispatchable_tasks().await? {
            state.ensure(&myself, task.id).await?;
        }
        info!(tasks = state.tasks.len(), "task director started");
        myself.send_interval(Duration::from_secs(1), || TaskDirectorMsg::Reconcile);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // This actor lives as long as the node: a store error (a lost write race, a slow
        // server) is logged and the work is picked up again by the next sweep or reconcile.
        if let Err(err) = handle_message(myself, message, state).await {
            warn!(error = %err, "task director: message failed; continuing");
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(actor, _, _) => {
                state.forget(&actor);
            }
            SupervisionEvent::ActorFailed(actor, err) => {
                if let Some(task_id) = state.forget(&actor) {
                    warn!(task_id, error = %err, "task actor failed; restarting from the store");
                    myself.send_after(Duration::from_millis(200), move || {
                        TaskDirectorMsg::Activate { task_id }
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The body of `handle`: turns one message into model calls, store writes and replies.
async fn handle_message(
    myself: ActorRef<TaskDirectorMsg>,
    message: TaskDirectorMsg,
    state: &mut DirectorState,
) -> Result<(), ActorProcessingErr> {
    match message {
        TaskDirectorMsg::Activate { task_id } => state.ensure(&myself, task_id).await?,
        TaskDirectorMsg::Requeued { task_id, items } => {
            let delivered = state
                .tasks
                .get(&task_id)
                .is_some_and(|actor| actor.send_message(TaskMsg::Requeued { items }).is_ok());
            if !delivered {
                // No live actor: a fresh one scans the store and finds them. The old one stays
                // known by its id until it is gone, so the registry hears of it (TaskGone).
                state.tasks.remove(&task_id);
                state.ensure(&myself, task_id).await?;
            }
        }
        TaskDirectorMsg::Reconcile => {
            let tasks = state.args.store.dispatchable_tasks().await?;
            for task in &tasks {
                let c = &task.counts;
                if c.pending + c.assigned + c.started == 0
                    && state
                        .args
                        .store
                        .complete_if_finished(task.id, state.args.clock.now())
                        .await?
                {
                    info!(
                        task_id = task.id,
                        "task completed (its last items ended on two nodes at once)"
                    );
                }
                if task.counts.pending > 0 && !state.tasks.contains_key(&task.id) {
                    state.ensure(&myself, task.id).await?;
                }
            }
            // A task cancelled (or removed) on another node stops here within a second; its
            // leases in flight were already refused by the store.
            let live: std::collections::HashSet<i64> = tasks.iter().map(|t| t.id).collect();
            for (task_id, actor) in &state.tasks {
                if !live.contains(task_id) {
                    actor.stop(Some("task no longer dispatchable".into()));
                }
            }
        }
        TaskDirectorMsg::Cancelled { task_id } => {
            if let Some(actor) = state.tasks.get(&task_id) {
                actor.stop(Some("task cancelled".into()));
            }
        }
    }
    Ok(())
}
