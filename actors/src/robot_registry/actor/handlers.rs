//! One function per message of the [`RobotRegistry`](super::RobotRegistry): what
//! `handle_message` does with each.

use super::*;

/// Opens the robot's session unless one is open, then counts the connect as a pulse.
pub(super) async fn on_connect(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    robot: Robot,
    mut in_flight: i64,
    counted_at: Millis,
    reply: RpcReplyPort<ActorRef<RobotSessionMsg>>,
) -> Result<(), ActorProcessingErr> {
    let now = state.args.clock.now();
    let robot_id = robot.id;
    if !state.sessions.contains_key(&robot_id) {
        // The count was read while a release of this robot's items (its previous
        // session found silent) was being written: read it again. Taken as read, the
        // new session started with items the store no longer gave it (a REST robot
        // back just as it was judged lost: "drifted, planned=2 stored=0").
        if now - counted_at > CONNECT_COUNT_AGE_MS
            || state
                .released_at
                .get(&robot_id)
                .is_some_and(|at| *at >= counted_at)
        {
            in_flight = state.control.robot_in_flight_count(robot_id).await?;
        }
        let args = RobotSessionArgs {
            robot_id,
            store: state.args.store.clone(),
            capacity: robot.capacity as usize,
            registry: myself.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, RobotSession, args, myself.get_cell()).await?;
        state.by_actor.insert(actor.get_id(), robot_id);
        state.args.pulses.set_session(robot_id, Some(actor.clone()));
        state.sessions_started += 1;
        let generation = state.sessions_started;
        state.sessions.insert(
            robot_id,
            Session {
                actor,
                started_at: now,
                last_pulse: now,
                persisted_pulse: 0,
                window: None,
                streaming: false,
                told_window: Some(robot.capacity),
                generation,
            },
        );
        info!(robot_id, in_flight, "robot connected");
        let stamp = state.board.next_stamp();
        state.board.robots.insert(
            robot_id,
            RegistryState::slot_from(&robot, in_flight, stamp, generation),
        );
    }
    state.apply_settings(&robot);
    if let Some(session) = state.sessions.get(&robot_id) {
        crate::mailbox::answer(reply, session.actor.clone());
    }
    state.pulse(robot_id, now);
    state.pulse_writer.flush();
    state.schedule_dispatch(myself);
    Ok(())
}

/// Takes a robot's new settings; a robot no longer ACTIVE has its items released.
pub(super) async fn on_robot_changed(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    robot: Robot,
) -> Result<(), ActorProcessingErr> {
    let Some(was_active) = state.board.robots.get(&robot.id).map(|slot| slot.active) else {
        return Ok(());
    };
    state.apply_settings(&robot);
    if was_active && robot.status != RobotStatus::Active {
        let released = recovery::release_robot(
            &state.control,
            robot.id,
            true,
            state.args.defaults,
            state.args.clock.now(),
        )
        .await?;
        info!(robot_id = robot.id, "robot drained");
        state.absorb(released).await;
    }
    state.schedule_dispatch(myself);
    Ok(())
}

/// Ends a deleted (or re-tokened) robot's session and releases its items.
pub(super) async fn on_robot_revoked(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    robot_id: i64,
    before: Option<Millis>,
) -> Result<(), ActorProcessingErr> {
    if let Some(at) = before
        && state
            .sessions
            .get(&robot_id)
            .is_none_or(|s| s.started_at >= at)
    {
        return Ok(());
    }
    state.end_session(robot_id);
    let released = recovery::release_robot(
        &state.control,
        robot_id,
        false,
        state.args.defaults,
        state.args.clock.now(),
    )
    .await?;
    state.absorb(released).await;
    state.schedule_dispatch(myself);
    Ok(())
}

/// A robot is ready for work, `window` items at once at most.
pub(super) fn on_ready(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    robot: Robot,
    window: Option<i64>,
) {
    if let Some(session) = state.sessions.get_mut(&robot.id) {
        session.window = window;
    }
    state.apply_settings(&robot);
    state.pulse(robot.id, state.args.clock.now());
    state.pulse_writer.flush();
    state.schedule_dispatch(myself);
}

/// Tells a robot's session that items were taken from it.
pub(super) fn on_revoke(state: &mut RegistryState, robot_id: i64, item_ids: Vec<i64>) {
    state.tell_revoked(&BTreeMap::from([(robot_id, item_ids)]));
}

