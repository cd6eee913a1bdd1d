//! The dispatch actors on their own (no HTTP): real actors, a real in-memory store, and a clock the
//! test moves by hand, so pulse timeouts and lease expiry happen exactly when the test says.

use anyhow::Result;
use orchestrator_actors::dispatch_config::DispatchConfig;
use orchestrator_actors::dispatcher::Dispatcher;
use orchestrator_actors::domain::{
    Clock, ItemStatus, LostItemPolicy, Platform, Robot, RobotStatus, now_millis,
};
use orchestrator_actors::lifecycle::{ItemState, RobotAction};
use orchestrator_actors::store::{NewItem, NewProcess, NewRobot, RobotPatch};
use orchestrator_actors::{Store, StoreConfig};
use orchestrator_tests::{eventually, throughout};

/// How long a test watches for something that must not happen once the clock moved (the
/// rigs sweep every 20 ms: fifteen sweeps).
const QUIET: Duration = Duration::from_millis(300);
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

struct Rig {
    store: Store,
    dispatcher: Dispatcher,
    time: Arc<AtomicI64>,
    robot: Robot,
    task_id: i64,
}

impl Rig {
    async fn new(
        items: usize,
        capacity: i64,
        pulse_timeout: Duration,
        lease_ttl: Duration,
    ) -> Result<Rig> {
        let store = Store::open(&StoreConfig::memory()).await?;
        let process = store
            .create_process(&NewProcess {
                title: "P".into(),
                description: String::new(),
                lease_ttl_ms: None,
                max_attempts: 3,
                on_lost: LostItemPolicy::Abandon,
            })
            .await?;
        let robot = store
            .create_robot(&NewRobot {
                name: "r".into(),
                platform: Platform::Python,
                capacity,
                processes: vec![],
                token_hash: "h".into(),
            })
            .await?;
        let patch = RobotPatch {
            status: Some(RobotStatus::Active),
            ..RobotPatch::default()
        };
        let robot = store.update_robot(robot.id, &patch).await?.expect("robot");
        let task_id = store
            .create_staged_task(1, &["a".to_string()], None, 0)
            .await?;
        let first = store.reserve_item_ids(items as i64).await?;
        let rows = (0..items)
            .map(|i| NewItem {
                line: i as i64 + 2,
                values: serde_json::Map::from_iter([("a".to_string(), serde_json::json!("x"))]),
            })
            .collect();
        store.insert_staged_items(task_id, first, rows).await?;
        store
            .commit_staged_task(
                task_id,
                process.id,
                items as i64,
                &[(first, first + items as i64 - 1)],
            )
            .await?;
        let time = Arc::new(AtomicI64::new(now_millis()));
        let reading = time.clone();
        let dispatcher = Dispatcher::start(
            store.clone(),
            DispatchConfig {
                node_id: "test".into(),
                http: "http://127.0.0.1:0".into(),
                dead_after: Duration::from_millis(100),
                pulse_timeout,
                lease_ttl,
                sweep_period: Duration::from_millis(20),
                backoff_base: Duration::from_millis(10),
                dispatch_delay: Duration::from_millis(1),
                ws_standby: 1,
                recount_period: Duration::from_secs(3_600),
                payload_limits: Default::default(),
                stale_upload_after: Duration::from_secs(600),
                clock: Clock::from_fn(move || reading.load(Ordering::SeqCst)),
                hints: Default::default(),
            },
        )
        .await?;
        Ok(Rig {
            store,
            dispatcher,
            time,
            robot,
            task_id,
        })
    }

    /// Sets the robot's status through dispatch, as the user API does.
    async fn set_status(&self, status: RobotStatus) -> Result<Robot> {
        let patch = RobotPatch {
            status: Some(status),
            ..RobotPatch::default()
        };
        let robot = self
            .dispatcher
            .update_robot(self.robot.id, &patch)
            .await?
            .expect("robot");
        Ok(robot)
    }

