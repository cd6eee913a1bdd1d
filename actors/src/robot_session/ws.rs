//! The WebSocket channel of a robot session: the frames, and the reader that turns a robot's
//! frames into dispatch calls.
//!
//! The web layer only moves bytes: it hands the session a [`WsLink`] (a channel of frames from
//! the robot, a channel of frames to it) and keeps nothing per robot. Everything the protocol
//! means lives here.
//!
//! ```text
//!   robot ──frames──► web pump ──Inbound──► reader task ──► Dispatcher (act, pulse, ready)
//!   robot ◄─frames─── web pump ◄─Outbound── session actor (items, revoke) + reader (ack, error)
//! ```

use super::RobotSessionMsg;
use crate::dispatcher::{DispatchError, Dispatcher};
use crate::domain::Robot;
use crate::lifecycle::{FailKind, RobotAction};
use crate::store::LeasedItem;
use ractor::ActorRef;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Largest text frame a robot may send; larger ones get an `error` frame. As large as a REST
/// JSON body, so that a report within the observation and output limits fits in one frame as it
/// fits in one request (at 64 KiB, a frame carrying a 40 KiB observation and a 30 KiB output,
/// both within their limits, was refused).
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Frames the server queues for one connection before the robot counts as too slow.
pub const OUTBOUND_QUEUE: usize = 1024;

/// Robot actions one connection may have in flight at once.
const ACTIONS_IN_FLIGHT: usize = 256;

/// What the web layer passes on from the socket.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame.
    Text(String),
    /// A binary frame (refused: the protocol is JSON text).
    Binary,
    /// A ping, pong or other control frame: the robot is alive.
    Activity,
}

/// What the web layer writes to the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// A text frame (JSON).
    Text(String),
    /// A ping; the robot's pong counts as a pulse.
    Ping,
    /// Close the connection with this reason.
    Close(String),
    /// Close the connection because the node is stopping: the robot should reconnect (to this
    /// node once it is back, or to another).
    Restart(String),
}

/// The two ends of one robot's WebSocket, as the session sees them. The connection ends when
/// `inbound` closes (the web pump drops its sender) or after an [`Outbound::Close`].
#[derive(Debug)]
pub struct WsLink {
    pub inbound: mpsc::Receiver<Inbound>,
    pub outbound: mpsc::Sender<Outbound>,
}

/// What the reader task holds: the socket's two ends and the session it reports to.
#[derive(Debug)]
pub(super) struct ReaderLink {
    pub inbound: mpsc::Receiver<Inbound>,
    pub outbound: mpsc::Sender<Outbound>,
    pub session: ActorRef<RobotSessionMsg>,
}

/// `{"type": "items", "items": [...]}`.
pub fn items_frame(items: &[LeasedItem]) -> Outbound {
    let items: Vec<Value> = items.iter().map(LeasedItem::view).collect();
    Outbound::Text(json!({ "type": "items", "items": items }).to_string())
}

/// `{"type": "revoke", "item_ids": [...]}`.
pub fn revoke_frame(item_ids: &[i64]) -> Outbound {
    Outbound::Text(json!({ "type": "revoke", "item_ids": item_ids }).to_string())
}

fn ack_frame(reference: Option<Value>, item: Option<Value>) -> Outbound {
    let mut frame = Map::new();
    frame.insert("type".into(), json!("ack"));
    if let Some(reference) = reference {
        frame.insert("ref".into(), reference);
    }
    if let Some(item) = item {
        frame.insert("item".into(), item);
    }
    Outbound::Text(Value::Object(frame).to_string())
}

/// `{"type": "error", "code", "message", "ref"?}`.
pub fn error_frame(code: &str, message: &str, reference: Option<Value>) -> Outbound {
    let mut frame = Map::new();
    frame.insert("type".into(), json!("error"));
    frame.insert("code".into(), json!(code));
    frame.insert("message".into(), json!(message));
    if let Some(reference) = reference {
        frame.insert("ref".into(), reference);
    }
    Outbound::Text(Value::Object(frame).to_string())
}

/// A frame the robot sent, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Ready {
        capacity: Option<i64>,
        reference: Option<Value>,
    },
    Pulse {
        reference: Option<Value>,
    },
    Act {
        item_id: i64,
        lease_id: String,
        action: RobotAction,
        reference: Option<Value>,
    },
}

