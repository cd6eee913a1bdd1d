//! Gathering for group commit without a timer. An actor that writes in batches asks for a flush
//! with [`flush_later`]: with no delay the flush is a message to itself, queued behind whatever is
//! already in its mailbox. Requests that arrived while the previous write ran are then written
//! together, and a request that finds the actor idle is written at once instead of after a
//! timer tick (tokio's timers round up to whole milliseconds).
//!
//! ```text
//!   mailbox: [Act, Act, Act, Flush, Act, Act, Flush]
//!             └── one write ──┘    └─ one write ┘
//! ```

use ractor::{ActorRef, Message};
use std::time::Duration;

/// Sends `flush` to `myself` after `delay`, or behind its queued messages when `delay` is zero.
pub fn flush_later<M: Message>(myself: &ActorRef<M>, delay: Duration, flush: fn() -> M) {
    if delay.is_zero() {
        crate::mailbox::tell(myself, flush());
    } else {
        myself.send_after(delay, flush);
    }
}
