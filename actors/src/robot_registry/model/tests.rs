use super::*;

fn robot(capacity: i64, in_flight: i64, processes: Vec<i64>) -> RobotSlot {
    RobotSlot {
        capacity,
        in_flight,
        standby: 0,
        processes,
        active: true,
        last_served: 0,
        session: 1,
        changes: 0,
    }
}

fn demand(process_id: i64, priority: i64, pending: i64) -> TaskDemand {
    TaskDemand {
        process_id,
        priority,
        pending,
        served: 0,
    }
}

fn per_robot(grants: &[PlannedGrant]) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for g in grants {
        *out.entry(g.robot_id).or_default() += g.count;
    }
    out
}

#[test]
fn fills_the_least_loaded_robots_first_and_never_above_capacity() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(4, 3, vec![]));
    board.robots.insert(2, robot(4, 0, vec![]));
    board.robots.insert(3, robot(2, 1, vec![]));
    board.tasks.insert(10, demand(1, 0, 3));
    let grants = board.plan();
    // Robot 2 (empty) gets items until it is level with the others.
    assert_eq!(per_robot(&grants), BTreeMap::from([(2, 2), (3, 1)]));
    assert!(board.robots.values().all(|r| r.in_flight <= r.capacity));
    board.tasks.insert(10, demand(1, 0, 100));
    board.plan();
    assert_eq!(
        board
            .robots
            .values()
            .map(|r| r.in_flight)
            .collect::<Vec<_>>(),
        [4, 4, 2],
        "everyone full, nobody over"
    );
}

fn peer(processes: Vec<i64>, capacity: i64, load: i64, robots: i64) -> LoadBucket {
    LoadBucket {
        processes,
        capacity,
        load,
        robots,
    }
}

#[test]
fn a_scarce_item_is_left_to_a_less_loaded_robot_of_another_node() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(10, 3, vec![]));
    // One robot elsewhere holds nothing, another holds 2 (capacity 10 each).
    board.peers = vec![peer(vec![], 10, 0, 1), peer(vec![], 10, 2, 1)];
    board.tasks.insert(10, demand(1, 0, 5));
    let grants = board.plan();
    // Water-filling over the cluster: the robot at 0 elsewhere takes two (to 2), then both
    // robots there one each (to 3); the fifth item is a tie at 3, which stays here.
    assert_eq!(per_robot(&grants), BTreeMap::from([(1, 1)]));
    assert_eq!(board.left_to_peers, 4);
    // The items left are still this node's demand, for the next plan.
    assert_eq!(board.tasks[&10].pending, 4);
    // The plan does not keep the peers' counts: the next plan starts from the summaries.
    assert_eq!(
        board.peers,
        vec![peer(vec![], 10, 0, 1), peer(vec![], 10, 2, 1)]
    );
}

#[test]
fn items_left_to_peers_whose_robots_went_away_go_to_this_node_s_robots() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(10, 3, vec![]));
    board.peers = vec![peer(vec![], 10, 0, 2)];
    board.tasks.insert(10, demand(1, 0, 3));
    assert!(per_robot(&board.plan()).is_empty());
    assert_eq!(board.left_to_peers, 3);
    // The peer's robots left before taking them: its next summary is empty.
    board.peers.clear();
    let grants = board.plan();
    assert_eq!(per_robot(&grants), BTreeMap::from([(1, 3)]));
    assert_eq!(board.left_to_peers, 0);
    assert_eq!(board.tasks[&10].pending, 0);
}

#[test]
fn peers_that_cannot_take_the_process_or_are_fuller_change_nothing() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(10, 1, vec![]));
    // Idle but for another process; as loaded as this node's robot; full.
    board.peers = vec![
        peer(vec![7], 10, 0, 5),
        peer(vec![], 10, 1, 5),
        peer(vec![], 4, 4, 3),
    ];
    board.tasks.insert(10, demand(1, 0, 1));
    let grants = board.plan();
    assert_eq!(per_robot(&grants), BTreeMap::from([(1, 1)]));
    assert_eq!(board.left_to_peers, 0);
}