/// Another node released items of a robot whose session is here.
pub(super) fn on_items_released(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    robot_id: i64,
    item_ids: Vec<i64>,
    before: Millis,
) {
    state.released_at.insert(robot_id, state.args.clock.now());
    if state
        .sessions
        .get(&robot_id)
        .is_none_or(|s| s.started_at >= before)
    {
        return;
    }
    state.board.left(robot_id, item_ids.len() as i64);
    state.tell_revoked(&BTreeMap::from([(robot_id, item_ids)]));
    state.schedule_dispatch(myself);
}

/// Items left a robot's hands without a session message (a cancel).
pub(super) fn on_items_left_flight(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    robot_id: i64,
    count: i64,
) {
    state.released_at.insert(robot_id, state.args.clock.now());
    state.board.left(robot_id, count);
    state.schedule_dispatch(myself);
}

/// One item left a robot's hands (finished or handed back).
pub(super) fn on_item_left(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    robot_id: i64,
    item_id: i64,
    lease_id: Option<String>,
) {
    state.board.left(robot_id, 1);
    // Only a streaming session keeps a window to free; a polling robot's session learns
    // from its next store sync, so its requests cost no extra message.
    if let Some(session) = state.sessions.get(&robot_id)
        && session.streaming
    {
        crate::mailbox::tell(&session.actor, RobotSessionMsg::Left { item_id, lease_id });
    }
    state.schedule_dispatch(myself);
}

/// A robot's session started or stopped streaming over a WebSocket.
pub(super) fn on_streaming(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    robot_id: i64,
    on: bool,
) {
    if let Some(session) = state.sessions.get_mut(&robot_id) {
        session.streaming = on;
    }
    state.apply_standby(robot_id);
    state.schedule_dispatch(myself);
}

/// A task actor has pending items to hand out.
pub(super) fn on_task_demand(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    task_id: i64,
    process_id: i64,
    priority: i64,
    pending: i64,
    actor: ActorRef<TaskMsg>,
) {
    state.task_actors.insert(task_id, actor);
    state.board.demand(task_id, process_id, priority, pending);
    state.schedule_dispatch(myself);
}

/// A task actor wrote (or could not use) the leases it was granted.
pub(super) fn on_grants_settled(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    task_id: i64,
    leases: Vec<u64>,
    unused: Vec<ReservedSlots>,
    pending: i64,
) {
    state.board.settle(task_id, &leases, &unused, pending);
    state.schedule_dispatch(myself);
}

/// A task actor stopped: slots it had reserved come back.
pub(super) fn on_task_gone(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
    task_id: i64,
    actor: ActorId,
) {
    let returned = state.board.actor_gone(actor.pid());
    if returned > 0 {
        debug!(
            task_id,
            slots = returned,
            "leases a stopped task never handled came back"
        );
    }
    // A newer actor of the task may have announced itself already.
    if state
        .task_actors
        .get(&task_id)
        .is_some_and(|a| a.get_id() == actor)
    {
        state.task_actors.remove(&task_id);
        state.board.tasks.remove(&task_id);
    }
    state.schedule_dispatch(myself);
}

/// Plans a dispatch round and sends each task actor its grants.
pub(super) fn on_dispatch(state: &mut RegistryState) {
    state.dispatch_scheduled = false;
    // Summaries older than three heartbeats are from a node that stopped telling.
    let fresh_since = state.args.clock.now() - 3 * state.args.sweep_period.as_millis() as Millis;
    state.board.peers = state.args.view.peer_loads(fresh_since);
    let plan = state.board.plan();
    if state.board.left_to_peers > 0 {
        metrics::counter!("orchestrator_items_left_to_peers_total")
            .increment(state.board.left_to_peers as u64);
    }
    let mut per_task: BTreeMap<i64, Vec<GrantRequest>> = BTreeMap::new();
    for grant in plan {
        let slots = [ReservedSlots {
            robot_id: grant.robot_id,
            session: state
                .board
                .robots
                .get(&grant.robot_id)
                .map_or(0, |r| r.session),
            count: grant.count,
        }];
        let Some(session) = state.sessions.get(&grant.robot_id) else {
            state.board.unreserve(&slots);
            continue;
        };
        per_task
            .entry(grant.task_id)
            .or_default()
            .push(GrantRequest {
                robot_id: grant.robot_id,
                count: grant.count,
                generation: session.generation,
                session: session.actor.clone(),
            });
    }
    for (task_id, grants) in per_task {
        let slots: Vec<ReservedSlots> = grants
            .iter()
            .map(|g| ReservedSlots {
                robot_id: g.robot_id,
                session: g.generation,
                count: g.count,
            })
            .collect();
        let Some(actor) = state.task_actors.get(&task_id) else {
            state.board.unreserve(&slots);
            continue;
        };
        let lease = state.board.reserve(task_id, actor.get_id().pid(), slots);
        if actor
            .send_message(TaskMsg::Lease { lease, grants })
            .is_err()
        {
            state.board.withdraw(lease);
        }
    }
    state.withdraw_standby();
}

