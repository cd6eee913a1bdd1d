//! The two sends whose failure needs no handling, named once with the reason.

use ractor::{ActorRef, Message, RpcReplyPort};

/// Tells `actor` something without waiting. A send fails only when the actor has stopped: the
/// node is stopping, or the supervisor is restarting dispatch, whose new actors rebuild what
/// they know from the store. The message is then not needed, and is dropped (logged at DEBUG).
pub fn tell<M: Message>(actor: &ActorRef<M>, message: M) {
    if actor.send_message(message).is_err() {
        tracing::debug!(actor = %actor.get_id(), "message to a stopped actor dropped");
    }
}

/// Answers a caller waiting on `reply`. The caller may have given up (its call timed out, or
/// its client went away); the answer is then dropped: what it reports is already in the store.
pub fn answer<T>(reply: RpcReplyPort<T>, value: T) {
    if reply.send(value).is_err() {
        tracing::trace!("answer to a caller that stopped waiting dropped");
    }
}