#[test]
fn a_task_larger_than_the_cluster_s_room_fills_this_node_s_robots() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(10, 5, vec![]));
    board.robots.insert(2, robot(10, 9, vec![]));
    board.peers = vec![peer(vec![], 10, 0, 100)];
    // 1,000 free slots elsewhere, 6 here: 1,006 items or more are not scarce.
    board.tasks.insert(10, demand(1, 0, 1_006));
    let grants = board.plan();
    assert_eq!(per_robot(&grants), BTreeMap::from([(1, 5), (2, 1)]));
    assert_eq!(board.left_to_peers, 0);
    // One item fewer and they are: the idle robots elsewhere come first.
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(10, 5, vec![]));
    board.peers = vec![peer(vec![], 10, 0, 100)];
    board.tasks.insert(10, demand(1, 0, 104));
    let grants = board.plan();
    assert!(per_robot(&grants).is_empty(), "{grants:?}");
    assert_eq!(board.left_to_peers, 104);
}

#[test]
fn the_summary_groups_robots_with_room_alike() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(10, 3, vec![2, 1]));
    board.robots.insert(2, robot(10, 3, vec![1, 2]));
    board.robots.insert(3, robot(10, 10, vec![]));
    board.robots.insert(4, robot(5, 0, vec![]));
    let mut paused = robot(5, 0, vec![]);
    paused.active = false;
    board.robots.insert(5, paused);
    assert_eq!(
        board.summary(),
        vec![peer(vec![], 5, 0, 1), peer(vec![1, 2], 10, 3, 2)]
    );
}

#[test]
fn ties_go_to_the_robot_idle_longest() {
    let mut board = LoadBoard::default();
    let mut a = robot(1, 0, vec![]);
    a.last_served = 9;
    let mut b = robot(1, 0, vec![]);
    b.last_served = 2;
    board.robots.insert(1, a);
    board.robots.insert(2, b);
    board.tasks.insert(10, demand(1, 0, 1));
    assert_eq!(per_robot(&board.plan()), BTreeMap::from([(2, 1)]));
}

#[test]
fn respects_eligibility_and_activity() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(5, 0, vec![7]));
    let mut inactive = robot(5, 0, vec![]);
    inactive.active = false;
    board.robots.insert(2, inactive);
    board.robots.insert(3, robot(5, 0, vec![]));
    board.tasks.insert(10, demand(8, 0, 10));
    assert_eq!(per_robot(&board.plan()), BTreeMap::from([(3, 5)]));
}

#[test]
fn equal_priority_tasks_share_and_higher_priority_goes_first() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(10, 0, vec![]));
    board.tasks.insert(10, demand(1, 0, 1_000));
    board.tasks.insert(11, demand(1, 0, 1_000));
    let grants = board.plan();
    let by_task: Vec<i64> = grants.iter().map(|g| g.count).collect();
    assert_eq!(by_task, [5, 5], "a huge task does not starve another");

    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(3, 0, vec![]));
    board.tasks.insert(10, demand(1, 0, 10));
    board.tasks.insert(11, demand(1, 5, 10));
    let grants = board.plan();
    assert_eq!(
        grants,
        [PlannedGrant {
            task_id: 11,
            robot_id: 1,
            count: 3
        }]
    );
}

/// Two equal-priority tasks, one served for a long time before the other arrives: from
/// then on each gets between 35 % and 65 % of every window of grants (the newcomer took
/// every slot until it had been served as much as the older task).
#[test]
fn a_task_that_arrives_late_shares_from_its_first_plan() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(10, 0, vec![]));
    board.demand(10, 1, 0, 100_000);
    let settle_all = |board: &mut LoadBoard, grants: &[PlannedGrant]| {
        for g in grants {
            board.left(g.robot_id, g.count);
        }
    };
    for _ in 0..500 {
        let grants = board.plan();
        settle_all(&mut board, &grants);
        board.demand(10, 1, 0, 100_000);
    }
    board.demand(11, 1, 0, 100_000);
    for _ in 0..50 {
        let mut per_task: BTreeMap<i64, i64> = BTreeMap::new();
        for _ in 0..10 {
            let grants = board.plan();
            for g in &grants {
                *per_task.entry(g.task_id).or_default() += g.count;
            }
            settle_all(&mut board, &grants);
            board.demand(10, 1, 0, 100_000);
            board.demand(11, 1, 0, 100_000);
        }
        let total: i64 = per_task.values().sum();
        let older = per_task.get(&10).copied().unwrap_or(0) * 100 / total;
        assert!(
            (35..=65).contains(&older),
            "the older task got {older} % of a window: {per_task:?}"
        );
    }
}