    fn advance(&self, by: Duration) {
        self.time.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    async fn held(&self, n: usize) -> Result<Vec<ItemState>> {
        eventually(Duration::from_secs(10), || async {
            let items = self.store.robot_items_in_flight(self.robot.id).await?;
            Ok((items.len() == n).then_some(items))
        })
        .await
    }

    async fn items(&self) -> Result<Vec<ItemState>> {
        let mut out = Vec::new();
        for item in self
            .store
            .list_items(
                self.task_id,
                &orchestrator_actors::store::ItemFilter {
                    status: None,
                    offset: 0,
                    limit: 1000,
                },
            )
            .await?
        {
            out.extend(self.store.item_state(item.id).await?);
        }
        Ok(out)
    }
}

#[tokio::test]
async fn a_robot_silent_past_the_pulse_timeout_is_ended_and_its_items_released() -> Result<()> {
    let rig = Rig::new(3, 2, Duration::from_secs(30), Duration::from_secs(300)).await?;
    rig.dispatcher.connect(&rig.robot).await?;
    rig.dispatcher.task_ready(rig.task_id);
    let held = rig.held(2).await?;
    assert!(
        held.iter().all(|i| i.status == ItemStatus::Assigned),
        "capacity 2 of 3 items"
    );
    let started = &held[0];
    rig.dispatcher
        .act(
            rig.robot.id,
            started.id,
            started.lease_id.as_deref(),
            &RobotAction::Start,
        )
        .await?;

    // 29 s of silence is still within the timeout: nothing happens.
    rig.advance(Duration::from_secs(29));
    throughout(QUIET, "the robot keeps its session and items", || async {
        Ok(rig.dispatcher.loads().await?.len() == 1
            && rig.store.robot_items_in_flight(rig.robot.id).await?.len() == 2)
    })
    .await?;

    rig.advance(Duration::from_secs(2));
    let robot = eventually(Duration::from_secs(10), || async {
        let robot = rig.store.robot(rig.robot.id).await?.expect("robot");
        Ok((robot.status == RobotStatus::Inactive).then_some(robot))
    })
    .await?;
    assert_eq!(robot.status, RobotStatus::Inactive);
    assert!(
        rig.dispatcher.loads().await?.is_empty(),
        "the session ended"
    );
    let items = rig.items().await?;
    let status_of = |id: i64| items.iter().find(|i| i.id == id).map(|i| i.status);
    assert_eq!(status_of(started.id), Some(ItemStatus::Abandoned));
    assert_eq!(status_of(held[1].id), Some(ItemStatus::Pending));
    assert_eq!(
        items.iter().find(|i| i.id == held[1].id).map(|i| i.attempt),
        Some(0),
        "not an attempt"
    );
    let task = rig.store.task(rig.task_id).await?.expect("task");
    assert_eq!(
        (
            task.counts.pending,
            task.counts.abandoned,
            task.counts.assigned
        ),
        (2, 1, 0)
    );
    Ok(())
}

/// The chaotic soak's drift ("robot load drifted from the store; corrected", always a REST
/// robot, `planned=2 stored=0`): a robot's request arrived as the sweep ended its silent
/// session. The request counted the robot's items in the store (2, not yet released), the
/// sweep released them, and the new session started with the count read before that: 2 in
/// flight that the store no longer held. The registry now reads the count again when it
/// released the robot's items after the count was read.
#[tokio::test]
async fn a_robot_back_as_its_items_are_released_starts_with_what_the_store_holds() -> Result<()> {
    let rig = Rig::new(3, 2, Duration::from_secs(30), Duration::from_secs(300)).await?;
    rig.dispatcher.connect(&rig.robot).await?;
    rig.dispatcher.task_ready(rig.task_id);
    rig.held(2).await?;
    // The robot's request after its silence counts its items before the sweep releases them.
    let counted_at = rig.time.load(Ordering::SeqCst) + 31_000;
    let counted = rig.store.robot_in_flight_count(rig.robot.id).await?;
    assert_eq!(counted, 2);
    rig.advance(Duration::from_secs(31));
    eventually(Duration::from_secs(10), || async {
        let empty = rig.dispatcher.loads().await?.is_empty();
        let held = rig.store.robot_in_flight_count(rig.robot.id).await?;
        Ok((empty && held == 0).then_some(()))
    })
    .await?;
    // Back INACTIVE: no dispatch round may lease it the released items while the test reads
    // its load (a round's reservation counts before the store holds the lease).
    let mut back = rig.robot.clone();
    back.status = RobotStatus::Inactive;
    rig.dispatcher
        .connect_counted(&back, counted, counted_at)
        .await?;
    let loads = rig.dispatcher.loads().await?;
    let load = loads
        .iter()
        .find(|l| l.robot_id == rig.robot.id)
        .map(|l| l.in_flight);
    assert_eq!(
        load,
        Some(rig.store.robot_in_flight_count(rig.robot.id).await?),
        "the new session counts what the store holds, not the count read before the release"
    );
    Ok(())
}

#[tokio::test]
async fn expired_leases_are_reissued_and_the_third_expiry_quarantines() -> Result<()> {
    let rig = Rig::new(1, 1, Duration::from_secs(3600), Duration::from_secs(10)).await?;
    rig.dispatcher.connect(&rig.robot).await?;
    rig.dispatcher.task_ready(rig.task_id);
    let mut leases = Vec::new();
    for expiry in 1..=2 {
        let item = rig.held(1).await?.remove(0);
        assert_eq!(item.lease_expiries, expiry - 1);
        leases.push(item.lease_id.clone());
        rig.advance(Duration::from_secs(11));
        // The robot keeps pulsing; only its lease ran out, and the item comes back with a new one.
        rig.dispatcher.connect(&rig.robot).await?;
        eventually(Duration::from_secs(10), || async {
            let now = rig.store.item_state(item.id).await?.expect("item");
            Ok((now.lease_expiries == expiry && now.status == ItemStatus::Assigned).then_some(()))
        })
        .await?;
    }
    let item = rig.held(1).await?.remove(0);
    assert!(
        !leases.contains(&item.lease_id),
        "every reissue has a new lease"
    );
    rig.advance(Duration::from_secs(11));
    rig.dispatcher.connect(&rig.robot).await?;
    let item = eventually(Duration::from_secs(10), || async {
        let now = rig.store.item_state(item.id).await?.expect("item");
        Ok((now.status == ItemStatus::Failed).then_some(now))
    })
    .await?;
    assert_eq!(item.fail_kind.as_deref(), Some("poison"));
    let task = rig.store.task(rig.task_id).await?.expect("task");
    assert_eq!(
        task.status,
        orchestrator_actors::domain::TaskStatus::Completed
    );
    Ok(())
}

/// A robot with instant work sends `started` and `completed` back to back: they meet in one batch
/// and are planned in the order sent, each on the state the one before left. A repeat of the
/// finishing request is harmless and anything after it is refused, as when sent one by one.
#[tokio::test]
async fn actions_on_one_item_in_one_batch_apply_in_the_order_sent() -> Result<()> {
    let rig = Rig::new(2, 2, Duration::from_secs(3600), Duration::from_secs(300)).await?;
    rig.dispatcher.connect(&rig.robot).await?;
    rig.dispatcher.task_ready(rig.task_id);
    let held = rig.held(2).await?;
    let (item, lease) = (held[0].id, held[0].lease_id.clone());
    let act = |action: RobotAction| {
        let dispatcher = rig.dispatcher.clone();
        let (robot, lease) = (rig.robot.id, lease.clone());
        async move { dispatcher.act(robot, item, lease.as_deref(), &action).await }
    };
    let complete = || RobotAction::Complete {
        observation: Some("done".into()),
        output: None,
    };
    let fail = RobotAction::Fail {
        kind: orchestrator_actors::lifecycle::FailKind::Application,
        message: "late".into(),
    };
    // Sent together, so the batcher's window holds all four.
    let (started, completed, repeated, failed) = tokio::join!(
        act(RobotAction::Start),
        act(complete()),
        act(complete()),
        act(fail)
    );
    assert_eq!(started?.status, ItemStatus::Started);
    let completed = completed?;
    assert_eq!(completed.status, ItemStatus::Completed);
    assert_eq!(completed.observation.as_deref(), Some("done"));
    assert_eq!(repeated?.status, ItemStatus::Completed);
    let refused = failed.expect_err("a failure after completion is refused");
    assert!(refused.to_string().contains("COMPLETED"), "{refused}");

    let stored = rig.store.item_state(item).await?.expect("item");
    assert_eq!(stored.status, ItemStatus::Completed);
    assert!(stored.started_at.is_some() && stored.ended_at.is_some());
    let task = rig.store.task(rig.task_id).await?.expect("task");
    assert_eq!(
        (
            task.counts.assigned,
            task.counts.started,
            task.counts.completed
        ),
        (1, 0, 1),
        "the counters moved from ASSIGNED to COMPLETED once"
    );
    let load = rig.dispatcher.loads().await?;
    assert_eq!(load[0].in_flight, 1, "the item left the robot's load once");
    Ok(())
}

/// A REST robot's claims are served from what dispatch delivered to its session: each lease is
/// handed out once, a long-poll claim wakes for the item leased after a completion, and an item
/// taken back while it waited in the session (the robot was drained) is never handed out.
#[tokio::test]
async fn claims_hand_out_delivered_leases_once_and_never_revoked_ones() -> Result<()> {
    let rig = Rig::new(5, 2, Duration::from_secs(3600), Duration::from_secs(300)).await?;
    let robot = &rig.robot;
    let ids = |items: &[orchestrator_actors::store::LeasedItem]| {
        let mut ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        ids.sort();
        ids
    };
    rig.dispatcher.connect(robot).await?;
    rig.dispatcher.task_ready(rig.task_id);
    let held = rig.held(2).await?;
    let first = rig.dispatcher.claim(robot, 10, Duration::ZERO).await?;
    assert_eq!(
        ids(&first),
        held.iter().map(|i| i.id).collect::<Vec<_>>(),
        "the claim hands out both leased items"
    );
    assert!(
        first.iter().all(|i| i.process_id.is_some()),
        "delivered items carry their process"
    );
    assert!(
        rig.dispatcher
            .claim(robot, 10, Duration::ZERO)
            .await?
            .is_empty(),
        "a lease is handed out once"
    );

    // A completion frees a slot; a claim already waiting gets the next item.
    let finish = |item: &orchestrator_actors::store::LeasedItem| {
        let (dispatcher, id, lease) = (rig.dispatcher.clone(), item.id, item.lease_id.clone());
        async move {
            dispatcher
                .act(robot.id, id, Some(&lease), &RobotAction::Start)
                .await?;
            let complete = RobotAction::Complete {
                observation: None,
                output: None,
            };
            dispatcher.act(robot.id, id, Some(&lease), &complete).await
        }
    };
    let waiting = {
        let (dispatcher, robot) = (rig.dispatcher.clone(), robot.clone());
        tokio::spawn(async move { dispatcher.claim(&robot, 10, Duration::from_secs(10)).await })
    };
    finish(&first[0]).await?;
    let next = waiting.await??;
    assert_eq!(next.len(), 1, "the waiting claim gets the one freed slot");
    assert!(!ids(&first).contains(&next[0].id));

    // Another completion: its replacement waits in the session, unclaimed, until a drain takes
    // it back. The next claim must not hand it out.
    finish(&first[1]).await?;
    eventually(Duration::from_secs(10), || async {
        let items = rig.store.robot_items_in_flight(robot.id).await?;
        Ok((items
            .iter()
            .filter(|i| i.status == ItemStatus::Assigned)
            .count()
            == 2)
            .then_some(()))
    })
    .await?;
    let drained = rig.set_status(RobotStatus::Inactive).await?;
    rig.held(0).await?;
    assert!(
        rig.dispatcher
            .claim(&drained, 10, Duration::from_millis(300))
            .await?
            .is_empty(),
        "a drained robot's revoked items are not handed out"
    );

    // Active again: fresh leases arrive and are handed out.
    let active = rig.set_status(RobotStatus::Active).await?;
    let again = rig
        .dispatcher
        .claim(&active, 10, Duration::from_secs(10))
        .await?;
    assert!(!again.is_empty(), "an active robot gets work again");
    let stored = rig.held(2).await?;
    for item in &again {
        let state = stored.iter().find(|s| s.id == item.id).expect("held");
        assert_eq!(state.lease_id.as_deref(), Some(item.lease_id.as_str()));
        assert_eq!(state.status, ItemStatus::Assigned);
    }
    Ok(())
}

/// The items of one `items` frame the session pushed, by id.
async fn pushed(
    out: &mut tokio::sync::mpsc::Receiver<orchestrator_actors::robot_session::ws::Outbound>,
) -> Result<Vec<i64>> {
    use orchestrator_actors::robot_session::ws::Outbound;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), out.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the connection closed"))?;
        let Outbound::Text(text) = frame else {
            continue;
        };
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        if frame["type"] == "items" {
            return Ok(frame["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["id"].as_i64())
                .collect());
        }
    }
}

