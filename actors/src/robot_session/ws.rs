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
use super::desk::Desk;
use crate::domain::Robot;
use crate::lifecycle::{FailKind, RobotAction};
use crate::store::LeasedItem;
use ractor::ActorRef;
use serde::Deserialize;
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

fn refuse(code: &'static str, message: String, reference: Option<Value>) -> FrameError {
    FrameError {
        code,
        message,
        reference,
    }
}

/// Parses one text frame.
pub fn parse_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let (kind, body, reference) = envelope(text)?;
    let invalid = |e: serde_json::Error| FrameError {
        code: "invalid_frame",
        message: format!("{kind} frame: {e}"),
        reference: reference.clone(),
    };
    match kind.as_str() {
        "ready" => {
            let body: ReadyBody = serde_json::from_value(body).map_err(invalid)?;
            if body.capacity.is_some_and(|c| !(0..=1000).contains(&c)) {
                return Err(refuse(
                    "invalid_frame",
                    "ready frame: capacity runs from 0 to 1000".into(),
                    reference,
                ));
            }
            Ok(ClientFrame::Ready {
                capacity: body.capacity,
                reference,
            })
        }
        "pulse" => {
            let _: EmptyBody = serde_json::from_value(body).map_err(invalid)?;
            Ok(ClientFrame::Pulse { reference })
        }
        "started" | "renew" | "release" | "completed" | "failed" => {
            let body: ActBody = serde_json::from_value(body).map_err(invalid)?;
            act_frame(&kind, body, reference)
        }
        other => Err(refuse(
            "unknown_type",
            format!(
                "unknown frame type '{other}'; robots send ready, pulse, started, renew, \
                 completed, failed or release"
            ),
            reference,
        )),
    }
}

/// A frame's type, the rest of its fields and its `ref`: a JSON object within the size limit.
fn envelope(text: &str) -> Result<(String, Value, Option<Value>), FrameError> {
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
    match object.remove("type") {
        Some(Value::String(kind)) => Ok((kind, Value::Object(object), reference)),
        _ => Err(refuse(
            "malformed_frame",
            "a frame needs a string \"type\"".into(),
            reference,
        )),
    }
}

/// A frame about one of the robot's items.
fn act_frame(
    kind: &str,
    body: ActBody,
    reference: Option<Value>,
) -> Result<ClientFrame, FrameError> {
    let action = match kind {
        "started" => RobotAction::Start,
        "renew" => RobotAction::Renew,
        "release" => RobotAction::Release,
        "completed" => RobotAction::Complete {
            observation: body.observation,
            output: body.output,
        },
        _ => {
            let Some(kind) = body.kind else {
                return Err(refuse(
                    "invalid_frame",
                    "failed frame: kind is business or application".into(),
                    reference,
                ));
            };
            RobotAction::Fail {
                kind,
                message: body.message.unwrap_or_default(),
            }
        }
    };
    Ok(ClientFrame::Act {
        item_id: body.item_id,
        lease_id: body.lease_id,
        action,
        reference,
    })
}

