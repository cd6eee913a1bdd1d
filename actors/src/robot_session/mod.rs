//! One actor per robot connected to this node. It hands leased items to the robot: over REST by
//! long-poll claims (items wait here until claimed), each lease handed out once per session.

mod actor;

pub use actor::{RobotSession, RobotSessionArgs, RobotSessionMsg};
