//! What this node knows of the cluster (its incarnation, whether it holds housekeeping, which
//! nodes are alive, how loaded the robots of the other nodes are), written by the cluster member
//! and read by the actors that act on it.
//!
//! Load summaries: each node's registry sums up its robots with room for work as
//! [`LoadBucket`]s at every sweep; the member writes them in the node's membership row with each
//! heartbeat and sends them as a hint. The other nodes keep the latest summary of each alive
//! peer, and their registries plan against it: an item goes to a robot of this node only if no
//! robot of another node that could take it holds fewer items (see the registry's model).

use crate::domain::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};

/// Robots of one node with room for work, alike in what they take: `robots` robots eligible
/// for `processes` (empty: every process), each allowed `capacity` items and holding `load`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoadBucket {
    pub processes: Vec<i64>,
    pub capacity: i64,
    pub load: i64,
    pub robots: i64,
}

impl LoadBucket {
    /// Items these robots could take now.
    pub fn free(&self) -> i64 {
        self.robots * (self.capacity - self.load).max(0)
    }

    /// Whether these robots take items of `process_id`.
    pub fn takes(&self, process_id: i64) -> bool {
        self.robots > 0
            && self.load < self.capacity
            && (self.processes.is_empty() || self.processes.contains(&process_id))
    }
}

/// Reads a summary as the membership row or a hint carries it (JSON); anything else is none.
pub fn parse_loads(text: &str) -> Vec<LoadBucket> {
    serde_json::from_str(text).unwrap_or_default()
}

/// What this node knows of the cluster, shared with the actors that act on it.
#[derive(Debug)]
pub struct ClusterView {
    node_id: String,
    incarnation: AtomicI64,
    leads: AtomicBool,
    /// Nodes alive at the last heartbeat (this one included).
    alive: RwLock<Vec<String>>,
    /// This node's load summary, as of its registry's last sweep.
    own_loads: RwLock<Vec<LoadBucket>>,
    /// The latest load summary of each other alive node, and when it was taken.
    peer_loads: RwLock<BTreeMap<String, (Millis, Vec<LoadBucket>)>>,
}

impl ClusterView {
    /// A view of a node that has not joined yet: alone, and not leading until the store says so.
    pub fn new(node_id: &str) -> Self {
        ClusterView {
            node_id: node_id.to_string(),
            incarnation: AtomicI64::new(0),
            leads: AtomicBool::new(false),
            alive: RwLock::new(vec![node_id.to_string()]),
            own_loads: RwLock::default(),
            peer_loads: RwLock::default(),
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

    /// This node's load summary, as of its registry's last sweep.
    pub fn own_loads(&self) -> Vec<LoadBucket> {
        self.own_loads
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_own_loads(&self, loads: Vec<LoadBucket>) {
        *self
            .own_loads
            .write()
            .unwrap_or_else(PoisonError::into_inner) = loads;
    }

    /// Notes `node`'s summary taken at `at`, unless a later one is known already.
    pub(crate) fn note_peer_loads(&self, node: &str, at: Millis, loads: Vec<LoadBucket>) {
        if node == self.node_id {
            return;
        }
        let mut peers = self
            .peer_loads
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = peers.entry(node.to_string()).or_insert((at, Vec::new()));
        if entry.0 <= at {
            *entry = (at, loads);
        }
    }

    /// Forgets the summaries of nodes no longer alive.
    pub(crate) fn keep_peer_loads_of(&self, alive: &[String]) {
        self.peer_loads
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|node, _| alive.contains(node));
    }

    /// The buckets of every other node whose summary was taken at `since` or later.
    pub fn peer_loads(&self, since: Millis) -> Vec<LoadBucket> {
        self.peer_loads
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|(at, _)| *at >= since)
            .flat_map(|(_, loads)| loads.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(load: i64, robots: i64) -> LoadBucket {
        LoadBucket {
            processes: vec![],
            capacity: 10,
            load,
            robots,
        }
    }

    #[test]
    fn peer_summaries_keep_the_latest_and_only_fresh_alive_ones_count() {
        let view = ClusterView::new("a");
        view.note_peer_loads("b", 100, vec![bucket(1, 2)]);
        view.note_peer_loads("b", 90, vec![bucket(9, 9)]);
        view.note_peer_loads("c", 50, vec![bucket(0, 1)]);
        view.note_peer_loads("a", 200, vec![bucket(0, 5)]);
        assert_eq!(view.peer_loads(0), vec![bucket(1, 2), bucket(0, 1)]);
        assert_eq!(view.peer_loads(60), vec![bucket(1, 2)]);
        view.keep_peer_loads_of(&["a".into(), "c".into()]);
        assert_eq!(view.peer_loads(0), vec![bucket(0, 1)]);
    }

    #[test]
    fn a_summary_reads_back_and_garbage_reads_as_none() {
        let loads = vec![bucket(3, 4)];
        let text = serde_json::to_string(&loads).expect("json");
        assert_eq!(parse_loads(&text), loads);
        assert_eq!(parse_loads("{nonsense"), Vec::<LoadBucket>::new());
        assert_eq!(bucket(3, 4).free(), 28);
    }
}
