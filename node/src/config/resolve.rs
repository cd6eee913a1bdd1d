//! How a node's settings are resolved: flags and environment over the TOML file over
//! defaults, each value parsed and checked.

use super::*;

impl ServeArgs {
    /// Fills what flags and environment left unset from the TOML file, then applies defaults.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let m = self.over(file);
        let (pulse_timeout, sweep_period, dead_after) = timers(&m)?;
        let ws_standby = m.ws_standby.unwrap_or(1);
        if !(0..=100).contains(&ws_standby) {
            return Err(ConfigError::Invalid {
                setting: "ws_standby",
                message: format!("{ws_standby} is not between 0 and 100"),
            });
        }
        Ok(NodeConfig {
            listen: address(
                "listen",
                m.listen.clone().unwrap_or_else(|| "127.0.0.1:8000".into()),
            )?,
            store: store_config(&m)?,
            jwt_secret: secret(
                "jwt_secret",
                m.jwt_secret.clone(),
                |s| s.len(),
                MIN_JWT_SECRET_BYTES,
                "bytes; use at least {MIN} random bytes (or leave it unset to have one \
                 generated and kept in the store)",
            )?,
            jwt_ttl: duration("jwt_ttl", m.jwt_ttl.clone(), "12h")?,
            max_upload_bytes: byte_size("max_upload", m.max_upload.as_deref().unwrap_or("1GiB"))?,
            server_limits: server_limits(&m, pulse_timeout)?,
            body_timeout: duration("http_body_timeout", m.http_body_timeout.clone(), "30s")?,
            upload_timeout: duration("upload_timeout", m.upload_timeout.clone(), "1h")?,
            csv_limits: CsvLimits {
                max_columns: bounded("max_columns", m.max_columns, 512, 1..=100_000)?,
                max_field_bytes: size_or("max_field", m.max_field.clone(), "32KiB")?,
                max_row_bytes: size_or("max_row", m.max_row.clone(), "64KiB")?,
            },
            payload_limits: PayloadLimits {
                max_observation_bytes: size_or(
                    "max_observation",
                    m.max_observation.clone(),
                    "64KiB",
                )?,
                max_output_bytes: size_or("max_output", m.max_output.clone(), "64KiB")?,
                // serde_json reads at most 128 levels, and a chunk's text wraps an output in 3.
                max_output_depth: bounded("max_output_depth", m.max_output_depth, 32, 1..=100)?,
            },
            pulse_timeout,
            stale_upload_after: duration(
                "stale_upload_after",
                m.stale_upload_after.clone(),
                "10m",
            )?,
            lease_ttl: duration("lease_ttl", m.lease_ttl.clone(), "5m")?,
            sweep_period,
            retry_backoff: duration("retry_backoff", m.retry_backoff.clone(), "5s")?,
            ws_standby,
            recount_period: duration("recount_period", m.recount_period.clone(), "10s")?,
            node_id: m
                .node_id
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("node-{:06x}", rand_suffix())),
            advertise: advertise(m.advertise.clone())?,
            dead_after,
            cluster: cluster_config(
                m.cluster_listen.clone(),
                m.cluster_advertise.clone(),
                m.cluster_cookie.clone(),
            )?,
            admin_password: secret(
                "admin_password",
                m.admin_password.clone(),
                |s| s.chars().count(),
                MIN_ADMIN_PASSWORD_CHARS,
                "characters; use at least {MIN} (or leave it unset to have one generated and \
                 printed once)",
            )?,
            log: m
                .log
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_LOG.into()),
            log_format: log_format(m.log_format.as_deref().unwrap_or("text"))?,
            access_log: m.access_log.unwrap_or(false),
            metrics_listen: match m.metrics_listen.clone().filter(|s| !s.is_empty()) {
                Some(text) => Some(address("metrics_listen", text)?),
                None => None,
            },
        })
    }

    /// `self` wins field by field; `lower` fills the gaps.
    fn over(self, lower: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            listen: self.listen.or(lower.listen),
            db: self.db.or(lower.db),
            db_user: self.db_user.or(lower.db_user),
            db_pass: self.db_pass.or(lower.db_pass),
            db_namespace: self.db_namespace.or(lower.db_namespace),
            db_database: self.db_database.or(lower.db_database),
            db_memtable: self.db_memtable.or(lower.db_memtable),
            db_cache: self.db_cache.or(lower.db_cache),
            jwt_secret: self.jwt_secret.or(lower.jwt_secret),
            jwt_ttl: self.jwt_ttl.or(lower.jwt_ttl),
            max_upload: self.max_upload.or(lower.max_upload),
            http_idle_timeout: self.http_idle_timeout.or(lower.http_idle_timeout),
            http_io_timeout: self.http_io_timeout.or(lower.http_io_timeout),
            http_body_timeout: self.http_body_timeout.or(lower.http_body_timeout),
            upload_timeout: self.upload_timeout.or(lower.upload_timeout),
            max_connections: self.max_connections.or(lower.max_connections),
            shutdown_grace: self.shutdown_grace.or(lower.shutdown_grace),
            max_columns: self.max_columns.or(lower.max_columns),
            max_field: self.max_field.or(lower.max_field),
            max_row: self.max_row.or(lower.max_row),
            max_observation: self.max_observation.or(lower.max_observation),
            max_output: self.max_output.or(lower.max_output),
            max_output_depth: self.max_output_depth.or(lower.max_output_depth),
            pulse_timeout: self.pulse_timeout.or(lower.pulse_timeout),
            stale_upload_after: self.stale_upload_after.or(lower.stale_upload_after),
            lease_ttl: self.lease_ttl.or(lower.lease_ttl),
            sweep_period: self.sweep_period.or(lower.sweep_period),
            retry_backoff: self.retry_backoff.or(lower.retry_backoff),
            ws_standby: self.ws_standby.or(lower.ws_standby),
            recount_period: self.recount_period.or(lower.recount_period),
            node_id: self.node_id.or(lower.node_id),
            advertise: self.advertise.or(lower.advertise),
            dead_after: self.dead_after.or(lower.dead_after),
            cluster_listen: self.cluster_listen.or(lower.cluster_listen),
            cluster_advertise: self.cluster_advertise.or(lower.cluster_advertise),
            cluster_cookie: self.cluster_cookie.or(lower.cluster_cookie),
            admin_password: self.admin_password.or(lower.admin_password),
            log: self.log.or(lower.log),
            log_format: self.log_format.or(lower.log_format),
            access_log: self.access_log.or(lower.access_log),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
        }
    }
}

