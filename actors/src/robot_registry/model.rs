//! Load bookkeeping and the dispatch plan, as plain data: which robot gets how many items of which
//! task. No IO; the registry actor turns a plan into messages.
//!
//! Rules: a robot receives work only while connected and ACTIVE, only for processes it is eligible
//! for (empty list = all), never above its capacity. Each item goes to the eligible robot with the
//! fewest items in flight; ties go to the robot that has waited longest since its last item.
//! Tasks of higher priority go first; among equal priority, the task served least so far goes
//! next, so one huge upload does not starve the rest. A task joining the board starts level
//! with the least-served task of its priority (a new upload does not take every slot until it
//! has caught up with what older tasks were given since they started).
//!
//! Standby: a robot on a WebSocket may hold `standby` leased items beyond its capacity. Its
//! session keeps them back and pushes one the moment the robot reports an item finished, so
//! the robot's next item costs no store write. Standby slots are planned only after every
//! eligible robot is full, and only for robots that are full themselves: an item never waits
//! as one robot's standby while another eligible robot has room.
//!
//! Reservations: every slot a plan grants is counted in the robot's `in_flight` at once and
//! recorded under the number of the Lease message that carries it to the task actor. The task
//! reports, per Lease, which slots it could not use; a Lease the task actor never handled (it
//! stopped or failed with the message queued) is settled in full when the actor is gone. So
//! every reserved slot is settled exactly once, however many Leases of a task overlap. A slot
//! belongs to one session of the robot (`session`): a reservation made for an earlier session
//! is not taken off a later one's count, which was read fresh from the store.
//!
//! Other nodes: in a cluster each node plans only for the robots whose session it holds, but
//! the least-loaded rule is the cluster's. `peers` holds the other nodes' load summaries; an
//! item goes to this node's least-loaded robot only if no robot of another node that takes it
//! holds fewer items. Otherwise the plan leaves it in the queue (`left_to_peers`), for the
//! node whose robot it is to lease; ties stay here. Items left stay in the task's demand here:
//! the registry plans again at its next sweep with fresher summaries, and once no robot of
//! another node holds fewer (it took them, filled up, or went away) they go to this node's
//! robots, so an item is never stranded on the word of a summary. Only the capacity phase looks
//! at peers; standby never takes an item the capacity phase left.
//!
//! Recount: the store is the truth. [`LoadBoard::recount`] compares each robot's count with
//! the store's and corrects only a robot at rest, one whose count, reservations and stored
//! figure did not move between two recounts, so a message still on its way never looks like
//! drift.

use crate::cluster_view::LoadBucket;
use std::collections::BTreeMap;

/// What the registry knows about one connected robot.
#[derive(Debug, Clone, PartialEq)]
pub struct RobotSlot {
    pub capacity: i64,
    /// Items held (ASSIGNED or STARTED), plus slots granted to a task and not yet reported back.
    pub in_flight: i64,
    /// Items it may hold beyond `capacity`, kept back by its session until a slot frees.
    pub standby: i64,
    /// Eligible process ids; empty means all.
    pub processes: Vec<i64>,
    pub active: bool,
    /// Monotonic stamp of the last grant to this robot; lower waited longer.
    pub last_served: u64,
    /// Which session of the robot this slot counts for.
    pub session: u64,
    /// Bumped whenever `in_flight` changes (the recount corrects only robots at rest).
    pub changes: u64,
}

impl RobotSlot {
    pub fn free(&self) -> i64 {
        (self.capacity - self.in_flight).max(0)
    }

    /// Standby slots still open: only once the robot is full.
    pub fn standby_free(&self) -> i64 {
        if self.capacity <= 0 || self.in_flight < self.capacity {
            return 0;
        }
        (self.capacity + self.standby - self.in_flight).max(0)
    }

    /// Items it holds beyond its capacity (standby in its session).
    pub fn standby_held(&self) -> i64 {
        (self.in_flight - self.capacity).max(0)
    }

    pub fn eligible(&self, process_id: i64) -> bool {
        self.active && (self.processes.is_empty() || self.processes.contains(&process_id))
    }

    pub fn accepts(&self, process_id: i64) -> bool {
        self.free() > 0 && self.eligible(process_id)
    }

    fn accepts_standby(&self, process_id: i64) -> bool {
        self.standby_free() > 0 && self.eligible(process_id)
    }
}

/// Which slots a planning pass fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Capacity,
    Standby,
}

impl Phase {
    fn accepts(self, robot: &RobotSlot, process_id: i64) -> bool {
        match self {
            Phase::Capacity => robot.accepts(process_id),
            Phase::Standby => robot.accepts_standby(process_id),
        }
    }
}

