//! What this node knows of the cluster (its incarnation, whether it holds housekeeping, which
//! nodes are alive), written by the cluster member and read by the actors that act on it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};

/// What this node knows of the cluster, shared with the actors that act on it.
#[derive(Debug)]
pub struct ClusterView {
    node_id: String,
    incarnation: AtomicI64,
    leads: AtomicBool,
    /// Nodes alive at the last heartbeat (this one included).
    alive: RwLock<Vec<String>>,
}

impl ClusterView {
    /// A view of a node that has not joined yet: alone, and not leading until the store says so.
    pub fn new(node_id: &str) -> Self {
        ClusterView {
            node_id: node_id.to_string(),
            incarnation: AtomicI64::new(0),
            leads: AtomicBool::new(false),
            alive: RwLock::new(vec![node_id.to_string()]),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's current incarnation (0 before it joined).
    pub fn incarnation(&self) -> i64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Whether this node holds the housekeeping role.
    pub fn leads(&self) -> bool {
        self.leads.load(Ordering::Acquire)
    }

    /// Ids of the nodes alive at the last heartbeat, this one included.
    pub fn alive(&self) -> Vec<String> {
        self.alive
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_incarnation(&self, incarnation: i64) {
        self.incarnation.store(incarnation, Ordering::Release);
    }

    /// Sets whether this node holds housekeeping; returns what it was.
    pub(crate) fn set_leads(&self, leads: bool) -> bool {
        self.leads.swap(leads, Ordering::AcqRel)
    }

    pub(crate) fn set_alive(&self, mut alive: Vec<String>) {
        if !alive.contains(&self.node_id) {
            alive.push(self.node_id.clone());
        }
        *self.alive.write().unwrap_or_else(PoisonError::into_inner) = alive;
    }
}
