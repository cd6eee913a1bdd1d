//! Open files: the node's connections must fit in the process's file-descriptor limit.
//!
//! Every connection (HTTP, WebSocket robot, cluster peer) is one descriptor, beside the store's
//! files and sockets. With `--max-connections` above what the limit leaves, connections past
//! the limit were not answered 503 but hung, and the accept loop failed over and over. At start
//! the node raises its soft limit to the hard one, and if the connection cap still does not
//! fit beside [`RESERVED_FILES`], it lowers the cap and says so at WARN.

use tracing::{info, warn};

/// Descriptors kept for everything but client connections: the store's files and sockets,
/// the cluster's dialled peers, logs, the metrics listener.
pub const RESERVED_FILES: u64 = 512;

/// What start-up made of the file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    /// The soft open-files limit after raising it.
    pub limit: u64,
    /// The connection cap to use.
    pub max_connections: usize,
}

/// Raises the soft open-files limit as far as the hard one allows, tells surrealdb's process
/// statistics (the `sysinfo` crate) to keep no `/proc` file open (it kept
/// `/proc/<pid>/stat` open for every process on the host), and fits `max_connections` in what
/// the limit leaves (a WARN when that is under nine tenths of what was asked).
pub fn fit(max_connections: usize) -> FileBudget {
    sysinfo::set_open_files_limit(0);
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            warn!(error = %err, "could not read or raise the open-files limit");
            return FileBudget {
                limit: u64::MAX,
                max_connections,
            };
        }
    };
    let budget = budget_for(max_connections, limit);
    if budget.max_connections < max_connections * 9 / 10 {
        warn!(
            open_files_limit = limit,
            asked = max_connections,
            max_connections = budget.max_connections,
            "--max-connections does not fit in the open-files limit (raise it with `ulimit -n` \
             or LimitNOFILE=); serving fewer connections: one more is answered 503"
        );
    } else {
        // Lowered by the reserve alone (a limit equal to the cap, as container runtimes set):
        // worth a line, not a warning on every start.
        info!(
            open_files_limit = limit,
            max_connections = budget.max_connections,
            "connections fit in the open-files limit"
        );
    }
    budget
}

fn budget_for(max_connections: usize, limit: u64) -> FileBudget {
    let room = limit.saturating_sub(RESERVED_FILES).max(16);
    FileBudget {
        limit,
        max_connections: max_connections.min(usize::try_from(room).unwrap_or(usize::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_lowered_only_when_it_does_not_fit() {
        assert_eq!(budget_for(20_000, 1_048_576).max_connections, 20_000);
        assert_eq!(budget_for(20_000, 1_024).max_connections, 512);
        assert_eq!(budget_for(100, 1_024).max_connections, 100);
        assert_eq!(
            budget_for(20_000, 100).max_connections,
            16,
            "never below a few"
        );
    }
}
