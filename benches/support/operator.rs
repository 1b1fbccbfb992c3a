//! The operator binary run as its own process, as a pod runs it, so the
//! benchmark measures the real binary's memory and CPU apart from the
//! simulator and the watcher that share the benchmark's process.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// `sh -c` script that ties the operator's life to ours (the same scheme as
/// the test bed's servers): a background watcher reads the pipe we hold on
/// its stdin and sends TERM once it closes, which the kernel does however we
/// exit, SIGKILL included. The shell then `exec`s the operator, which keeps
/// the shell's pid, so `$$` and [`Child::id`] are the operator's own pid (the
/// one whose /proc/<pid>/status is read). fd 3 carries the pipe because a
/// background list in a non-interactive shell gets /dev/null as stdin. The
/// watcher ignores TERM, INT and HUP: `timeout` and Ctrl-C signal the whole
/// process group, and a watcher killed with it could no longer stop an
/// operator that outlives us. An operator still there 10 s after TERM
/// (stuck on a dead apiserver) is killed.
const LIFELINE: &str = r#"
exec 3<&0
(
	trap '' TERM INT HUP
	while read -r _; do :; done
	kill -TERM $$ 2>/dev/null || exit 0
	i=0
	while kill -0 $$ 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	kill -KILL $$ 2>/dev/null
) <&3 >/dev/null 2>&1 &
exec "$@" </dev/null 3<&-
"#;

/// How long a stop waits for the operator's graceful shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The running operator; stopped when dropped, also on a panic.
pub struct OperatorProcess {
    child: Child,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl OperatorProcess {
    /// Starts `binary args…` with exactly `env` as its environment (nothing
    /// inherited, so no stray `CONCURRENCY` or `LEADER_ELECTION` of the
    /// caller changes what is measured) and its output in `log`.
    pub fn spawn(binary: &Path, args: &[String], env: &[(&str, String)], log: &Path) -> anyhow::Result<Self> {
        let output = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(LIFELINE)
            .arg("sh")
            .arg(binary)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(key, value)| (key, value)))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let lifeline = child.stdin.take();
        Ok(Self { child, lifeline, log: log.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails, quoting the end of its log, when the operator has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the operator exited ({status}); the end of {}:\n{}", self.log.display(), tail(&self.log, 4000));
        }
        Ok(())
    }

    /// Waits until `/readyz` on the admin address answers 200: the operator
    /// has listed every ChatWorkspace and starts reconciling.
    pub async fn wait_ready(&mut self, admin: &str, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let url = format!("http://{admin}/readyz");
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the operator was not ready after {timeout:?}; see {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        // Closing the lifeline makes the watcher send TERM while the
        // operator is still our unreaped child, so the signal can never
        // reach a recycled pid.
        drop(self.lifeline.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `bytes` of a file, for error messages.
fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(bytes)));
    let mut text = Vec::new();
    let _ = file.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}
