use super::*;

#[test]
fn durations_and_sizes_parse() {
    assert_eq!(
        duration("x", Some("500ms".into()), "1s").ok(),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        duration("x", None, "5m").ok(),
        Some(Duration::from_secs(300))
    );
    assert!(duration("x", Some("soon".into()), "1s").is_err());
    assert!(duration("x", Some("0s".into()), "1s").is_err());
    assert_eq!(byte_size("x", "1GiB").ok(), Some(1 << 30));
    assert_eq!(byte_size("x", "500MB").ok(), Some(500_000_000));
    assert_eq!(byte_size("x", "1048576").ok(), Some(1 << 20));
    assert!(byte_size("x", "lots").is_err());
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9100\"\npulse_timeout = \"3s\"\ndb = \"mem://\"\n",
    )
    .expect("write");
    let flags = ServeArgs {
        config: Some(path),
        pulse_timeout: Some("500ms".into()),
        ..ServeArgs::default()
    };
    let config = flags.resolve().expect("valid");
    assert_eq!(config.listen.port(), 9100);
    assert_eq!(config.pulse_timeout, Duration::from_millis(500));
    assert_eq!(config.store.url, "mem://");
    assert_eq!(config.jwt_ttl, Duration::from_secs(12 * 3600));
}

#[test]
fn logging_and_metrics_settings_parse_from_flags_env_and_file() {
    use clap::Parser;
    let cli = Cli::try_parse_from([
        "orchestrator",
        "serve",
        "--db",
        "mem://",
        "--access-log",
        "--log-format",
        "json",
        "--metrics-listen",
        "127.0.0.1:9100",
    ])
    .expect("flags");
    let Command::Serve(args) = cli.command else {
        panic!("serve");
    };
    let config = args.resolve().expect("valid");
    assert!(config.access_log);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.metrics_listen, "127.0.0.1:9100".parse().ok());
    assert_eq!(config.log, DEFAULT_LOG);
    // Operators write 1/0, yes/no, on/off in environment files.
    for (text, expected) in [("1", true), ("on", true), ("no", false), ("false", false)] {
        let cli =
            Cli::try_parse_from(["orchestrator", "serve", "--access-log", text]).expect("boolish");
        let Command::Serve(args) = cli.command else {
            panic!("serve");
        };
        assert_eq!(args.access_log, Some(expected), "{text}");
    }
    // TOML, and refusals naming the setting.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "db = \"mem://\"\naccess_log = true\nlog_format = \"xml\"\n",
    )
    .expect("write");
    let err = ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().starts_with("log_format: "), "{err}");
    let err = ServeArgs {
        db: Some("mem://".into()),
        metrics_listen: Some("anywhere".into()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().starts_with("metrics_listen: "), "{err}");
}

#[test]
fn bad_settings_are_named() {
    let err = ServeArgs {
        db: Some("postgres://x".into()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().starts_with("db: "), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "lisen = \"x\"\n").expect("write");
    let err = ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn weak_secrets_are_refused_at_start() {
    let err = ServeArgs {
        jwt_secret: Some("short-secret".into()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(
        err.to_string().starts_with("jwt_secret: is 12 bytes"),
        "{err}"
    );
    let err = ServeArgs {
        admin_password: Some("admin".into()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("admin_password: is 5 characters"),
        "{err}"
    );
    let ok = ServeArgs {
        jwt_secret: Some("x".repeat(MIN_JWT_SECRET_BYTES)),
        admin_password: Some("correct horse battery".into()),
        ..ServeArgs::default()
    }
    .resolve();
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn cluster_hints_need_a_cookie_a_fixed_port_and_a_dialable_address() {
    let resolve = |listen: Option<&str>, advertise: Option<&str>, cookie: Option<&str>| {
        ServeArgs {
            cluster_listen: listen.map(str::to_string),
            cluster_advertise: advertise.map(str::to_string),
            cluster_cookie: cookie.map(str::to_string),
            ..ServeArgs::default()
        }
        .resolve()
        .map(|c| c.cluster)
    };
    let cookie = Some("a cookie of 24 characters");
    assert!(resolve(None, None, None).expect("alone").is_none());
    let refused = [
        (
            Some("127.0.0.1:7100"),
            None,
            None,
            "cluster_cookie: is needed",
        ),
        (
            Some("127.0.0.1:7100"),
            None,
            Some("short"),
            "cluster_cookie: is 5",
        ),
        (None, None, cookie, "cluster_listen: is needed"),
        (
            Some("127.0.0.1:0"),
            None,
            cookie,
            "cluster_listen: needs a fixed port",
        ),
        (
            Some("0.0.0.0:7100"),
            None,
            cookie,
            "cluster_advertise: is needed",
        ),
        (
            Some("0.0.0.0:7100"),
            Some("n1"),
            cookie,
            "cluster_advertise: 'n1'",
        ),
    ];
    for (listen, advertise, cookie, expected) in refused {
        let err = resolve(listen, advertise, cookie).unwrap_err();
        assert!(err.to_string().starts_with(expected), "{err}");
    }
    let on = resolve(Some("0.0.0.0:7100"), Some("n1:7100"), cookie)
        .expect("valid")
        .expect("on");
    assert_eq!((on.listen.port(), on.advertise.as_str()), (7100, "n1:7100"));
    assert!(
        !format!("{on:?}").contains("24 characters"),
        "cookie in Debug"
    );
    let local = resolve(Some("127.0.0.1:7101"), None, cookie)
        .expect("valid")
        .expect("on");
    assert_eq!(local.advertise, "127.0.0.1:7101");
}