/// The settings of a TOML file.
fn read_file(path: &PathBuf) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    toml::from_str::<ServeArgs>(&text).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// The pulse timeout, the sweep period and the dead-node time, which must span three sweeps.
fn timers(m: &ServeArgs) -> Result<(Duration, Duration, Duration), ConfigError> {
    let pulse_timeout = duration("pulse_timeout", m.pulse_timeout.clone(), "30s")?;
    let sweep_period = duration("sweep_period", m.sweep_period.clone(), "1s")?;
    let dead_after = duration("dead_after", m.dead_after.clone(), "5s")?;
    if dead_after < sweep_period * 3 {
        return Err(ConfigError::Invalid {
            setting: "dead_after",
            message: format!(
                "must be at least three sweep periods ({})",
                humantime::format_duration(sweep_period * 3)
            ),
        });
    }
    Ok((pulse_timeout, sweep_period, dead_after))
}

/// A socket address setting.
fn address(setting: &'static str, text: String) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|e| ConfigError::Invalid {
        setting,
        message: format!("'{text}' is not an address: {e}"),
    })
}

/// The store: a URL this node can open, its credentials and the engine's memory.
fn store_config(m: &ServeArgs) -> Result<StoreConfig, ConfigError> {
    let url =
        m.db.clone()
            .unwrap_or_else(|| "surrealkv://./data/orchestrator".into());
    if !(url.starts_with("surrealkv://") && url.len() > "surrealkv://".len()
        || url == "mem://"
        || url.starts_with("ws://")
        || url.starts_with("wss://"))
    {
        return Err(ConfigError::Invalid {
            setting: "db",
            message: format!("'{url}' is not surrealkv://PATH, mem:// or ws://HOST:PORT"),
        });
    }
    Ok(StoreConfig {
        url,
        username: m.db_user.clone().unwrap_or_else(|| "root".into()),
        password: m.db_pass.clone().unwrap_or_else(|| "root".into()),
        namespace: m
            .db_namespace
            .clone()
            .unwrap_or_else(|| "orchestrator".into()),
        database: m
            .db_database
            .clone()
            .unwrap_or_else(|| "orchestrator".into()),
        memtable_bytes: byte_size("db_memtable", m.db_memtable.as_deref().unwrap_or("64MiB"))?,
        block_cache_bytes: byte_size("db_cache", m.db_cache.as_deref().unwrap_or("64MiB"))?,
    })
}