/// Why a frame was refused: the `error` frame's code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    pub reference: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadyBody {
    capacity: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActBody {
    item_id: i64,
    lease_id: String,
    observation: Option<String>,
    output: Option<Value>,
    kind: Option<FailKind>,
    message: Option<String>,
}

/// Parses one text frame.
pub fn parse_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let refuse = |code, message: String, reference| FrameError {
        code,
        message,
        reference,
    };
    if text.len() > MAX_FRAME_BYTES {
        return Err(refuse(
            "frame_too_large",
            format!(
                "frames are limited to {MAX_FRAME_BYTES} bytes; this one has {}",
                text.len()
            ),
            None,
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| refuse("malformed_frame", format!("not JSON: {e}"), None))?;
    let Value::Object(mut object) = value else {
        return Err(refuse(
            "malformed_frame",
            "a frame is a JSON object with a \"type\"".into(),
            None,
        ));
    };
    let reference = object.remove("ref");
    let kind = match object.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => {
            return Err(refuse(
                "malformed_frame",
                "a frame needs a string \"type\"".into(),
                reference,
            ));
        }
    };
    let body = Value::Object(object);
    let invalid = |e: serde_json::Error| FrameError {
        code: "invalid_frame",
        message: format!("{kind} frame: {e}"),
        reference: reference.clone(),
    };
    fn fields<T: DeserializeOwned>(body: Value) -> Result<T, serde_json::Error> {
        serde_json::from_value(body)
    }
    let act = |body: Value| -> Result<ActBody, FrameError> { fields(body).map_err(invalid) };
    let frame = match kind.as_str() {
        "ready" => {
            let body: ReadyBody = fields(body).map_err(invalid)?;
            if body.capacity.is_some_and(|c| !(0..=1000).contains(&c)) {
                return Err(refuse(
                    "invalid_frame",
                    "ready frame: capacity runs from 0 to 1000".into(),
                    reference,
                ));
            }
            ClientFrame::Ready {
                capacity: body.capacity,
                reference,
            }
        }
        "pulse" => {
            let _: EmptyBody = fields(body).map_err(invalid)?;
            ClientFrame::Pulse { reference }
        }
        "started" | "renew" | "release" => {
            let body = act(body)?;
            let action = match kind.as_str() {
                "started" => RobotAction::Start,
                "renew" => RobotAction::Renew,
                _ => RobotAction::Release,
            };
            ClientFrame::Act {
                item_id: body.item_id,
                lease_id: body.lease_id,
                action,
                reference,
            }
        }
        "completed" => {
            let body = act(body)?;
            ClientFrame::Act {
                item_id: body.item_id,
                lease_id: body.lease_id,
                action: RobotAction::Complete {
                    observation: body.observation,
                    output: body.output,
                },
                reference,
            }
        }
        "failed" => {
            let body = act(body)?;
            let Some(kind) = body.kind else {
                return Err(refuse(
                    "invalid_frame",
                    "failed frame: kind is business or application".into(),
                    reference,
                ));
            };
            ClientFrame::Act {
                item_id: body.item_id,
                lease_id: body.lease_id,
                action: RobotAction::Fail {
                    kind,
                    message: body.message.unwrap_or_default(),
                },
                reference,
            }
        }
        other => {
            return Err(refuse(
                "unknown_type",
                format!(
                    "unknown frame type '{other}'; robots send ready, pulse, started, renew, \
                     completed, failed or release"
                ),
                reference,
            ));
        }
    };
    Ok(frame)
}

