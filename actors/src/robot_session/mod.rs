//! One actor per robot connected to this node. It hands leased items to the robot: over REST by
//! long-poll claims (items wait here until claimed), or pushed over a WebSocket the web layer
//! handed it (see [`ws`]); each lease handed out once per connection.

mod actor;
pub mod desk;
pub mod ws;

pub use actor::{RobotSession, RobotSessionArgs, RobotSessionMsg, WsAttach};
