//! Cluster membership in the store: `node:<id>` rows the nodes renew every sweep, and
//! `singleton:<job>` rows that say which node runs a job meant for one node at a time.
//!
//! Every write is a compare-and-set: a node renews its row only while the row still carries its
//! incarnation and is not marked dead, so a node that was declared dead learns it on its next
//! heartbeat and must rejoin as a new incarnation (fencing, `cluster.rs`).

use super::Store;
use crate::domain::Millis;
use crate::error::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const NODE_FIELDS: &str = "record::id(id) AS id, http, cluster, incarnation, started_at, \
                           heartbeat_at, dead, robots, leased_per_minute, loads";

/// A node's membership row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: String,
    /// Where the node serves HTTP, as it advertises it.
    pub http: String,
    /// Where the node takes hints from the other nodes (`host:port`), if it does.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Starts at 1 and grows each time the node (re)joins under the same id.
    pub incarnation: i64,
    pub started_at: Millis,
    pub heartbeat_at: Millis,
    /// Declared dead by the housekeeping node, or left on shutdown.
    pub dead: bool,
    /// Robots with a session on the node at its last heartbeat.
    pub robots: i64,
    /// Items the node leased in the minute before its last heartbeat.
    pub leased_per_minute: i64,
    /// Its robots with room for work at its last heartbeat: a JSON list of
    /// [`crate::cluster_view::LoadBucket`]s (none from a node of an earlier version).
    #[serde(default)]
    pub loads: Option<String>,
}

impl NodeRow {
    /// The node's load summary at its last heartbeat.
    pub fn load_buckets(&self) -> Vec<crate::cluster_view::LoadBucket> {
        self.loads
            .as_deref()
            .map(crate::cluster_view::parse_loads)
            .unwrap_or_default()
    }
}

/// What a node reports with each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBeat {
    pub now: Millis,
    pub robots: i64,
    pub leased_per_minute: i64,
    /// Its load summary, as JSON.
    pub loads: String,
}

/// What one node tells the others through the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A robot's settings changed (status, capacity, processes, name).
    RobotChanged,
    /// A robot was deleted or its token rotated: its sessions end.
    RobotRevoked,
    /// Another node released some of the robot's items (a cancel, an expired lease): the node
    /// holding its session stops counting them and takes them back from the robot.
    ItemsReleased,
}

/// An event row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub id: String,
    pub at: Millis,
    /// The node that wrote it.
    pub node: String,
    pub kind: EventKind,
    pub robot: i64,
    /// The items, for [`EventKind::ItemsReleased`].
    #[serde(default)]
    pub items: Vec<i64>,
}

/// Who runs a singleton job, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SingletonRow {
    pub job: String,
    pub holder: String,
    pub incarnation: i64,
    pub expires_at: Millis,
}

/// A node's robots silent since `$cutoff` (see [`Store::silent_robots_of`]).
const SILENT_ROBOTS_OF: &str =
    "SELECT VALUE record::id(id) FROM robot WHERE node = $node AND last_pulse_at < $cutoff;";

impl Store {
    /// Writes this node's row as a new incarnation (alive, heartbeat `now`); returns the
    /// incarnation.
    pub async fn join_cluster(
        &self,
        node_id: &str,
        http: &str,
        cluster: Option<&str>,
        now: Millis,
    ) -> Result<i64, StoreError> {
        let sql = "UPSERT type::record('node', $id) SET http = $http, cluster = $cluster ?? NONE, \
                   incarnation = (incarnation ?? 0) + 1, started_at = $now, heartbeat_at = $now, \
                   dead = false, robots = 0, leased_per_minute = 0 RETURN VALUE incarnation;";
        let vars = json!({ "id": node_id, "http": http, "cluster": cluster, "now": now });
        self.retry_conflicts(|| async {
            self.row::<i64>(sql, vars.clone(), 0)
                .await?
                .ok_or_else(|| StoreError::Malformed(format!("node {node_id} was not written")))
        })
        .await
    }

