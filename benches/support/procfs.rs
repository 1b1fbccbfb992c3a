//! Readings from Linux's /proc: a process's memory and CPU time, and how
//! busy the whole machine was.

use std::fs;

use anyhow::{Context as _, bail};
use serde::Serialize;

/// Clock ticks per second of /proc's CPU times. Linux fixes USER_HZ at 100
/// in its user-space ABI whatever the kernel's internal tick rate.
const USER_HZ: f64 = 100.0;

const KIB_PER_MIB: f64 = 1024.0;

/// A process's resident memory now and at its peak.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_mib: f64,
    /// `VmHWM`: the highest resident size so far.
    pub peak_rss_mib: f64,
    /// `RssAnon`: the part of `VmRSS` that is the heap, stacks and other
    /// private memory (the rest is mostly the binary's own pages).
    pub anon_mib: f64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line =
            status.lines().find_map(|line| line.strip_prefix(name)).with_context(|| format!("{name} in {path}"))?;
        let kib: f64 =
            line.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("{name} in {path}"))?;
        Ok(kib / KIB_PER_MIB)
    };
    Ok(Memory { rss_mib: field("VmRSS:")?, peak_rss_mib: field("VmHWM:")?, anon_mib: field("RssAnon:")? })
}

/// Resets a process's `VmHWM` to its resident size now (Linux's
/// `clear_refs`, value 5), so that the next reading is the peak since.
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    fs::write(&path, "5").with_context(|| format!("writing 5 to {path} (needs to own the process)"))
}

/// User plus system CPU seconds a process (all its threads) has used.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name is in parentheses and may hold spaces: fields are
    // counted from the last ')'; there, index 0 is field 3 (state), so
    // utime (field 14) is index 11 and stime index 12.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    if fields.len() < 13 {
        bail!("unexpected {path}: {stat}");
    }
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / USER_HZ)
}

/// The machine's CPU counters at one moment (the `cpu` line of /proc/stat).
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
        let values: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal …: idle and iowait
        // are the time nothing ran.
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        let total: u64 = values.iter().take(8).sum();
        Ok(Self { busy: total - idle, total })
    }

    /// The fraction of all cores' time spent busy since `earlier`.
    pub fn busy_since(&self, earlier: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 { 0.0 } else { self.busy.saturating_sub(earlier.busy) as f64 / total as f64 }
    }
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes).
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Logical CPUs available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}