/// Pulses, silent robots, the housekeeping share, standby expiry.
pub(super) async fn on_sweep(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
) -> Result<(), ActorProcessingErr> {
    state.absorb_pulses();
    // A connect's count is read moments before its message: older releases cannot
    // make it stale.
    let forget_before = state.args.clock.now() - 2 * CONNECT_COUNT_AGE_MS;
    state.released_at.retain(|_, at| *at >= forget_before);
    state.args.view.set_own_loads(state.board.summary());
    // Items the last plan left to other nodes' robots: plan again with their newer
    // summaries, in case those robots filled up meanwhile.
    if state.board.left_to_peers > 0 {
        state.schedule_dispatch(myself);
    }
    let now = state.args.clock.now();
    let timeout = state.args.pulse_timeout.as_millis() as i64;
    let silent: Vec<i64> = state
        .sessions
        .iter()
        .filter(|(_, s)| now - s.last_pulse > timeout)
        .map(|(id, _)| *id)
        .collect();
    let me = state.args.node_id.clone();
    for robot_id in &silent {
        state.end_session(*robot_id);
    }
    // Released only if this node still holds the robot in the store: a robot that
    // moved to another node is served there.
    let lost: HashSet<i64> = release_lost(state, &silent, &me, now - timeout, now)
        .await?
        .into_iter()
        .collect();
    for robot_id in silent {
        if lost.contains(&robot_id) {
            warn!(robot_id, "robot went silent; releasing its items");
        } else {
            info!(
                robot_id,
                "robot went silent here but is served by another node"
            );
        }
    }
    // Robots this node id holds in the store with no session here (the node restarted
    // under the same id, or their session ended without a release): lost once silent
    // past the timeout and a sweep, as a dead node's robots are.
    let sweep = state.args.sweep_period.as_millis() as Millis;
    let cutoff = now - timeout - sweep;
    let unattended: Vec<i64> = state
        .control
        .silent_robots_of(&me, cutoff)
        .await?
        .into_iter()
        .filter(|robot_id| !state.sessions.contains_key(robot_id))
        .collect();
    for robot_id in release_lost(state, &unattended, &me, cutoff, now).await? {
        warn!(
            robot_id,
            "robot of this node without a session went silent; released its items"
        );
    }
    for session in state.sessions.values().filter(|s| s.streaming) {
        crate::mailbox::tell(&session.actor, RobotSessionMsg::Expiring { now });
    }
    if state.args.view.leads() {
        housekeeping(state, now, timeout).await?;
    }
    state.schedule_dispatch(myself);
    Ok(())
}

/// Recounts robot loads from the store (a backstop: a correction is a bug).
pub(super) async fn on_recount(
    state: &mut RegistryState,
    myself: &ActorRef<RobotRegistryMsg>,
) -> Result<(), ActorProcessingErr> {
    if state.board.robots.is_empty() {
        return Ok(());
    }
    let stored = state.control.held_counts().await?;
    for c in state.board.recount(&stored) {
        warn!(
            robot_id = c.robot_id,
            planned = c.planned,
            stored = c.stored,
            difference = c.planned - c.stored,
            "robot load drifted from the store; corrected (please report this)"
        );
    }
    state.schedule_dispatch(myself);
    Ok(())
}

/// Closes every session for a stop.
pub(super) async fn on_shutdown(state: &mut RegistryState, reply: RpcReplyPort<()>) {
    let sessions: Vec<ActorRef<RobotSessionMsg>> =
        state.sessions.values().map(|s| s.actor.clone()).collect();
    futures_util::future::join_all(sessions.iter().map(|session| {
        session.call(
            |reply| RobotSessionMsg::Shutdown { reply },
            Some(Duration::from_secs(5)),
        )
    }))
    .await;
    info!(
        sessions = sessions.len(),
        "robot sessions closed for shutdown"
    );
    crate::mailbox::answer(reply, ());
}

/// Loads of robots connected here.
pub(super) fn on_loads(state: &mut RegistryState, reply: RpcReplyPort<Vec<RobotLoad>>) {
    state.absorb_pulses();
    let loads = state
        .board
        .robots
        .iter()
        .map(|(id, slot)| RobotLoad {
            robot_id: *id,
            in_flight: slot.in_flight,
            capacity: slot.capacity,
            active: slot.active,
            last_pulse_at: state.sessions.get(id).map_or(0, |s| s.last_pulse),
        })
        .collect();
    crate::mailbox::answer(reply, loads);
}