    /// Renews this node's row if it still belongs to `incarnation` and is not dead; `false`
    /// means the node was declared dead (or replaced) and must fence itself.
    pub async fn node_heartbeat(
        &self,
        node_id: &str,
        incarnation: i64,
        beat: NodeBeat,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE type::record('node', $id) SET heartbeat_at = $now, robots = $robots, \
                   leased_per_minute = $leased, loads = $loads \
                   WHERE incarnation = $incarnation AND dead = false RETURN VALUE 1;";
        let vars = json!({
            "id": node_id,
            "incarnation": incarnation,
            "now": beat.now,
            "robots": beat.robots,
            "leased": beat.leased_per_minute,
            "loads": beat.loads,
        });
        self.retry_conflicts(|| async {
            Ok(!self.rows::<Value>(sql, vars.clone(), 0).await?.is_empty())
        })
        .await
    }

    /// Marks dead every other node whose heartbeat is older than `cutoff`; returns their ids.
    pub async fn declare_dead_nodes(
        &self,
        me: &str,
        cutoff: Millis,
    ) -> Result<Vec<String>, StoreError> {
        let sql = "UPDATE node SET dead = true WHERE dead = false AND heartbeat_at < $cutoff \
                   AND record::id(id) != $me RETURN VALUE record::id(id);";
        let vars = json!({ "me": me, "cutoff": cutoff });
        self.retry_conflicts(|| self.rows::<String>(sql, vars.clone(), 0))
            .await
    }

