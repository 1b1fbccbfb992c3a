//! Server processes that cannot outlive the process that started them.
//!
//! Rust never drops statics, and a test binary may also die from a panic, an
//! abort or a SIGKILL, so `Drop` alone cannot guarantee that etcd and
//! kube-apiserver stop. Each server is therefore started through a tiny shell
//! watchdog: the shell forks a watcher that reads the stdin pipe we hold, then
//! `exec`s the server, so the server keeps the shell's pid (and is our direct
//! child). The kernel closes our end of the pipe however we exit; the watcher
//! then sees EOF and terminates the server. `PR_SET_PDEATHSIG` would not do:
//! it fires when the spawning *thread* exits, and test threads come and go.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// `sh -c` script: `$1` is a directory to delete once the server is gone
/// (empty: keep it), the rest is the server's command line.
///
/// The watcher's stdin must be duplicated from fd 3: a background list in a
/// non-interactive shell gets /dev/null as stdin before its own redirections
/// apply, so `<&0` would read /dev/null. `$$` is the shell's pid, which the
/// server inherits through `exec`.
///
/// A `stop` line before EOF is an orderly [`Server::stop`]: TERM, for a
/// graceful shutdown (what an apiserver restart should look like), then KILL
/// if the server is still there after 10 s. A bare EOF means the owner died:
/// KILL at once, since nobody will use the data again and kube-apiserver
/// shuts down slowly once etcd is gone. The watcher ignores TERM and HUP (a
/// background job already ignores INT): a signal to the whole process group,
/// as `timeout`, a cancelled CI job or a closed terminal sends, must not end
/// it before it has cleaned up. A dead server stays a zombie until
/// its new parent reaps it, and `kill -0` succeeds on zombies, so `alive`
/// also reads the process state where /proc exists.
const WATCHDOG: &str = r#"
cleanup=$1
shift
alive() {
	kill -0 "$1" 2>/dev/null || return 1
	[ -r "/proc/$1/stat" ] || return 0
	stat=$(cat "/proc/$1/stat" 2>/dev/null)
	stat=${stat##*) }
	[ "${stat%% *}" != Z ]
}
exec 3<&0
(
	trap '' TERM HUP
	signal=KILL
	while read -r request; do
		if [ "$request" = stop ]; then signal=TERM; fi
	done
	if kill -$signal $$ 2>/dev/null; then
		i=0
		while alive $$ && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		if alive $$; then kill -KILL $$ 2>/dev/null; fi
	fi
	if [ -n "$cleanup" ]; then rm -rf -- "$cleanup"; fi
) <&3 >/dev/null 2>&1 &
exec "$@" </dev/null 3<&-
"#;

/// How long `stop` waits for a graceful exit before it kills the server.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running server (etcd, kube-apiserver, or any other process a test must
/// not leak, such as PostgreSQL, coderd and Coder agents) guarded by the
/// watchdog.
#[derive(Debug)]
pub struct Server {
    name: &'static str,
    child: Child,
    /// Our end of the watchdog's pipe: closing it stops the server.
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl Server {
    /// Starts `program args…` with its output appended to `log`. `cleanup`
    /// names a directory the watchdog deletes once the server has stopped
    /// because this process went away or called [`Server::stop`].
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        log: &Path,
        cleanup: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log, cleanup)
    }

    /// [`Server::spawn`], with `env` added to the inherited environment.
    pub fn spawn_with_env(
        name: &'static str,
        program: &Path,
        args: &[OsString],
        env: &[(OsString, OsString)],
        log: &Path,
        cleanup: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(format!("{name}-watchdog"))
            .arg(cleanup.map(Path::as_os_str).unwrap_or_default())
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let mut server = Server { name, child, lifeline: None, log: log.to_owned() };
        server.lifeline = server.child.stdin.take();
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the server has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the server and waits for it: gracefully through the watchdog,
    /// forcibly after [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        if let Some(mut lifeline) = self.lifeline.take() {
            // Ask for the graceful path; if the watchdog is gone, the
            // server is stopped below all the same.
            let _ = lifeline.write_all(b"stop\n");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Ok(Some(_)) | Err(_) => return,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// An error describing why the server is not usable, with its log's tail.
    pub fn failure(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "{what}\n--- last lines of {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            log_tail(&self.log, 40)
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file (reads at most its last 64 KiB).
fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(log unavailable: {err})"),
    }
}