/// Plans a round and reserves its grants as one Lease to `actor`, as the registry does.
fn round(board: &mut LoadBoard, actor: u64) -> Option<(u64, Vec<ReservedSlots>)> {
    let plan = board.plan();
    let task_id = plan.first()?.task_id;
    let slots: Vec<ReservedSlots> = plan
        .iter()
        .map(|g| ReservedSlots {
            robot_id: g.robot_id,
            session: board.robots[&g.robot_id].session,
            count: g.count,
        })
        .collect();
    Some((board.reserve(task_id, actor, slots.clone()), slots))
}

fn unused(robot_id: i64, count: i64) -> ReservedSlots {
    ReservedSlots {
        robot_id,
        session: 1,
        count,
    }
}

#[test]
fn settle_returns_unused_slots_and_keeps_the_task_s_fair_share_record() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(4, 0, vec![]));
    board.demand(10, 1, 0, 4);
    let (lease, _) = round(&mut board, 7).expect("a grant");
    assert_eq!(board.robots[&1].in_flight, 4);
    board.settle(10, &[lease], &[unused(1, 3)], 0);
    assert_eq!(board.robots[&1].in_flight, 1);
    assert_eq!(board.tasks[&10].pending, 0);
    assert_eq!(board.tasks[&10].served, 4, "served survives an empty queue");
    assert!(board.leases.is_empty());
}

/// The drift of issue 18: a second round planned for a task whose first Lease is not
/// settled yet, then the actor stops with the second Lease still queued. Every slot comes
/// back exactly once.
#[test]
fn overlapping_leases_settle_exactly_what_each_reserved() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(3, 0, vec![]));
    board.robots.insert(2, robot(3, 0, vec![]));
    board.demand(10, 1, 0, 4);
    let (first, _) = round(&mut board, 7).expect("first round");
    assert_eq!(board.reserved_for(10), 4);
    // The task says it still has 4 ready (it has not handled the first Lease yet): only
    // what the first Lease does not already take is plannable.
    board.demand(10, 1, 0, 4);
    assert_eq!(board.tasks[&10].pending, 0, "4 ready, 4 already reserved");
    board.demand(10, 1, 0, 6);
    let (second, slots) = round(&mut board, 7).expect("second round");
    assert_eq!(slots.iter().map(|s| s.count).sum::<i64>(), 2);
    let total = |b: &LoadBoard| b.robots.values().map(|r| r.in_flight).sum::<i64>();
    assert_eq!(total(&board), 6);
    // The first Lease got 3 of its 4 items; the actor then stops with the second queued.
    board.settle(10, &[first], &[unused(1, 1)], 2);
    assert_eq!(total(&board), 5);
    assert_eq!(
        board.tasks[&10].pending, 0,
        "the queued Lease takes the 2 left"
    );
    assert_eq!(
        board.actor_gone(7),
        2,
        "the unhandled Lease comes back whole"
    );
    assert_eq!(total(&board), 3, "exactly the items the store holds");
    assert!(board.leases.is_empty() && board.actor_gone(7) == 0);
    let _ = second;
}

#[test]
fn a_reservation_of_an_earlier_session_is_not_taken_off_a_new_one() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(2, 0, vec![]));
    board.demand(10, 1, 0, 2);
    let (lease, slots) = round(&mut board, 7).expect("a grant");
    // The robot reconnects: a new session, its count read from the store (0).
    let mut again = robot(2, 0, vec![]);
    again.session = 2;
    board.robots.insert(1, again);
    board.settle(10, &[lease], &slots, 0);
    assert_eq!(board.robots[&1].in_flight, 0);
    board.robots.get_mut(&1).expect("robot").in_flight = 1;
    board.unreserve(&slots);
    assert_eq!(
        board.robots[&1].in_flight, 1,
        "old-session slots never count"
    );
}

