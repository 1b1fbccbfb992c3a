//! Runs a local control plane (etcd + kube-apiserver with the project's
//! CRDs) until interrupted: what `make demo` starts, and a quick way to try
//! the CRDs with kubectl.
//!
//! Once the control plane is ready, prints `KUBECONFIG=<path>` as the first
//! line on stdout (progress goes to stderr). Ctrl-C or SIGTERM stops it and
//! deletes its files; if this process is killed outright, the servers'
//! watchdogs stop them all the same.

use std::io::Write as _;

use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let control_plane = testbed::ControlPlane::start()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "KUBECONFIG={}", control_plane.kubeconfig_path().display())?;
    stdout.flush()?;
    eprintln!("testbed: running; Ctrl-C stops it");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    drop(control_plane);
    Ok(())
}