/// Reads the robot's frames until the connection closes: every frame is a pulse, actions go to
/// dispatch concurrently (acks carry the frame's `ref`), and the server pings every `ping_every`
/// so an idle but connected robot stays alive. A report that ends an item (completed, failed,
/// released) also goes straight to the session, which pushes the robot's next item while the
/// report is written.
pub(super) async fn read_frames(
    robot: Robot,
    dispatcher: Dispatcher,
    link: ReaderLink,
    ping_every: Duration,
) {
    let ReaderLink {
        mut inbound,
        outbound,
        session,
    } = link;
    let in_flight = Arc::new(Semaphore::new(ACTIONS_IN_FLIGHT));
    // The last action per item: a robot's frames about one item apply in the order sent, while
    // frames about different items run concurrently.
    let mut last_action: HashMap<i64, JoinHandle<()>> = HashMap::new();
    let mut last_ready: Option<JoinHandle<()>> = None;
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        let frame = tokio::select! {
            frame = inbound.recv() => frame,
            _ = ping.tick() => {
                if outbound.send(Outbound::Ping).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(frame) = frame else { return };
        dispatcher.pulse(robot.id);
        let text = match frame {
            Inbound::Text(text) => text,
            Inbound::Activity => continue,
            Inbound::Binary => {
                let refusal = error_frame(
                    "malformed_frame",
                    "binary frames are not part of the protocol; send JSON text",
                    None,
                );
                if outbound.send(refusal).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let reply = match parse_frame(&text) {
            Err(err) => error_frame(err.code, &err.message, err.reference),
            Ok(ClientFrame::Pulse { reference }) => ack_frame(reference, None),
            Ok(ClientFrame::Ready {
                capacity,
                reference,
            }) => {
                // Written in a task of its own (after the robot's earlier `ready`, under the
                // same bound as actions), so the loop goes on reading frames, each a pulse: a
                // robot whose `ready` waited on a busy store longer than the pulse timeout was
                // ended as silent while it was talking.
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    return;
                };
                let before = last_ready.take();
                let (dispatcher, outbound, robot) =
                    (dispatcher.clone(), outbound.clone(), robot.clone());
                last_ready = Some(tokio::spawn(async move {
                    if let Some(before) = before {
                        let _ = before.await;
                    }
                    let reply = match dispatcher.ready(&robot, capacity).await {
                        Ok(()) => ack_frame(reference, None),
                        Err(err) => error_frame(err.code(), &err.public_message(), reference),
                    };
                    let _ = outbound.send(reply).await;
                    drop(permit);
                }));
                continue;
            }
            Ok(ClientFrame::Act {
                item_id,
                lease_id,
                action,
                reference,
            }) => {
                // Actions run concurrently so one slow write does not hold the robot's others;
                // the permit bounds how many a robot can pile up.
                // Refused before the session hears of it: an oversized report frees no slot.
                if let Err(err) = dispatcher.config().payload_limits.check(&action) {
                    let refusal = error_frame(err.code(), &err.to_string(), reference);
                    if outbound.send(refusal).await.is_err() {
                        return;
                    }
                    continue;
                }
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    return;
                };
                if matches!(
                    action,
                    RobotAction::Complete { .. } | RobotAction::Fail { .. } | RobotAction::Release
                ) {
                    let _ = session.send_message(RobotSessionMsg::Finished {
                        item_id,
                        lease_id: lease_id.clone(),
                    });
                }
                let dispatcher = dispatcher.clone();
                let outbound = outbound.clone();
                let robot_id = robot.id;
                let before = last_action.remove(&item_id);
                if last_action.len() > ACTIONS_IN_FLIGHT {
                    last_action.retain(|_, action| !action.is_finished());
                }
                let action = tokio::spawn(async move {
                    if let Some(before) = before {
                        let _ = before.await;
                    }
                    let reply = match dispatcher
                        .act(robot_id, item_id, Some(&lease_id), &action)
                        .await
                    {
                        Ok(item) => ack_frame(
                            reference,
                            Some(json!({ "id": item.id, "status": item.status })),
                        ),
                        Err(err) => error_frame(err.code(), &err.public_message(), reference),
                    };
                    let _ = outbound.send(reply).await;
                    drop(permit);
                });
                last_action.insert(item_id, action);
                continue;
            }
        };
        if outbound.send(reply).await.is_err() {
            return;
        }
    }
}

impl DispatchError {
    /// What a robot is told: the error, except a store failure's text or why dispatch is
    /// unavailable, which are logged under a request id instead.
    pub fn public_message(&self) -> String {
        match self {
            DispatchError::Store(err) => crate::error::conceal(err),
            DispatchError::Unavailable(cause) => crate::error::unavailable_as(None, cause),
            other => other.to_string(),
        }
    }

    /// The stable error code robots and clients match on.
    pub fn code(&self) -> &'static str {
        use crate::lifecycle::TransitionError;
        match self {
            DispatchError::ItemNotFound(_) => "not_found",
            DispatchError::Payload(err) => err.code(),
            DispatchError::RobotDisabled => "robot_disabled",
            DispatchError::Transition(TransitionError::NotYours { .. }) => "not_your_item",
            DispatchError::Transition(TransitionError::StaleLease { .. }) => "stale_lease",
            DispatchError::Transition(TransitionError::Illegal { .. }) => "illegal_transition",
            // As the REST API answers: a write that lost a race is a conflict; anything else
            // from the store is worth sending again once it is back.
            DispatchError::Store(crate::error::StoreError::Conflict(_)) => "conflict",
            DispatchError::Store(_) => "store_unavailable",
            DispatchError::Unavailable(_) => "unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        parse_frame(text).expect_err("refused").code
    }

    #[test]
    fn frames_parse_with_their_ref() {
        assert_eq!(
            parse_frame(
                r#"{"type":"completed","item_id":4,"lease_id":"1-a","ref":7,"observation":"ok"}"#
            ),
            Ok(ClientFrame::Act {
                item_id: 4,
                lease_id: "1-a".into(),
                action: RobotAction::Complete {
                    observation: Some("ok".into()),
                    output: None
                },
                reference: Some(json!(7)),
            })
        );
        assert_eq!(
            parse_frame(r#"{"type":"ready","capacity":3}"#),
            Ok(ClientFrame::Ready {
                capacity: Some(3),
                reference: None
            })
        );
        assert_eq!(
            parse_frame(r#"{"type":"pulse","ref":"p"}"#),
            Ok(ClientFrame::Pulse {
                reference: Some(json!("p"))
            })
        );
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(code("not json"), "malformed_frame");
        assert_eq!(code("[1,2]"), "malformed_frame");
        assert_eq!(code(r#"{"item_id":1}"#), "malformed_frame");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"completed","item_id":1}"#), "invalid_frame");
        assert_eq!(
            code(r#"{"type":"failed","item_id":1,"lease_id":"x"}"#),
            "invalid_frame"
        );
        assert_eq!(code(r#"{"type":"pulse","extra":1}"#), "invalid_frame");
        assert_eq!(code(r#"{"type":"ready","capacity":-1}"#), "invalid_frame");
        let big = format!(
            r#"{{"type":"pulse","pad":"{}"}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(code(&big), "frame_too_large");
        let refused = parse_frame(r#"{"type":"dance","ref":"r1"}"#).expect_err("refused");
        assert_eq!(refused.reference, Some(json!("r1")));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn action_frame() -> impl Strategy<Value = (String, i64, String, Option<String>)> {
        (
            prop_oneof![
                Just("started"),
                Just("renew"),
                Just("release"),
                Just("completed")
            ],
            any::<i64>(),
            "[a-z0-9-]{0,40}",
            proptest::option::of(".{0,40}"),
        )
            .prop_map(|(kind, id, lease, observation)| (kind.to_string(), id, lease, observation))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn any_text_is_a_frame_or_a_named_refusal(text in ".{0,300}") {
            if let Err(err) = parse_frame(&text) {
                prop_assert!(
                    ["malformed_frame", "invalid_frame", "frame_too_large"].contains(&err.code),
                    "{}", err.code
                );
            }
        }

        #[test]
        fn any_json_value_is_a_frame_or_a_named_refusal(
            value in proptest::arbitrary::any::<(Option<String>, Option<i64>, Option<bool>)>()
        ) {
            let frame = json!({ "type": value.0, "item_id": value.1, "lease_id": value.2 });
            let _ = parse_frame(&frame.to_string());
        }

        #[test]
        fn action_frames_parse_to_what_they_say((kind, id, lease, observation) in action_frame()) {
            let mut frame = json!({ "type": kind, "item_id": id, "lease_id": lease, "ref": 7 });
            if kind == "completed" {
                frame["observation"] = json!(observation);
            }
            let parsed = parse_frame(&frame.to_string());
            let Ok(ClientFrame::Act { item_id, lease_id, action, reference }) = parsed else {
                return Err(TestCaseError::fail(format!("{frame} -> {parsed:?}")));
            };
            prop_assert_eq!(item_id, id);
            prop_assert_eq!(lease_id, lease);
            prop_assert_eq!(reference, Some(json!(7)));
            let expected = match kind.as_str() {
                "started" => RobotAction::Start,
                "renew" => RobotAction::Renew,
                "release" => RobotAction::Release,
                _ => RobotAction::Complete { observation, output: None },
            };
            prop_assert_eq!(action, expected);
        }
    }
}