#[test]
fn the_recount_corrects_only_robots_at_rest() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, robot(5, 3, vec![]));
    board.robots.insert(2, robot(5, 2, vec![]));
    board.robots.insert(3, robot(5, 1, vec![]));
    let stored = BTreeMap::from([(2, 2), (3, 4)]);
    assert!(
        board.recount(&stored).is_empty(),
        "the first look only notes"
    );
    // Robot 1 completes an item meanwhile (its message was on its way): not at rest.
    board.left(1, 1);
    let corrections = board.recount(&stored);
    assert_eq!(
        corrections,
        [Correction {
            robot_id: 3,
            planned: 1,
            stored: 4
        }]
    );
    assert_eq!(board.robots[&3].in_flight, 4);
    let corrections = board.recount(&stored);
    assert_eq!(
        corrections,
        [Correction {
            robot_id: 1,
            planned: 2,
            stored: 0
        }],
        "robot 1 is at rest now, with two slots nobody holds"
    );
    // A robot with a reservation in flight is left alone.
    board.demand(10, 1, 0, 1);
    round(&mut board, 9).expect("a grant");
    let planned = board.robots.clone();
    board.recount(&stored);
    board.recount(&stored);
    assert_eq!(
        board
            .robots
            .values()
            .map(|r| r.in_flight)
            .collect::<Vec<_>>(),
        planned.values().map(|r| r.in_flight).collect::<Vec<_>>()
    );
}

fn standby(capacity: i64, in_flight: i64, standby: i64) -> RobotSlot {
    RobotSlot {
        standby,
        ..robot(capacity, in_flight, vec![])
    }
}

#[test]
fn standby_slots_fill_only_after_every_eligible_robot_is_full() {
    let mut board = LoadBoard::default();
    // Robot 1 streams with one standby slot; robot 2 polls and has room for three.
    board.robots.insert(1, standby(1, 1, 1));
    board.robots.insert(2, robot(4, 1, vec![]));
    board.tasks.insert(10, demand(1, 0, 3));
    assert_eq!(
        per_robot(&board.plan()),
        BTreeMap::from([(2, 3)]),
        "no standby while robot 2 has room"
    );
    board.tasks.insert(10, demand(1, 0, 5));
    assert_eq!(
        per_robot(&board.plan()),
        BTreeMap::from([(1, 1)]),
        "everyone full: robot 1 takes its one standby item, and no more"
    );
    assert_eq!(board.robots[&1].in_flight, 2);
    assert_eq!(board.robots[&1].standby_held(), 1);
    assert!(board.plan().is_empty());
}

#[test]
fn standby_goes_to_the_robot_holding_least_and_never_to_a_paused_one() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, standby(2, 2, 2));
    board.robots.insert(2, standby(2, 3, 2));
    board.robots.insert(3, standby(0, 0, 2));
    board.tasks.insert(10, demand(1, 0, 1));
    assert_eq!(per_robot(&board.plan()), BTreeMap::from([(1, 1)]));
    board.tasks.insert(10, demand(1, 0, 5));
    assert_eq!(
        per_robot(&board.plan()),
        BTreeMap::from([(1, 1), (2, 1)]),
        "level, then up to each one's standby"
    );
    assert_eq!(
        board.robots[&3].in_flight, 0,
        "a window of 0 pauses standby too"
    );
}

#[test]
fn idle_robots_name_the_processes_whose_standby_should_come_back() {
    let mut board = LoadBoard::default();
    board.robots.insert(1, standby(1, 2, 1));
    assert_eq!(board.idle_processes(), None, "nobody idle");
    board.robots.insert(2, robot(1, 0, vec![7, 3]));
    board.robots.insert(3, robot(1, 0, vec![3]));
    assert_eq!(board.idle_processes(), Some(Some(vec![3, 7])));
    board.robots.insert(4, robot(1, 0, vec![]));
    assert_eq!(board.idle_processes(), Some(None));
    board.robots.get_mut(&1).expect("robot 1").in_flight = 1;
    assert_eq!(board.idle_processes(), None, "nobody holds standby");
}