/// The HTTP server's timeouts and connection cap.
fn server_limits(m: &ServeArgs, pulse_timeout: Duration) -> Result<ServerLimits, ConfigError> {
    let limits = ServerLimits {
        idle_timeout: duration("http_idle_timeout", m.http_idle_timeout.clone(), "30s")?,
        io_timeout: duration("http_io_timeout", m.http_io_timeout.clone(), "120s")?,
        max_connections: bounded("max_connections", m.max_connections, 20_000, 1..=1_000_000)?,
        grace: duration("shutdown_grace", m.shutdown_grace.clone(), "10s")?,
    };
    // A parked claim waits up to 60 s and a WebSocket robot is pinged every third of the pulse
    // timeout: neither may look like a stalled connection.
    let floor = pulse_timeout.max(Duration::from_secs(60));
    if limits.io_timeout <= floor {
        return Err(ConfigError::Invalid {
            setting: "http_io_timeout",
            message: format!(
                "must be longer than 60s and than the pulse timeout ({})",
                humantime::format_duration(pulse_timeout)
            ),
        });
    }
    Ok(limits)
}

/// A secret setting: unset (or empty) is `None`; a set one must be at least `min` long as
/// `measure` counts. `unit` says in what and how to do better (`{MIN}` is replaced by `min`).
fn secret(
    setting: &'static str,
    value: Option<String>,
    measure: fn(&str) -> usize,
    min: usize,
    unit: &str,
) -> Result<Option<String>, ConfigError> {
    match value.filter(|s| !s.is_empty()) {
        Some(secret) if measure(&secret) < min => Err(ConfigError::Invalid {
            setting,
            message: format!(
                "is {} {}",
                measure(&secret),
                unit.replace("{MIN}", &min.to_string())
            ),
        }),
        secret => Ok(secret),
    }
}

/// The HTTP address this node advertises in its cluster row.
fn advertise(url: Option<String>) -> Result<Option<String>, ConfigError> {
    match url.filter(|s| !s.is_empty()) {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
            Err(ConfigError::Invalid {
                setting: "advertise",
                message: format!("'{url}' is not an http:// or https:// address"),
            })
        }
        url => Ok(url),
    }
}

fn log_format(text: &str) -> Result<LogFormat, ConfigError> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(ConfigError::Invalid {
            setting: "log_format",
            message: format!("'{other}' is not text or json"),
        }),
    }
}

