//! `throughput:[<epoch minute>, <node>]` rows: how many items robots finished in each minute on
//! each node, written in the same transaction as the transitions themselves (one row per node
//! and minute, so nodes never write the same row), summed per minute for the dashboard's "items
//! per minute over the last hour" chart.

use super::Store;
use crate::domain::Millis;
use crate::error::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Items finished in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MinuteCount {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub completed: i64,
    pub failed: i64,
}

/// The epoch minute holding `at`.
pub(crate) fn minute_of(at: Millis) -> i64 {
    at.div_euclid(60_000)
}

impl Store {
    /// The last `minutes` minutes up to the one holding `now`, oldest first.
    pub async fn recent_throughput(
        &self,
        minutes: i64,
        now: Millis,
    ) -> Result<Vec<MinuteCount>, StoreError> {
        let last = minute_of(now);
        self.throughput(last - minutes + 1, last).await
    }

    /// Every minute from `first` to `last` inclusive, oldest first; minutes with no row count 0.
    pub async fn throughput(&self, first: i64, last: i64) -> Result<Vec<MinuteCount>, StoreError> {
        // At most an hour of minutes per node is kept: the table is small.
        let rows: Vec<MinuteCount> = self
            .rows(
                "SELECT minute, math::sum(completed) AS completed, math::sum(failed) AS failed \
                 FROM throughput WHERE minute >= $first AND minute <= $last GROUP BY minute;",
                json!({ "first": first, "last": last }),
                0,
            )
            .await?;
        Ok((first..=last)
            .map(|minute| {
                rows.iter()
                    .find(|r| r.minute == minute)
                    .copied()
                    .unwrap_or(MinuteCount {
                        minute,
                        ..MinuteCount::default()
                    })
            })
            .collect())
    }

    /// Deletes minutes before `first`; the chart never looks further back than an hour.
    pub async fn prune_throughput(&self, first: i64) -> Result<(), StoreError> {
        // Rows written before schema 8 have no minute: they go too.
        self.exec(
            "DELETE throughput WHERE minute = NONE OR minute < $first;",
            json!({ "first": first }),
        )
        .await
    }
}
