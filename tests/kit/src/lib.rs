//! The test kit shared by `tests/`, `node/tests` and `ops/tests`: waiting until a condition holds
//! (never a fixed sleep before an assertion), checking that something holds throughout a named
//! observation window, and child processes (a node binary, a `surreal` server) that are killed
//! when the test ends.

use anyhow::{Result, bail, ensure};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("condition not met within {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` until it returns `Ok(value)`; `Err(seen)` says what it saw instead. After
/// `deadline` it fails with `what` and the last thing seen.
pub async fn until<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<std::result::Result<T, String>>>,
{
    let start = Instant::now();
    loop {
        let seen = match check().await? {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if start.elapsed() > deadline {
            bail!("{what}: not within {deadline:?}; last seen: {seen}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `check` holds throughout `window` (a test that something does *not* happen
/// names how long it watched); fails at the first moment it does not.
pub async fn throughout<F, Fut>(window: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    while start.elapsed() < window {
        ensure!(
            check().await?,
            "{what}: broken after {:?} of {window:?}",
            start.elapsed()
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process, continued and killed when dropped (a test that failed while the process
/// was stopped leaves nothing behind).
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends `signal` (`TERM`, `STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Best effort: the process may have ended already.
        let _ = self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` with its standard output read line by line into the returned channel.
pub fn spawn_with_lines(command: &mut Command) -> Result<(Child, mpsc::Receiver<String>)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The test may have stopped listening; the rest of the output is not needed.
            let _ = tx.send(line);
        }
    });
    Ok((child, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn until_names_what_it_saw_last() {
        let mut n = 0;
        let err = until(Duration::from_millis(60), "n reaches 1000", || {
            n += 1;
            let seen = n;
            async move { Ok(Err::<(), String>(format!("n = {seen}"))) }
        })
        .await
        .expect_err("never");
        assert!(err.to_string().contains("n reaches 1000"), "{err}");
        assert!(err.to_string().contains("last seen: n = "), "{err}");
        let done: u32 = until(Duration::from_secs(1), "ready", || async { Ok(Ok(7)) })
            .await
            .expect("at once");
        assert_eq!(done, 7);
    }

    #[tokio::test]
    async fn throughout_fails_at_the_first_break() {
        let mut n = 0;
        let err = throughout(Duration::from_secs(5), "n stays small", || {
            n += 1;
            let small = n < 3;
            async move { Ok(small) }
        })
        .await
        .expect_err("broken");
        assert!(err.to_string().contains("n stays small"), "{err}");
        throughout(Duration::from_millis(50), "true", || async { Ok(true) })
            .await
            .expect("holds");
    }
}