/// The cluster listener from its three settings: all or nothing (the cookie is what turns hints
/// on), with a cookie long enough to be a secret and an address the other nodes can dial.
fn cluster_config(
    listen: Option<String>,
    advertise: Option<String>,
    cookie: Option<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let listen = listen.filter(|s| !s.is_empty());
    let advertise = advertise.filter(|s| !s.is_empty());
    let Some(cookie) = cookie.filter(|s| !s.is_empty()) else {
        if listen.is_some() || advertise.is_some() {
            return Err(ConfigError::Invalid {
                setting: "cluster_cookie",
                message: "is needed with cluster_listen or cluster_advertise".into(),
            });
        }
        return Ok(None);
    };
    if cookie.chars().count() < MIN_CLUSTER_COOKIE_CHARS {
        return Err(ConfigError::Invalid {
            setting: "cluster_cookie",
            message: format!(
                "is {} characters; use at least {MIN_CLUSTER_COOKIE_CHARS}",
                cookie.chars().count()
            ),
        });
    }
    let Some(listen_text) = listen else {
        return Err(ConfigError::Invalid {
            setting: "cluster_listen",
            message: "is needed with cluster_cookie, e.g. 0.0.0.0:7100".into(),
        });
    };
    let listen: SocketAddr = listen_text.parse().map_err(|e| ConfigError::Invalid {
        setting: "cluster_listen",
        message: format!("'{listen_text}' is not an address: {e}"),
    })?;
    if listen.port() == 0 {
        return Err(ConfigError::Invalid {
            setting: "cluster_listen",
            message: "needs a fixed port: the other nodes dial it".into(),
        });
    }
    let advertise = match advertise {
        Some(addr) => {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(ConfigError::Invalid {
                    setting: "cluster_advertise",
                    message: format!("'{addr}' is not host:port"),
                });
            }
            addr
        }
        None if listen.ip().is_unspecified() => {
            return Err(ConfigError::Invalid {
                setting: "cluster_advertise",
                message: format!(
                    "is needed when cluster_listen is the wildcard {listen}: the address \
                     other nodes dial"
                ),
            });
        }
        None => listen.to_string(),
    };
    Ok(Some(ClusterConfig {
        listen,
        advertise,
        cookie,
    }))
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or_default()
        & 0xff_ffff
}

/// A size setting in bytes as `usize`, with its default.
fn size_or(
    setting: &'static str,
    text: Option<String>,
    default: &str,
) -> Result<usize, ConfigError> {
    let bytes = byte_size(setting, text.as_deref().unwrap_or(default))?;
    usize::try_from(bytes).map_err(|_| ConfigError::Invalid {
        setting,
        message: format!("{bytes} bytes is more than this machine can address"),
    })
}

/// A count setting within `range`, with its default.
fn bounded(
    setting: &'static str,
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    let value = value.unwrap_or(default);
    if !range.contains(&value) {
        return Err(ConfigError::Invalid {
            setting,
            message: format!(
                "{value} is not between {} and {}",
                range.start(),
                range.end()
            ),
        });
    }
    Ok(value)
}

/// Parses `500ms`, `3s`, `5m`, `12h`; zero is refused.
pub fn duration(
    setting: &'static str,
    text: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = text.unwrap_or_else(|| default.to_string());
    let parsed = humantime::parse_duration(text.trim()).map_err(|e| ConfigError::Invalid {
        setting,
        message: format!("'{text}' is not a duration like 500ms, 3s or 5m: {e}"),
    })?;
    if parsed.is_zero() {
        return Err(ConfigError::Invalid {
            setting,
            message: "must be longer than zero".into(),
        });
    }
    Ok(parsed)
}

/// Parses `1048576`, `64KiB`, `500MB`, `1GiB` (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024).
pub fn byte_size(setting: &'static str, text: &str) -> Result<u64, ConfigError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if factor > 0 && n > 0 => Ok(n.saturating_mul(factor)),
        _ => Err(ConfigError::Invalid {
            setting,
            message: format!("'{text}' is not a size like 1048576, 500MB or 1GiB"),
        }),
    }
}