/// A task that has pending items.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDemand {
    pub process_id: i64,
    pub priority: i64,
    /// Items the task said it can lease now.
    pub pending: i64,
    /// Items granted to this task so far (fair share).
    pub served: u64,
}

/// One grant of the plan: `count` items of `task_id` for `robot_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedGrant {
    pub task_id: i64,
    pub robot_id: i64,
    pub count: i64,
}

/// Slots reserved for one robot by one Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedSlots {
    pub robot_id: i64,
    /// The robot's session the slots were counted on.
    pub session: u64,
    pub count: i64,
}

/// The slots one Lease message carries to a task actor, until the task reports them used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub task_id: i64,
    /// The task actor the Lease was sent to (a task may get a new actor after a failure).
    pub actor: u64,
    pub slots: Vec<ReservedSlots>,
}

/// A robot whose count the recount set to the store's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Correction {
    pub robot_id: i64,
    pub planned: i64,
    pub stored: i64,
}

/// Registry bookkeeping: robots, task demand, reservations in flight, and a stamp counter for
/// idle ordering.
#[derive(Debug, Clone, Default)]
pub struct LoadBoard {
    pub robots: BTreeMap<i64, RobotSlot>,
    pub tasks: BTreeMap<i64, TaskDemand>,
    /// Unsettled reservations by Lease number.
    pub leases: BTreeMap<u64, Reservation>,
    stamp: u64,
    next_lease: u64,
    /// What the previous recount saw per robot: its change counter and the stored count.
    recounted: BTreeMap<i64, (u64, i64)>,
    /// The other nodes' robots with room for work (their load summaries).
    pub peers: Vec<LoadBucket>,
    /// Items the last plan left for robots of other nodes.
    pub left_to_peers: i64,
}

impl LoadBoard {
    /// A fresh stamp; robots that join get one so newcomers queue behind those already waiting.
    pub fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    /// Assigns as many items as capacity and demand allow, reserving the slots it grants; then,
    /// with every eligible robot full, as many standby slots as remain.
    pub fn plan(&mut self) -> Vec<PlannedGrant> {
        let mut grants: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        let mut peers = self.peers.clone();
        let mut left: BTreeMap<i64, i64> = BTreeMap::new();
        self.plan_phase(Phase::Capacity, &mut grants, &mut peers, &mut left);
        self.plan_phase(Phase::Standby, &mut grants, &mut Vec::new(), &mut left);
        // Items left to other nodes' robots are still queued here: counted out of this plan
        // only, so the next one offers them again (they were stranded when the peer's robots
        // went away before taking them).
        for (task_id, n) in &left {
            if let Some(task) = self.tasks.get_mut(task_id) {
                task.pending += n;
            }
        }
        self.left_to_peers = left.values().sum();
        grants
            .into_iter()
            .map(|((task_id, robot_id), count)| PlannedGrant {
                task_id,
                robot_id,
                count,
            })
            .collect()
    }

    fn plan_phase(
        &mut self,
        phase: Phase,
        grants: &mut BTreeMap<(i64, i64), i64>,
        peers: &mut Vec<LoadBucket>,
        left: &mut BTreeMap<i64, i64>,
    ) {
        // Tasks with more items than every robot of the cluster has room for fill this node's
        // robots whatever the others hold: only a scarce task looks at the peers (which also
        // bounds what a plan leaves to them by what the task holds).
        let mut scarce: BTreeMap<i64, bool> = BTreeMap::new();
        while let Some(task_id) = self.next_task(phase) {
            let process_id = self.tasks[&task_id].process_id;
            let Some(robot_id) = self.least_loaded(phase, process_id) else {
                break;
            };
            let load = self.robots.get(&robot_id).map_or(0, |r| r.in_flight);
            let scarce = !peers.is_empty()
                && *scarce.entry(task_id).or_insert_with(|| {
                    let room: i64 = self
                        .robots
                        .values()
                        .filter(|r| r.accepts(process_id))
                        .map(RobotSlot::free)
                        .chain(
                            peers
                                .iter()
                                .filter(|b| b.takes(process_id))
                                .map(LoadBucket::free),
                        )
                        .sum();
                    self.tasks[&task_id].pending < room
                });
            if scarce && take_from_least_loaded_peer(peers, process_id, load) {
                if let Some(task) = self.tasks.get_mut(&task_id) {
                    task.pending -= 1;
                }
                *left.entry(task_id).or_default() += 1;
                continue;
            }
            let stamp = self.next_stamp();
            if let Some(robot) = self.robots.get_mut(&robot_id) {
                robot.in_flight += 1;
                robot.changes += 1;
                robot.last_served = stamp;
            }
            if let Some(task) = self.tasks.get_mut(&task_id) {
                task.pending -= 1;
                task.served += 1;
            }
            *grants.entry((task_id, robot_id)).or_default() += 1;
        }
    }

