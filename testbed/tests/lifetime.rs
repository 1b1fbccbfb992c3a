//! etcd and kube-apiserver never outlive the process that started them,
//! however it ends, and their directory goes with them.
//!
//! Each case re-runs this test binary as a child that starts the shared
//! control plane (which is never dropped), prints its pids and directory,
//! and then ends in its own way.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use testbed::ControlPlane;

/// Set in the child: how the child process ends.
const CHILD_MODE: &str = "CWS_TESTBED_LIFETIME_CHILD";
/// Servers get a graceful shutdown of up to 10 s before they are killed.
const GONE_WITHIN: Duration = Duration::from_secs(20);

/// The child's side; ignored in normal runs.
#[test]
#[ignore = "run by the other tests of this file in a child process"]
fn child() {
    let Ok(mode) = env::var(CHILD_MODE) else {
        return;
    };
    let control_plane = ControlPlane::shared();
    let pids: Vec<String> = control_plane.server_pids().iter().map(u32::to_string).collect();
    println!("control-plane {} {}", control_plane.dir().display(), pids.join(" "));
    // The parent checks the servers first; then this process may end.
    std::io::stdin().read_line(&mut String::new()).unwrap();
    match mode.as_str() {
        "return" => {}
        "panic" => panic!("the child panics on purpose"),
        "abort" => std::process::abort(),
        "wait-for-kill" => thread::sleep(Duration::from_secs(300)),
        other => panic!("unknown {CHILD_MODE}={other}"),
    }
}

fn spawn_child(mode: &str) -> Child {
    Command::new(env::current_exe().unwrap())
        .args(["--exact", "child", "--ignored", "--nocapture"])
        .env(CHILD_MODE, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the child's `control-plane <dir> <pid>…` line.
fn read_control_plane(child: &mut Child) -> (PathBuf, Vec<u32>) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("control-plane ") {
            let mut fields = rest.split(' ');
            let dir = PathBuf::from(fields.next().unwrap());
            let pids = fields.map(|pid| pid.parse().unwrap()).collect();
            // Keep reading: a closed pipe would make the child's next
            // println! fail and change how it exits.
            thread::spawn(move || lines.for_each(drop));
            return (dir, pids);
        }
    }
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    panic!("the child never started a control plane: {status}\nstderr: {stderr}");
}

fn describe(output: &Output) -> String {
    format!("{}\nstderr: {}", output.status, String::from_utf8_lossy(&output.stderr))
}

/// Whether `pid` is a live (not zombie) process. Once the child is gone its
/// servers are reparented to init, which reaps them; a zombie waiting for
/// that is already dead.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn assert_cleaned_up(dir: &Path, pids: &[u32]) {
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    let deadline = Instant::now() + GONE_WITHIN;
    while pids.iter().any(|&pid| alive(pid)) || dir.exists() {
        assert!(
            Instant::now() < deadline,
            "after {GONE_WITHIN:?}: alive {:?}, directory exists: {}",
            pids.iter().filter(|&&pid| alive(pid)).collect::<Vec<_>>(),
            dir.exists()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Checks that the child's servers run, then lets the child end.
fn release(child: &mut Child, pids: &[u32]) {
    assert!(pids.iter().all(|&pid| alive(pid)), "servers are running");
    child.stdin.take().unwrap().write_all(b"end\n").unwrap();
}

/// Runs a child that ends by itself and checks what it leaves behind.
fn check_child_ending(mode: &str, expect_success: bool) {
    let mut child = spawn_child(mode);
    let (dir, pids) = read_control_plane(&mut child);
    release(&mut child, &pids);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.success(), expect_success, "{}", describe(&output));
    assert_cleaned_up(&dir, &pids);
}

#[test]
fn nothing_outlives_a_test_process_that_exits_normally() {
    check_child_ending("return", true);
}

#[test]
fn nothing_outlives_a_test_process_that_panics() {
    check_child_ending("panic", false);
}

#[test]
fn nothing_outlives_a_test_process_that_aborts() {
    check_child_ending("abort", false);
}

#[test]
fn nothing_outlives_a_test_process_that_is_killed() {
    let mut child = spawn_child("wait-for-kill");
    let (dir, pids) = read_control_plane(&mut child);
    release(&mut child, &pids);
    child.kill().unwrap(); // SIGKILL: no code of the child runs any more
    child.wait().unwrap();
    assert_cleaned_up(&dir, &pids);
}

#[test]
fn nothing_outlives_a_signal_to_the_whole_process_group() {
    // As `timeout`, a cancelled CI job or a closed terminal do: every process
    // of the group gets TERM, the watchdogs included.
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(env::current_exe().unwrap());
        command
            .args(["--exact", "child", "--ignored", "--nocapture"])
            .env(CHILD_MODE, "wait-for-kill")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        command.spawn().unwrap()
    };
    let (dir, pids) = read_control_plane(&mut child);
    release(&mut child, &pids);
    let group = format!("-{}", child.id());
    let status = Command::new("kill").args(["-TERM", "--", &group]).status().unwrap();
    assert!(status.success(), "kill -TERM -- {group}");
    child.wait().unwrap();
    assert_cleaned_up(&dir, &pids);
}

#[test]
fn dropping_a_private_control_plane_stops_it_at_once() {
    let control_plane = ControlPlane::start().unwrap();
    let dir = control_plane.dir().to_owned();
    let pids = control_plane.server_pids();
    assert!(pids.iter().all(|&pid| alive(pid)), "servers are running");
    drop(control_plane);
    assert!(!pids.iter().any(|&pid| alive(pid)), "servers stopped");
    assert!(!dir.exists(), "{} removed", dir.display());
}

#[test]
fn missing_tools_are_reported_with_how_to_build_them() {
    let output = Command::new(env::current_exe().unwrap())
        .args(["--exact", "child", "--ignored", "--nocapture"])
        .env(CHILD_MODE, "return")
        .env("CWS_TOOLS_BIN", "/nonexistent/tools/bin")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kube-apiserver not found in /nonexistent/tools/bin: run `make tools`"), "{stderr}");
}