    /// Every node row, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let sql = format!("SELECT {NODE_FIELDS} FROM node ORDER BY id;");
        self.rows(&sql, Value::Null, 0).await
    }

    /// Marks this node's row dead on shutdown and frees the singleton jobs it held, so the
    /// others need not wait for its heartbeat to age; the row stays for the dashboard.
    pub async fn leave_cluster(&self, node_id: &str, incarnation: i64) -> Result<(), StoreError> {
        let sql = "UPDATE type::record('node', $id) SET dead = true, robots = 0, \
                   leased_per_minute = 0 WHERE incarnation = $incarnation RETURN NONE; \
                   DELETE singleton WHERE holder = $id AND incarnation = $incarnation;";
        let vars = json!({ "id": node_id, "incarnation": incarnation });
        self.retry_conflicts(|| self.exec(sql, vars.clone())).await
    }

    /// Takes or renews singleton `job` for this node incarnation until `now + ttl`, if it is
    /// free, expired or already this node's (an earlier incarnation of this node id is dead: it
    /// restarted, or it fenced itself); returns whether this node holds it.
    pub async fn hold_singleton(
        &self,
        job: &str,
        node_id: &str,
        incarnation: i64,
        now: Millis,
        ttl: Millis,
    ) -> Result<bool, StoreError> {
        let sql = "UPSERT type::record('singleton', $job) SET holder = $node, \
                   incarnation = $incarnation, expires_at = $now + $ttl \
                   WHERE holder = NONE OR expires_at < $now OR holder = $node RETURN VALUE 1;";
        let vars = json!({
            "job": job,
            "node": node_id,
            "incarnation": incarnation,
            "now": now,
            "ttl": ttl,
        });
        // A lost race is a "no" this time; the next sweep asks again.
        match self.rows::<Value>(sql, vars, 0).await {
            Ok(rows) => Ok(!rows.is_empty()),
            Err(err) if err.is_retryable() => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Records an event for the other nodes.
    pub async fn publish_event(
        &self,
        kind: EventKind,
        robot: i64,
        items: &[i64],
        node: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        let vars = json!({ "kind": kind, "robot": robot, "items": items, "node": node, "at": at });
        self.retry_conflicts(|| {
            self.exec(
                "CREATE event SET at = $at, node = $node, kind = $kind, robot = $robot, \
                 items = $items RETURN NONE;",
                vars.clone(),
            )
        })
        .await
    }

    /// One [`EventKind::ItemsReleased`] row per robot, in one write.
    pub async fn publish_items_released(
        &self,
        node: &str,
        released: &[(i64, Vec<i64>)],
        at: Millis,
    ) -> Result<(), StoreError> {
        if released.is_empty() {
            return Ok(());
        }
        let rows: Vec<Value> = released
            .iter()
            .map(|(robot, items)| {
                json!({ "at": at, "node": node, "kind": EventKind::ItemsReleased,
                        "robot": robot, "items": items })
            })
            .collect();
        let vars = json!({ "rows": rows });
        self.retry_conflicts(|| self.exec("INSERT INTO event $rows RETURN NONE;", vars.clone()))
            .await
    }

    /// Events written at `since` or later, oldest first.
    pub async fn events_since(&self, since: Millis) -> Result<Vec<EventRow>, StoreError> {
        self.rows(
            "SELECT <string> record::id(id) AS id, at, node, kind, robot, items ?? [] AS items \
             FROM event \
             WHERE at >= $since ORDER BY at LIMIT 10000;",
            json!({ "since": since }),
            0,
        )
        .await
    }

    /// Removes events older than `before`.
    pub async fn prune_events(&self, before: Millis) -> Result<(), StoreError> {
        self.exec(
            "DELETE event WHERE at < $before RETURN NONE;",
            json!({ "before": before }),
        )
        .await
    }

    /// Forgets what this node cached about robot `id`'s token (another node changed it).
    pub fn forget_robot_token(&self, id: i64) {
        self.tokens.forget_robot(id);
    }

    /// Every singleton row.
    pub async fn singletons(&self) -> Result<Vec<SingletonRow>, StoreError> {
        self.rows(
            "SELECT record::id(id) AS job, holder, incarnation, expires_at FROM singleton \
             ORDER BY job;",
            Value::Null,
            0,
        )
        .await
    }

    /// Robots held by a node not in `alive` whose last pulse is older than `cutoff`: their node
    /// died with their sessions. Returns `(robot, node)`. A node holds robots only after it
    /// joined, so every holder has a membership row: the nodes not alive are read from those
    /// rows, and each one's silent robots through the `robot_node_pulse` index (no scan of the
    /// robot table, which the housekeeping node ran every sweep).
    pub async fn orphaned_robots(
        &self,
        alive: &[String],
        cutoff: Millis,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let gone: Vec<String> = self
            .rows(
                "SELECT VALUE record::id(id) FROM node WHERE record::id(id) NOTINSIDE $alive;",
                json!({ "alive": alive }),
                0,
            )
            .await?;
        let mut orphaned = Vec::new();
        for node in gone {
            for robot in self.silent_robots_of(&node, cutoff).await? {
                orphaned.push((robot, node.clone()));
            }
        }
        Ok(orphaned)
    }

    /// Robots node `node` holds in the store that have been silent since `cutoff`: with no
    /// session on that node (it restarted under the same id, or the session ended without a
    /// release), nobody else would mark them lost. A range over the `robot_node_pulse` index
    /// (a robot holder always has a pulse: both are written together), so it reads only the
    /// silent ones, not every robot of the node each sweep.
    pub async fn silent_robots_of(
        &self,
        node: &str,
        cutoff: Millis,
    ) -> Result<Vec<i64>, StoreError> {
        self.rows(
            SILENT_ROBOTS_OF,
            json!({ "node": node, "cutoff": cutoff }),
            0,
        )
        .await
    }

    /// Marks robot `id` lost (INACTIVE, held by no node) if node `node` still holds it and it
    /// has been silent since `cutoff`; `false` if it pulsed since or another node holds it
    /// now (then its items are not to be released).
    pub async fn mark_robot_lost(
        &self,
        id: i64,
        node: &str,
        cutoff: Millis,
    ) -> Result<bool, StoreError> {
        Ok(self.mark_robots_lost(&[id], node, cutoff).await? == [id])
    }

    /// [`Store::mark_robot_lost`] for many robots at once (one write per 500); returns the ids
    /// marked.
    pub async fn mark_robots_lost(
        &self,
        ids: &[i64],
        node: &str,
        cutoff: Millis,
    ) -> Result<Vec<i64>, StoreError> {
        let sql = "UPDATE $ids.map(|$i| type::record('robot', $i)) \
                   SET status = 'INACTIVE', node = NONE \
                   WHERE (node = $node OR node = NONE) AND (last_pulse_at ?? 0) < $cutoff \
                   RETURN VALUE record::id(id);";
        let mut lost = Vec::new();
        for batch in ids.chunks(500) {
            let vars = json!({ "ids": batch, "node": node, "cutoff": cutoff });
            let marked: Vec<i64> = self
                .retry_conflicts(|| async { self.rows(sql, vars.clone(), 0).await })
                .await?;
            for id in &marked {
                self.tokens.forget_robot(*id);
            }
            lost.extend(marked);
        }
        Ok(lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    async fn store() -> Store {
        Store::open(&StoreConfig::memory()).await.expect("store")
    }

    #[tokio::test]
    async fn a_node_declared_dead_cannot_renew_until_it_rejoins() -> Result<(), StoreError> {
        let store = store().await;
        let a = store
            .join_cluster("a", "http://a", Some("a:7100"), 1_000)
            .await?;
        let b = store.join_cluster("b", "http://b", None, 1_000).await?;
        assert_eq!((a, b), (1, 1));
        let beat = |now| NodeBeat {
            now,
            robots: 2,
            leased_per_minute: 7,
            loads: r#"[{"processes":[],"capacity":5,"load":1,"robots":2}]"#.into(),
        };
        assert!(store.node_heartbeat("a", a, beat(2_000)).await?);
        // b is silent; a (not itself) declares it dead at cutoff 1,500.
        assert_eq!(store.declare_dead_nodes("a", 1_500).await?, vec!["b"]);
        assert!(!store.node_heartbeat("b", b, beat(2_100)).await?);
        let b2 = store.join_cluster("b", "http://b", None, 2_200).await?;
        assert_eq!(b2, 2);
        assert!(
            !store.node_heartbeat("b", b, beat(2_300)).await?,
            "old incarnation"
        );
        assert!(store.node_heartbeat("b", b2, beat(2_300)).await?);
        let rows = store.nodes().await?;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].cluster.as_deref(), Some("a:7100"));
        assert_eq!(rows[1].cluster, None);
        assert_eq!(rows[0].robots, 2);
        assert_eq!(rows[0].leased_per_minute, 7);
        assert_eq!(rows[0].load_buckets()[0].free(), 8);
        assert!(!rows[1].dead);
        store.leave_cluster("a", a).await?;
        assert!(store.nodes().await?[0].dead);
        Ok(())
    }

    #[tokio::test]
    async fn events_are_read_back_from_a_time_on_and_pruned() -> Result<(), StoreError> {
        let store = store().await;
        store
            .publish_event(EventKind::RobotChanged, 7, &[], "a", 1_000)
            .await?;
        store
            .publish_event(EventKind::ItemsReleased, 8, &[3, 4], "b", 2_000)
            .await?;
        let all = store.events_since(0).await?;
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].kind, all[0].robot, all[0].node.as_str()),
            (EventKind::RobotChanged, 7, "a")
        );
        assert_ne!(all[0].id, all[1].id);
        let later = store.events_since(1_500).await?;
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].kind, EventKind::ItemsReleased);
        assert_eq!(later[0].items, vec![3, 4]);
        assert!(all[0].items.is_empty());
        store.prune_events(1_500).await?;
        assert_eq!(store.events_since(0).await?, later);
        Ok(())
    }

    #[tokio::test]
    async fn a_singleton_moves_only_once_its_holder_lets_it_expire() -> Result<(), StoreError> {
        let store = store().await;
        assert!(store.hold_singleton("job", "a", 1, 1_000, 500).await?);
        assert!(!store.hold_singleton("job", "b", 1, 1_200, 500).await?);
        assert!(
            store.hold_singleton("job", "a", 1, 1_400, 500).await?,
            "renewed"
        );
        assert!(!store.hold_singleton("job", "b", 1, 1_800, 500).await?);
        assert!(
            store.hold_singleton("job", "b", 1, 1_901, 500).await?,
            "expired"
        );
        let rows = store.singletons().await?;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].holder.as_str(), rows[0].expires_at), ("b", 2_401));
        // b restarted as a new incarnation: it takes its own role back at once.
        assert!(store.hold_singleton("job", "b", 2, 2_000, 500).await?);
        store.leave_cluster("b", 2).await?;
        assert!(
            store.singletons().await?.is_empty(),
            "left: the role is free"
        );
        Ok(())
    }

    #[tokio::test]
    async fn only_robots_of_dead_nodes_silent_long_enough_are_orphans() -> Result<(), StoreError> {
        let store = store().await;
        store.join_cluster("a", "http://a", None, 1_000).await?;
        store.join_cluster("b", "http://b", None, 1_000).await?;
        let mut ids = Vec::new();
        for name in ["r1", "r2", "r3"] {
            let robot = store
                .create_robot(&crate::store::NewRobot {
                    name: name.into(),
                    platform: crate::domain::Platform::Python,
                    token_hash: format!("hash-{name}"),
                    capacity: 1,
                    processes: Vec::new(),
                })
                .await?;
            ids.push(robot.id);
        }
        store.record_pulses(&[(ids[0], 1_000)], "a").await?;
        store.record_pulses(&[(ids[1], 1_000)], "b").await?;
        store.record_pulses(&[(ids[2], 5_000)], "b").await?;
        let orphans = store.orphaned_robots(&["a".into()], 2_000).await?;
        assert_eq!(orphans, vec![(ids[1], "b".to_string())]);
        // a cannot mark b's robot lost; b can, once.
        assert!(!store.mark_robot_lost(ids[1], "a", 2_000).await?);
        assert!(store.mark_robot_lost(ids[1], "b", 2_000).await?);
        // a robot that pulsed since is not lost, whoever asks
        assert!(!store.mark_robot_lost(ids[2], "b", 2_000).await?);
        assert!(
            store
                .orphaned_robots(&["a".into()], 2_000)
                .await?
                .is_empty()
        );
        Ok(())
    }

    /// Every node looks for its silent robots each sweep, and the housekeeping node for those of
    /// dead nodes: the lookup reads only the silent ones, through the compound index, however
    /// many robots the node holds.
    #[tokio::test]
    async fn a_nodes_silent_robots_are_found_without_reading_the_others() -> Result<(), StoreError>
    {
        let store = store().await;
        store.join_cluster("a", "http://a", None, 1_000).await?;
        let mut pulses = Vec::new();
        for i in 0..200 {
            let robot = store
                .create_robot(&crate::store::NewRobot {
                    name: format!("r{i}"),
                    platform: crate::domain::Platform::Python,
                    token_hash: format!("hash-{i}"),
                    capacity: 1,
                    processes: Vec::new(),
                })
                .await?;
            pulses.push((robot.id, 1_000 + i));
        }
        store.record_pulses(&pulses, "a").await?;
        let mut silent = store.silent_robots_of("a", 1_005).await?;
        silent.sort_unstable();
        let first: Vec<i64> = pulses[..5].iter().map(|(id, _)| *id).collect();
        assert_eq!(silent, first);
        let plan = store
            .query_all(
                &SILENT_ROBOTS_OF.replace(';', " EXPLAIN FULL;"),
                json!({ "node": "a", "cutoff": 1_005 }),
            )
            .await?;
        let plan = plan[0].to_string();
        assert!(plan.contains("robot_node_pulse"), "uses the index: {plan}");
        assert!(
            plan.contains(r#""output_rows":5"#),
            "reads 5 robots: {plan}"
        );
        assert!(
            !plan.contains("robot_node\""),
            "not the single-field index: {plan}"
        );
        // Node a is dead to a housekeeper that sees only b: the same five are orphans.
        let orphans = store.orphaned_robots(&["b".into()], 1_005).await?;
        assert_eq!(orphans.len(), 5);
        // Marked lost together: only those a still holds and that are silent; then a holds
        // them no more and no sweep finds them again.
        let all: Vec<i64> = pulses.iter().map(|(id, _)| *id).collect();
        assert!(store.mark_robots_lost(&all, "b", 1_005).await?.is_empty());
        let mut lost = store.mark_robots_lost(&all, "a", 1_005).await?;
        lost.sort_unstable();
        assert_eq!(lost, first);
        assert!(store.silent_robots_of("a", 1_005).await?.is_empty());
        assert!(
            store
                .orphaned_robots(&["b".into()], 1_005)
                .await?
                .is_empty()
        );
        Ok(())
    }
}