/// Reads the robot's frames until the connection closes: every frame is a pulse, actions go to
/// dispatch concurrently (acks carry the frame's `ref`), and the server pings every `ping_every`
/// so an idle but connected robot stays alive. A report that ends an item (completed, failed,
/// released) also goes straight to the session, which pushes the robot's next item while the
/// report is written.
pub(super) async fn read_frames(
    robot: Robot,
    dispatcher: Desk,
    link: ReaderLink,
    ping_every: Duration,
) {
    let ReaderLink {
        mut inbound,
        outbound,
        session,
    } = link;
    let mut reader = Reader {
        robot,
        dispatcher,
        outbound,
        session,
        in_flight: Arc::new(Semaphore::new(ACTIONS_IN_FLIGHT)),
        last_action: HashMap::new(),
        last_ready: None,
    };
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        let frame = tokio::select! {
            frame = inbound.recv() => frame,
            _ = ping.tick() => {
                if reader.outbound.send(Outbound::Ping).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(frame) = frame else { return };
        reader.dispatcher.pulse(reader.robot.id);
        let reply = match frame {
            Inbound::Activity => continue,
            Inbound::Binary => error_frame(
                "malformed_frame",
                "binary frames are not part of the protocol; send JSON text",
                None,
            ),
            Inbound::Text(text) => match parse_frame(&text) {
                Err(err) => error_frame(err.code, &err.message, err.reference),
                Ok(ClientFrame::Pulse { reference }) => ack_frame(reference, None),
                Ok(ClientFrame::Ready {
                    capacity,
                    reference,
                }) => match reader.ready(capacity, reference).await {
                    Some(()) => continue,
                    None => return,
                },
                Ok(ClientFrame::Act {
                    item_id,
                    lease_id,
                    action,
                    reference,
                }) => match reader.act(item_id, lease_id, action, reference).await {
                    Some(None) => continue,
                    Some(Some(refusal)) => refusal,
                    None => return,
                },
            },
        };
        if reader.outbound.send(reply).await.is_err() {
            return;
        }
    }
}

/// What the frame reader keeps while a connection lasts.
struct Reader {
    robot: Robot,
    dispatcher: Desk,
    outbound: mpsc::Sender<Outbound>,
    session: ActorRef<RobotSessionMsg>,
    /// Bounds the actions (and readies) a robot can have in flight.
    in_flight: Arc<Semaphore>,
    /// The last action per item: a robot's frames about one item apply in the order sent,
    /// while frames about different items run concurrently.
    last_action: HashMap<i64, JoinHandle<()>>,
    last_ready: Option<JoinHandle<()>>,
}

impl Reader {
    /// Written in a task of its own (after the robot's earlier `ready`, under the same bound as
    /// actions), so the loop goes on reading frames, each a pulse: a robot whose `ready` waited
    /// on a busy store longer than the pulse timeout was ended as silent while it was talking.
    /// `None` when the reader is to stop.
    async fn ready(&mut self, capacity: Option<i64>, reference: Option<Value>) -> Option<()> {
        let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok()?;
        let before = self.last_ready.take();
        let (dispatcher, outbound, robot) = (
            self.dispatcher.clone(),
            self.outbound.clone(),
            self.robot.clone(),
        );
        self.last_ready = Some(tokio::spawn(async move {
            if let Some(before) = before {
                // The earlier task answered its robot itself; only that it ended matters here.
                let _ = before.await;
            }
            let reply = match dispatcher.ready(&robot, capacity).await {
                Ok(()) => ack_frame(reference, None),
                Err(err) => error_frame(err.code().name, &err.public_message(None), reference),
            };
            // A closed connection drops the answer: the robot sends again what was not acknowledged.
            let _ = outbound.send(reply).await;
            drop(permit);
        }));
        Some(())
    }

    /// Actions run concurrently so one slow write does not hold the robot's others; the permit
    /// bounds how many a robot can pile up. `Some(Some(refusal))` to answer now, `Some(None)`
    /// when the answer comes from the action's task, `None` when the reader is to stop.
    async fn act(
        &mut self,
        item_id: i64,
        lease_id: String,
        action: RobotAction,
        reference: Option<Value>,
    ) -> Option<Option<Outbound>> {
        // Refused before the session hears of it: an oversized report frees no slot.
        if let Err(err) = self.dispatcher.payload_limits().check(&action) {
            return Some(Some(error_frame(
                err.code().name,
                &err.to_string(),
                reference,
            )));
        }
        let permit = Arc::clone(&self.in_flight).acquire_owned().await.ok()?;
        if matches!(
            action,
            RobotAction::Complete { .. } | RobotAction::Fail { .. } | RobotAction::Release
        ) {
            // The session is told so it can push the next item; if it is gone, the reader
            // ends with the connection anyway.
            crate::mailbox::tell(
                &self.session,
                RobotSessionMsg::Finished {
                    item_id,
                    lease_id: lease_id.clone(),
                },
            );
        }
        let dispatcher = self.dispatcher.clone();
        let outbound = self.outbound.clone();
        let robot_id = self.robot.id;
        let before = self.last_action.remove(&item_id);
        if self.last_action.len() > ACTIONS_IN_FLIGHT {
            self.last_action.retain(|_, action| !action.is_finished());
        }
        let task = tokio::spawn(async move {
            if let Some(before) = before {
                // The earlier task answered its robot itself; only that it ended matters here.
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
                Err(err) => error_frame(err.code().name, &err.public_message(None), reference),
            };
            // A closed connection drops the answer: the robot sends again what was not acknowledged.
            let _ = outbound.send(reply).await;
            drop(permit);
        });
        self.last_action.insert(item_id, task);
        Some(None)
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