    /// Processes that a robot with room for work could take now but no task offers: where
    /// standby items held elsewhere should go back to the queue. `None` when no robot is idle;
    /// `Some(None)` when an idle robot takes every process.
    pub fn idle_processes(&self) -> Option<Option<Vec<i64>>> {
        if !self.robots.values().any(|r| r.standby_held() > 0) {
            return None;
        }
        let idle: Vec<&RobotSlot> = self
            .robots
            .values()
            .filter(|r| r.active && r.free() > 0)
            .collect();
        if idle.is_empty() {
            return None;
        }
        if idle.iter().any(|r| r.processes.is_empty()) {
            return Some(None);
        }
        let mut processes: Vec<i64> = idle.iter().flat_map(|r| r.processes.clone()).collect();
        processes.sort_unstable();
        processes.dedup();
        Some(Some(processes))
    }

    /// This node's robots with room for work, as the other nodes plan against them.
    pub fn summary(&self) -> Vec<LoadBucket> {
        let mut buckets: BTreeMap<(Vec<i64>, i64, i64), i64> = BTreeMap::new();
        for robot in self.robots.values().filter(|r| r.active && r.free() > 0) {
            let mut processes = robot.processes.clone();
            processes.sort_unstable();
            *buckets
                .entry((processes, robot.capacity, robot.in_flight))
                .or_default() += 1;
        }
        buckets
            .into_iter()
            .map(|((processes, capacity, load), robots)| LoadBucket {
                processes,
                capacity,
                load,
                robots,
            })
            .collect()
    }

    /// Items left `robot_id`'s hands (finished, released, revoked, expired).
    pub fn left(&mut self, robot_id: i64, n: i64) {
        if let Some(robot) = self.robots.get_mut(&robot_id) {
            robot.in_flight = (robot.in_flight - n).max(0);
            robot.changes += 1;
        }
    }

    /// Gives back reserved slots that were not used, on the session they were counted on.
    pub fn unreserve(&mut self, slots: &[ReservedSlots]) {
        for slot in slots.iter().filter(|s| s.count > 0) {
            if self
                .robots
                .get(&slot.robot_id)
                .is_some_and(|r| r.session == slot.session)
            {
                self.left(slot.robot_id, slot.count);
            }
        }
    }

    /// Records the slots a Lease carries to `actor` of `task_id`; returns the Lease's number.
    pub fn reserve(&mut self, task_id: i64, actor: u64, slots: Vec<ReservedSlots>) -> u64 {
        self.next_lease += 1;
        self.leases.insert(
            self.next_lease,
            Reservation {
                task_id,
                actor,
                slots,
            },
        );
        self.next_lease
    }

    /// Drops a Lease that never reached its task actor, giving its slots back.
    pub fn withdraw(&mut self, lease: u64) {
        if let Some(reservation) = self.leases.remove(&lease) {
            self.unreserve(&reservation.slots);
        }
    }

    /// Slots still reserved for a task's Leases: planned against its queue, not yet taken.
    pub fn reserved_for(&self, task_id: i64) -> i64 {
        self.leases
            .values()
            .filter(|r| r.task_id == task_id)
            .flat_map(|r| r.slots.iter().map(|s| s.count))
            .sum()
    }

    /// A task reported what it can lease now: `ready` items in its queue, of which the Leases
    /// it has not handled yet will take some.
    pub fn demand(&mut self, task_id: i64, process_id: i64, priority: i64, ready: i64) {
        let pending = (ready - self.reserved_for(task_id)).max(0);
        let floor = self.served_floor(priority);
        let task = self.tasks.entry(task_id).or_insert(TaskDemand {
            process_id,
            priority,
            pending: 0,
            served: floor,
        });
        task.process_id = process_id;
        task.priority = priority;
        task.pending = pending;
    }

