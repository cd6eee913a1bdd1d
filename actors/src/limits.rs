//! Bounds on what a robot may send about an item. An item's observation and output are stored
//! with the state of its chunk's 255 neighbours, so one robot must not be able to make that
//! text slow to rewrite or impossible to read back (serde_json refuses JSON nested deeper than
//! 128 levels, and the chunk's own nesting comes on top of the output's).
//!
//! Every robot surface checks the same limits before anything is written: REST v1 and the seed
//! API in [`crate::dispatcher::Dispatcher`], WebSocket frames as they are read.

use crate::lifecycle::RobotAction;
use serde_json::Value;
use thiserror::Error;

/// Largest observation, failure message and output a robot may report, and the deepest output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Bytes of `observation` (and of a failure's `message`, stored in its place).
    pub max_observation_bytes: usize,
    /// Bytes of `output` as compact JSON.
    pub max_output_bytes: usize,
    /// Nesting of `output`: a scalar is 0, `{"a": 1}` is 1.
    pub max_output_depth: usize,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        PayloadLimits {
            max_observation_bytes: 64 << 10,
            max_output_bytes: 64 << 10,
            max_output_depth: 32,
        }
    }
}

/// A robot's report that exceeds a limit. Nothing about the item changes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// 413 `observation_too_large`.
    #[error("{field} is {size} bytes; the limit is {limit}")]
    ObservationTooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    /// 413 `output_too_large`.
    #[error("output is {size} bytes as JSON; the limit is {limit}")]
    OutputTooLarge { size: usize, limit: usize },
    /// 422 `output_too_deep`.
    #[error("output is nested more than {limit} levels deep")]
    OutputTooDeep { limit: usize },
}

impl PayloadError {
    /// The stable code clients match on.
    pub fn code(&self) -> crate::codes::Code {
        use crate::codes::code;
        match self {
            PayloadError::ObservationTooLarge { .. } => code::OBSERVATION_TOO_LARGE,
            PayloadError::OutputTooLarge { .. } => code::OUTPUT_TOO_LARGE,
            PayloadError::OutputTooDeep { .. } => code::OUTPUT_TOO_DEEP,
        }
    }
}

impl PayloadLimits {
    /// Checks what `action` would store.
    pub fn check(&self, action: &RobotAction) -> Result<(), PayloadError> {
        match action {
            RobotAction::Complete {
                observation,
                output,
            } => {
                if let Some(observation) = observation {
                    self.check_text("observation", observation)?;
                }
                if let Some(output) = output {
                    self.check_output(output)?;
                }
                Ok(())
            }
            RobotAction::Fail { message, .. } => self.check_text("message", message),
            RobotAction::Start | RobotAction::Renew | RobotAction::Release => Ok(()),
        }
    }

    fn check_text(&self, field: &'static str, text: &str) -> Result<(), PayloadError> {
        if text.len() > self.max_observation_bytes {
            return Err(PayloadError::ObservationTooLarge {
                field,
                size: text.len(),
                limit: self.max_observation_bytes,
            });
        }
        Ok(())
    }

    fn check_output(&self, output: &Value) -> Result<(), PayloadError> {
        if depth_exceeds(output, self.max_output_depth) {
            return Err(PayloadError::OutputTooDeep {
                limit: self.max_output_depth,
            });
        }
        let size = serde_json::to_vec(output).map_or(usize::MAX, |v| v.len());
        if size > self.max_output_bytes {
            return Err(PayloadError::OutputTooLarge {
                size,
                limit: self.max_output_bytes,
            });
        }
        Ok(())
    }
}

/// Whether `value` nests deeper than `limit`, found without recursion.
fn depth_exceeds(value: &Value, limit: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth + 1 > limit {
            return true;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..levels {
            value = json!({ "a": value });
        }
        value
    }

    fn complete(observation: Option<&str>, output: Option<Value>) -> RobotAction {
        RobotAction::Complete {
            observation: observation.map(str::to_string),
            output,
        }
    }

    #[test]
    fn depth_counts_containers() {
        assert!(!depth_exceeds(&json!(1), 0));
        assert!(depth_exceeds(&json!([]), 0));
        assert!(!depth_exceeds(&nested(32), 32));
        assert!(depth_exceeds(&nested(33), 32));
        assert!(depth_exceeds(&json!([1, [2, [3]]]), 2));
    }

    #[test]
    fn reports_within_the_limits_pass_and_others_are_named() {
        let limits = PayloadLimits {
            max_observation_bytes: 10,
            max_output_bytes: 20,
            max_output_depth: 3,
        };
        assert_eq!(limits.check(&complete(Some("ok"), Some(nested(3)))), Ok(()));
        let err = limits
            .check(&complete(Some("eleven char"), None))
            .expect_err("too long");
        assert_eq!(err.code().name, "observation_too_large");
        assert_eq!(err.code().status, 413, "a size refusal");
        let err = limits
            .check(&complete(None, Some(nested(4))))
            .expect_err("too deep");
        assert_eq!(err.code().name, "output_too_deep");
        assert_eq!(err.code().status, 422, "a shape refusal");
        let err = limits
            .check(&complete(None, Some(json!({ "text": "0123456789abcdef" }))))
            .expect_err("too large");
        assert_eq!(err.code().name, "output_too_large");
        let fail = RobotAction::Fail {
            kind: crate::lifecycle::FailKind::Business,
            message: "x".repeat(11),
        };
        assert_eq!(
            limits.check(&fail).map_err(|e| e.code().name),
            Err("observation_too_large")
        );
        assert_eq!(limits.check(&RobotAction::Start), Ok(()));
    }
}