#[tokio::test]
async fn a_standby_item_goes_back_before_its_lease_can_expire() -> Result<()> {
    use orchestrator_actors::robot_session::ws::WsLink;
    let rig = Rig::new(3, 1, Duration::from_secs(3600), Duration::from_secs(60)).await?;
    let (_frames, inbound) = tokio::sync::mpsc::channel(16);
    let (outbound, mut out) = tokio::sync::mpsc::channel(64);
    rig.dispatcher
        .attach_ws(&rig.robot, WsLink { inbound, outbound })
        .await?;
    rig.dispatcher.task_ready(rig.task_id);
    let shown = pushed(&mut out).await?;
    assert_eq!(shown.len(), 1, "capacity 1: one item pushed");
    let held = rig.held(2).await?;
    let standby = held
        .iter()
        .find(|i| i.id != shown[0])
        .cloned()
        .expect("a standby item");

    // Within the first half of its lease the standby stays put.
    rig.advance(Duration::from_secs(25));
    throughout(QUIET, "the standby keeps its lease", || async {
        let now = rig.store.item_state(standby.id).await?.expect("item");
        Ok(now.lease_id == standby.lease_id)
    })
    .await?;

    // Past half its lease it goes back (not an attempt, no expiry) and a fresh one is leased.
    rig.advance(Duration::from_secs(10));
    let fresh = eventually(Duration::from_secs(10), || async {
        let held = rig.store.robot_items_in_flight(rig.robot.id).await?;
        Ok(held
            .into_iter()
            .find(|i| i.id != shown[0] && i.lease_id != standby.lease_id))
    })
    .await?;
    assert_eq!(fresh.status, ItemStatus::Assigned);
    // Past the moment the first standby lease would have expired (the robot keeps renewing
    // the item it works on), nothing expired: no strike toward quarantine for work the robot
    // never saw.
    let working = held.iter().find(|i| i.id == shown[0]).expect("pushed item");
    rig.dispatcher
        .act(
            rig.robot.id,
            working.id,
            working.lease_id.as_deref(),
            &RobotAction::Renew,
        )
        .await?;
    rig.advance(Duration::from_secs(30));
    throughout(QUIET, "no lease expires", || async {
        Ok(rig.items().await?.iter().all(|i| i.lease_expiries == 0))
    })
    .await?;
    let items = rig.items().await?;
    assert!(items.iter().all(|i| i.lease_expiries == 0), "{items:?}");
    assert!(
        items.iter().all(|i| i.attempt <= 1),
        "hand-backs are not attempts: {items:?}"
    );
    assert_eq!(rig.held(2).await?.len(), 2, "one shown, one standby");
    Ok(())
}