    /// A task handled Leases `leases`: the slots it could not use come back, and it has
    /// `ready` items left.
    pub fn settle(&mut self, task_id: i64, leases: &[u64], unused: &[ReservedSlots], ready: i64) {
        for lease in leases {
            self.leases.remove(lease);
        }
        self.unreserve(unused);
        let pending = (ready - self.reserved_for(task_id)).max(0);
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.pending = pending;
        }
    }

    /// Task actor `actor` is gone: Leases it never handled are given back whole. Returns how
    /// many slots that was.
    pub fn actor_gone(&mut self, actor: u64) -> i64 {
        let lost: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, r)| r.actor == actor)
            .map(|(n, _)| *n)
            .collect();
        let mut slots = 0;
        for n in lost {
            if let Some(reservation) = self.leases.remove(&n) {
                slots += reservation.slots.iter().map(|s| s.count).sum::<i64>();
                self.unreserve(&reservation.slots);
            }
        }
        slots
    }

    /// Compares each robot's count with `stored` (items the store says it holds, robots not
    /// named hold none) and sets a robot's count to the store's where the two differ and the
    /// robot is at rest: no reservation for it, and neither its count nor the store's moved
    /// since the previous recount. Returns the corrections.
    pub fn recount(&mut self, stored: &BTreeMap<i64, i64>) -> Vec<Correction> {
        let reserved: std::collections::BTreeSet<i64> = self
            .leases
            .values()
            .flat_map(|r| r.slots.iter().map(|s| s.robot_id))
            .collect();
        let mut seen = BTreeMap::new();
        let mut corrections = Vec::new();
        for (robot_id, robot) in &mut self.robots {
            let store_count = stored.get(robot_id).copied().unwrap_or(0);
            let now = (robot.changes, store_count);
            let steady = self.recounted.get(robot_id) == Some(&now);
            seen.insert(*robot_id, now);
            if robot.in_flight == store_count || !steady || reserved.contains(robot_id) {
                continue;
            }
            corrections.push(Correction {
                robot_id: *robot_id,
                planned: robot.in_flight,
                stored: store_count,
            });
            robot.in_flight = store_count;
            robot.changes += 1;
        }
        self.recounted = seen;
        corrections
    }

    /// Where a task that joins the board starts counting what it was served: level with the
    /// least-served task of its priority that has items now. Counted from 0, a new upload (or a
    /// task whose actor came back for items released or retried) was "least served" until it
    /// had caught up with everything older tasks were ever given, and took every slot for
    /// minutes while their items, retries included, waited.
    fn served_floor(&self, priority: i64) -> u64 {
        self.tasks
            .values()
            .filter(|t| t.priority == priority && t.pending > 0)
            .map(|t| t.served)
            .min()
            .unwrap_or(0)
    }

    /// The next task to serve: highest priority, then least served, among tasks some robot can take.
    fn next_task(&self, phase: Phase) -> Option<i64> {
        self.tasks
            .iter()
            .filter(|(_, t)| {
                t.pending > 0 && self.robots.values().any(|r| phase.accepts(r, t.process_id))
            })
            .max_by(|(a_id, a), (b_id, b)| {
                a.priority
                    .cmp(&b.priority)
                    .then(b.served.cmp(&a.served))
                    .then(b_id.cmp(a_id))
            })
            .map(|(id, _)| *id)
    }

    fn least_loaded(&self, phase: Phase, process_id: i64) -> Option<i64> {
        self.robots
            .iter()
            .filter(|(_, r)| phase.accepts(r, process_id))
            .min_by_key(|(id, r)| {
                let load = match phase {
                    Phase::Capacity => r.in_flight,
                    Phase::Standby => r.standby_held(),
                };
                (load, r.last_served, **id)
            })
            .map(|(id, _)| *id)
    }
}

/// If a robot of another node that takes `process_id` holds fewer than `load` items, counts
/// one more item on the least loaded such robot and says so.
fn take_from_least_loaded_peer(peers: &mut Vec<LoadBucket>, process_id: i64, load: i64) -> bool {
    let Some(at) = peers
        .iter()
        .enumerate()
        .filter(|(_, b)| b.takes(process_id) && b.load < load)
        .min_by_key(|(_, b)| b.load)
        .map(|(at, _)| at)
    else {
        return false;
    };
    let bucket = &mut peers[at];
    bucket.robots -= 1;
    let fuller = LoadBucket {
        load: bucket.load + 1,
        robots: 1,
        ..bucket.clone()
    };
    if bucket.robots == 0 {
        peers.swap_remove(at);
    }
    if fuller.load < fuller.capacity {
        match peers.iter_mut().find(|b| {
            b.processes == fuller.processes
                && b.capacity == fuller.capacity
                && b.load == fuller.load
        }) {
            Some(same) => same.robots += 1,
            None => peers.push(fuller),
        }
    }
    true
}

#[cfg(test)]
mod tests;
