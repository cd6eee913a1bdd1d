//! Removes uploads abandoned mid-stream (the node handling them died): a staged task whose
//! `touched_at` stopped moving is deleted with its items. Runs at start and on a timer. The same
//! tick drops per-minute throughput counters older than a day (the longest span the API serves).
//! In a cluster only the node holding the housekeeping role sweeps (`cluster.rs`).

use crate::domain::now_millis;
use crate::store::{Store, minute_of};
use ractor::{Actor, ActorProcessingErr, ActorRef, Message};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Minutes of throughput counters kept: the longest span `GET /api/v1/stats/throughput` serves.
const THROUGHPUT_MINUTES_KEPT: i64 = 1_440;

/// The sweeper actor.
#[derive(Debug)]
pub struct UploadSweeper;

/// Messages of the [`UploadSweeper`].
#[derive(Debug)]
pub enum UploadSweeperMsg {
    /// Discard staged uploads idle for longer than the configured age.
    Sweep,
}

impl Message for UploadSweeperMsg {}

/// Start-up arguments.
#[derive(Debug, Clone)]
pub struct UploadSweeperArgs {
    pub store: Store,
    /// How often to sweep.
    pub period: Duration,
    /// A staged upload untouched for this long is abandoned.
    pub stale_after: Duration,
    /// Only the node holding the housekeeping role sweeps.
    pub view: std::sync::Arc<crate::cluster_view::ClusterView>,
}

/// Running state: the arguments and the timer to cancel on stop.
#[derive(Debug)]
pub struct UploadSweeperState {
    args: UploadSweeperArgs,
    timer: JoinHandle<()>,
}

impl Actor for UploadSweeper {
    type Msg = UploadSweeperMsg;
    type State = UploadSweeperState;
    type Arguments = UploadSweeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(UploadSweeperMsg::Sweep)?;
        let timer = myself.send_interval(args.period, || UploadSweeperMsg::Sweep);
        Ok(UploadSweeperState { args, timer })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UploadSweeperMsg::Sweep if !state.args.view.leads() => {}
            UploadSweeperMsg::Sweep => {
                let cutoff = now_millis() - state.args.stale_after.as_millis() as i64;
                match state.args.store.discard_stale_uploads(cutoff).await {
                    Ok(ids) if !ids.is_empty() => info!(?ids, "discarded abandoned uploads"),
                    Ok(_) => {}
                    // The next tick tries again; a sweep is idempotent.
                    Err(err) => warn!(error = %err, "stale upload sweep failed"),
                }
                let keep_from = minute_of(now_millis()) - THROUGHPUT_MINUTES_KEPT;
                if let Err(err) = state.args.store.prune_throughput(keep_from).await {
                    warn!(error = %err, "throughput prune failed");
                }
            }
        }
        Ok(())
    }
}
