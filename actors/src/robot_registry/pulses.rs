//! Pulses without the registry's mailbox. A busy fleet sends thousands of frames a second (10,000
//! WebSocket robots with a ping every 10 s is 1,000 pongs a second). When each one was a registry
//! message with its own store write, the mailbox fell behind. The sweep then judged robots by
//! pulses still waiting in the queue and ended sessions that were alive.
//!
//! Now a pulse is one map insert on a [`PulseBoard`] shared by the web layer and the registry. The
//! registry reads the board before it judges silence. The board also lists the robots that have a
//! session on this node, so a connecting robot's items in flight are counted by the caller, not
//! inside the registry's mailbox (10,000 robots reconnecting at once queued 10,000 store reads
//! there, and connects timed out). [`PulseWriter`] stores the times in the
//! background, one statement for every robot due and one write at a time, so the mailbox never
//! waits on the store for a pulse.

use crate::domain::Millis;
use crate::robot_session::RobotSessionMsg;
use crate::store::Store;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tracing::warn;

/// Latest pulse per robot since the registry last looked. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PulseBoard {
    fresh: Arc<Mutex<HashMap<i64, Millis>>>,
    sessions: Arc<Mutex<HashMap<i64, ActorRef<RobotSessionMsg>>>>,
}

impl PulseBoard {
    /// Notes a sign of life from `robot_id` at `at`.
    pub fn record(&self, robot_id: i64, at: Millis) {
        let mut fresh = self.fresh.lock().unwrap_or_else(PoisonError::into_inner);
        let latest = fresh.entry(robot_id).or_insert(at);
        *latest = (*latest).max(at);
    }

    /// Everything recorded since the last call.
    pub fn take(&self) -> HashMap<i64, Millis> {
        std::mem::take(&mut *self.fresh.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Robots with a session on this node.
    pub fn connected(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The session of `robot_id` on this node, if it has one (as of the registry's last
    /// change). A request from a robot with a session reaches it through here, without a
    /// registry message.
    pub fn session(&self, robot_id: i64) -> Option<ActorRef<RobotSessionMsg>> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&robot_id)
            .cloned()
    }

    /// The registry's record of which robots have a session: `Some` opens, `None` closes.
    pub(super) fn set_session(&self, robot_id: i64, session: Option<ActorRef<RobotSessionMsg>>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        match session {
            Some(actor) => sessions.insert(robot_id, actor),
            None => sessions.remove(&robot_id),
        };
    }
}

/// Stores pulse times in the background, in batches.
#[derive(Debug)]
pub struct PulseWriter {
    store: Store,
    node_id: String,
    due: HashMap<i64, Millis>,
    writing: Arc<AtomicBool>,
}

impl PulseWriter {
    pub fn new(store: Store, node_id: String) -> Self {
        PulseWriter {
            store,
            node_id,
            due: HashMap::new(),
            writing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queues `at` as `robot_id`'s stored last pulse.
    pub fn queue(&mut self, robot_id: i64, at: Millis) {
        let latest = self.due.entry(robot_id).or_insert(at);
        *latest = (*latest).max(at);
    }

    /// Forgets a robot (its session ended, or it was deleted).
    pub fn forget(&mut self, robot_id: i64) {
        self.due.remove(&robot_id);
    }

    /// Starts writing what is queued unless a write is still running. What queues meanwhile
    /// goes with the next flush.
    pub fn flush(&mut self) {
        if self.due.is_empty() || self.writing.swap(true, Ordering::AcqRel) {
            return;
        }
        let pulses: Vec<(i64, Millis)> = self.due.drain().collect();
        let store = self.store.clone();
        let node_id = self.node_id.clone();
        let writing = Arc::clone(&self.writing);
        tokio::spawn(async move {
            if let Err(err) = store.record_pulses(&pulses, &node_id).await {
                // The next pulse of each robot is queued again; nothing else depends on it.
                warn!(error = %err, robots = pulses.len(), "could not store pulses");
            }
            writing.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_keeps_the_latest_pulse_per_robot_until_taken() {
        let board = PulseBoard::default();
        board.record(1, 100);
        board.record(1, 90);
        board.record(2, 50);
        board.clone().record(1, 120);
        assert_eq!(board.take(), HashMap::from([(1, 120), (2, 50)]));
        assert!(board.take().is_empty());
    }

    /// Stands in for a robot session: the board only keeps and hands out its address.
    struct Idle;

    impl ractor::Actor for Idle {
        type Msg = RobotSessionMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            _args: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_board_lists_open_sessions_and_hands_them_out() {
        let board = PulseBoard::default();
        assert!(board.session(7).is_none());
        assert!(board.session(7).is_none());
        let (actor, handle) = ractor::Actor::spawn(None, Idle, ())
            .await
            .expect("spawn a stand-in session");
        board.clone().set_session(7, Some(actor.clone()));
        assert!(board.session(7).is_some());
        assert_eq!(
            board.session(7).map(|a| a.get_id()),
            Some(actor.get_id()),
            "the board hands out the session it was given"
        );
        board.set_session(7, None);
        assert!(board.session(7).is_none());
        assert!(board.session(7).is_none());
        actor.stop(None);
        // The writer's last flush ended; its outcome was logged there.
        let _ = handle.await;
    }
}
