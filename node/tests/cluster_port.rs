//! The cluster port under a flood, with the node's open-files limit lowered to 1,024: thousands
//! of connections that never complete the cluster handshake. Before, the cluster listener
//! accepted every one and held it for ever; once out of descriptors its accept loop logged
//! "Error accepting socket Too many open files" millions of times (666 MB in 23 s) and
//! `/healthz` hung. Now the node lowers its connection cap to fit the limit, closes cluster
//! connections over the cap on handshakes at once and the rest after the handshake deadline,
//! and a failing accept waits and logs once in a while.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET /healthz` over a plain socket; the time it took, or an error.
fn health(addr: &str, within: Duration) -> anyhow::Result<Duration> {
    use std::io::Write;
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(within))?;
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    socket.read_to_string(&mut answer)?;
    anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "healthz: {answer}");
    Ok(started.elapsed())
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_flood_of_idle_cluster_connections_leaves_the_node_answering() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("node.log");
    let (http, cluster) = (free_port()?, free_port()?);
    let command = format!(
        "ulimit -n 1024 && exec {bin} serve --db mem:// --listen 127.0.0.1:{http} \
         --cluster-listen 127.0.0.1:{cluster} --cluster-cookie a-cookie-for-this-test-only",
        bin = env!("CARGO_BIN_EXE_orchestrator"),
    );
    let mut child = Command::new("bash")
        .args(["-c", &command])
        .env("ORCH_ADMIN_PASSWORD", "a-long-admin-password")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&log_path)?)
        .stderr(Stdio::null())
        .spawn()?;
    let addr = format!("127.0.0.1:{http}");
    let result = (|| -> anyhow::Result<()> {
        let started = Instant::now();
        while health(&addr, Duration::from_secs(2)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "node never ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let at_rest = open_files(child.id());
        let mut flood = Vec::new();
        let flooding = Instant::now();
        for _ in 0..2_600 {
            // A node that stopped accepting leaves each connect to time out: stop trying.
            if flooding.elapsed() > Duration::from_secs(20) {
                break;
            }
            // The kernel may refuse some once the backlog is full: that is the node's right.
            if let Ok(socket) = TcpStream::connect_timeout(
                &format!("127.0.0.1:{cluster}").parse()?,
                Duration::from_secs(1),
            ) {
                flood.push(socket);
            }
        }
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            slowest = slowest.max(health(&addr, Duration::from_secs(5))?);
            std::thread::sleep(Duration::from_millis(300));
        }
        anyhow::ensure!(
            slowest < Duration::from_secs(2),
            "/healthz took {slowest:?} during the flood of {} connections",
            flood.len()
        );
        let peak = open_files(child.id());
        anyhow::ensure!(
            peak < at_rest + 200,
            "the node holds {peak} files during the flood ({at_rest} at rest)"
        );
        // Past the handshake deadline, even the connections let in to handshake are closed.
        std::thread::sleep(Duration::from_secs(7));
        let after = open_files(child.id());
        anyhow::ensure!(
            after < at_rest + 20,
            "{after} files open after the deadline ({at_rest} at rest)"
        );
        drop(flood);
        health(&addr, Duration::from_secs(2))?;
        let log = std::fs::metadata(&log_path)?.len();
        anyhow::ensure!(log < 1 << 20, "the log grew to {log} bytes");
        let text = std::fs::read_to_string(&log_path)?;
        anyhow::ensure!(
            text.contains("does not fit in the open-files limit"),
            "the lowered connection cap is said at start: {text}"
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
