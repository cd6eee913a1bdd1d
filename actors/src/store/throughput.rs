//! `throughput:<epoch minute>` rows: how many items robots finished in each minute, written in
//! the same transaction as the transitions themselves (one row per batch, not per item), read by
//! the dashboard's "items per minute over the last hour" chart.

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
pub fn minute_of(at: Millis) -> i64 {
    at.div_euclid(60_000)
}

impl Store {
    /// Every minute from `first` to `last` inclusive, oldest first; minutes with no row count 0.
    pub async fn throughput(&self, first: i64, last: i64) -> Result<Vec<MinuteCount>, StoreError> {
        let minutes: Vec<i64> = (first..=last).collect();
        // Integer bounds are formatted in: record-id ranges cannot take parameters.
        let rows: Vec<MinuteCount> = self
            .rows(
                &format!(
                    "SELECT record::id(id) AS minute, completed, failed \
                     FROM throughput:{first}..={last};"
                ),
                json!({}),
                0,
            )
            .await?;
        Ok(minutes
            .iter()
            .map(|&minute| {
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
        // Integer bounds are formatted in: record-id ranges cannot take parameters.
        self.exec(&format!("DELETE throughput:..{first};"), json!({}))
            .await
    }
}
