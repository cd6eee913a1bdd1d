use super::*;

const POLICY: Policy = Policy {
    lease_ttl_ms: 60_000,
    max_attempts: 3,
    on_lost: LostItemPolicy::Abandon,
    backoff_base_ms: 1_000,
};

fn held(status: ItemStatus, robot: i64, lease: &str) -> ItemState {
    ItemState {
        id: 10,
        task_id: 1,
        status,
        robot_id: Some(robot),
        attempt: 1,
        lease_id: Some(lease.into()),
        lease_expires_at: Some(1_000),
        lease_expiries: 0,
        observation: None,
        report_apart: false,
        output: None,
        fail_kind: None,
        not_before: None,
        started_at: None,
        ended_at: None,
    }
}

fn write(plan: Result<Plan, TransitionError>) -> ItemState {
    match plan {
        Ok(Plan::Write(state)) => *state,
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn start_then_complete_with_the_current_lease() {
    let item = held(ItemStatus::Assigned, 7, "7-a");
    let started = write(plan_robot_action(
        &item,
        7,
        Some("7-a"),
        &RobotAction::Start,
        &POLICY,
        500,
    ));
    assert_eq!(started.status, ItemStatus::Started);
    assert_eq!(started.lease_expires_at, Some(60_500));
    let done = RobotAction::Complete {
        observation: Some("ok".into()),
        output: Some(serde_json::json!({ "ref": 1 })),
    };
    let completed = write(plan_robot_action(
        &started,
        7,
        Some("7-a"),
        &done,
        &POLICY,
        900,
    ));
    assert_eq!(completed.status, ItemStatus::Completed);
    assert_eq!(completed.ended_at, Some(900));
    // The same completion again changes nothing; starting a completed item is illegal.
    assert_eq!(
        plan_robot_action(&completed, 7, Some("7-a"), &done, &POLICY, 950),
        Ok(Plan::Unchanged)
    );
    assert!(matches!(
        plan_robot_action(
            &completed,
            7,
            Some("7-a"),
            &RobotAction::Start,
            &POLICY,
            950
        ),
        Err(TransitionError::Illegal {
            from: ItemStatus::Completed,
            ..
        })
    ));
}

#[test]
fn another_robot_is_refused_and_a_lost_lease_is_stale() {
    let item = held(ItemStatus::Started, 7, "7-new");
    assert_eq!(
        plan_robot_action(&item, 8, Some("7-new"), &RobotAction::Release, &POLICY, 0),
        Err(TransitionError::NotYours { item: 10, robot: 8 })
    );
    assert_eq!(
        plan_robot_action(&item, 8, None, &RobotAction::Start, &POLICY, 0),
        Err(TransitionError::NotYours { item: 10, robot: 8 })
    );
    // Robot 8 held the item before under lease 8-old; it was reassigned to robot 7.
    assert!(matches!(
        plan_robot_action(&item, 8, Some("8-old"), &RobotAction::Renew, &POLICY, 0),
        Err(TransitionError::StaleLease { .. })
    ));
    assert!(matches!(
        plan_robot_action(&item, 7, Some("7-old"), &RobotAction::Renew, &POLICY, 0),
        Err(TransitionError::StaleLease { .. })
    ));
    // The seed API carries no lease: holding the item is enough.
    assert!(plan_robot_action(&item, 7, None, &RobotAction::Renew, &POLICY, 0).is_ok());
}

#[test]
fn application_failures_retry_with_backoff_until_max_attempts() {
    let fail = RobotAction::Fail {
        kind: FailKind::Application,
        message: "timeout".into(),
    };
    let mut item = held(ItemStatus::Started, 7, "7-a");
    let retried = write(plan_robot_action(
        &item,
        7,
        Some("7-a"),
        &fail,
        &POLICY,
        10_000,
    ));
    assert_eq!(retried.status, ItemStatus::Pending);
    assert_eq!(retried.not_before, Some(11_000));
    assert_eq!(retried.robot_id, None);
    item.attempt = 2;
    let retried = write(plan_robot_action(
        &item,
        7,
        Some("7-a"),
        &fail,
        &POLICY,
        10_000,
    ));
    assert_eq!(retried.not_before, Some(12_000), "backoff doubles");
    item.attempt = 3;
    let failed = write(plan_robot_action(
        &item,
        7,
        Some("7-a"),
        &fail,
        &POLICY,
        10_000,
    ));
    assert_eq!(failed.status, ItemStatus::Failed);
    assert_eq!(failed.fail_kind.as_deref(), Some("application"));
    let business = RobotAction::Fail {
        kind: FailKind::Business,
        message: "no such phone".into(),
    };
    item.attempt = 1;
    let failed = write(plan_robot_action(
        &item,
        7,
        Some("7-a"),
        &business,
        &POLICY,
        0,
    ));
    assert_eq!(
        (failed.status, failed.observation.as_deref()),
        (ItemStatus::Failed, Some("no such phone"))
    );
}

#[test]
fn lost_robots_return_unstarted_items_and_abandon_or_retry_started_ones() {
    let assigned = held(ItemStatus::Assigned, 7, "7-a");
    let back = plan_lost(&assigned, &POLICY, false, 5).expect("in flight");
    assert_eq!(
        (back.status, back.attempt, back.robot_id),
        (ItemStatus::Pending, 0, None)
    );
    let started = held(ItemStatus::Started, 7, "7-a");
    let abandoned = plan_lost(&started, &POLICY, false, 5).expect("in flight");
    assert_eq!(abandoned.status, ItemStatus::Abandoned);
    let retry = Policy {
        on_lost: LostItemPolicy::Retry,
        ..POLICY
    };
    assert_eq!(
        plan_lost(&started, &retry, false, 5).map(|i| i.status),
        Some(ItemStatus::Pending)
    );
    assert_eq!(
        plan_lost(&held(ItemStatus::Completed, 7, "7-a"), &POLICY, false, 5),
        None
    );
}

#[test]
fn the_third_expired_lease_quarantines_the_item() {
    let mut item = held(ItemStatus::Assigned, 7, "7-a");
    item.lease_expiries = 1;
    assert_eq!(
        plan_lost(&item, &POLICY, true, 5).map(|i| i.status),
        Some(ItemStatus::Pending)
    );
    item.lease_expiries = 2;
    let poisoned = plan_lost(&item, &POLICY, true, 5).expect("in flight");
    assert_eq!(
        (poisoned.status, poisoned.fail_kind.as_deref()),
        (ItemStatus::Failed, Some("poison"))
    );
}

#[test]
fn counts_move_between_statuses() {
    let delta = count_delta(ItemStatus::Assigned, ItemStatus::Completed);
    assert_eq!((delta.assigned, delta.completed, delta.total()), (-1, 1, 0));
    assert_eq!(
        count_delta(ItemStatus::Started, ItemStatus::Started),
        ItemCounts::default()
    );
    let mut sum = ItemCounts::default();
    add_counts(&mut sum, &delta);
    add_counts(&mut sum, &delta);
    assert_eq!(sum.completed, 2);
    assert_eq!(lease_robot(&new_lease_id(42)), Some(42));
}
