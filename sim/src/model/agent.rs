//! Workspace agents. Nothing runs in the background: an agent is a list of
//! process lifetimes, and its heartbeats, status and lifecycle are computed
//! from them at read time, the way coderd computes status from the
//! timestamps in its database.

use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use crate::Timings;

/// One run of the agent process: it connects at `start` and heartbeats every
/// heartbeat interval until it is killed (or the workspace stops).
#[derive(Debug, Clone)]
pub struct Life {
    pub start: Timestamp,
    pub killed_at: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub parent_id: Option<Uuid>,
    pub resource_id: Uuid,
    pub build_id: Uuid,
    pub workspace_id: Uuid,
    /// When the provisioner created it: the completion of its start build.
    pub created_at: Timestamp,
    pub lives: Vec<Life>,
    /// Its startup script exits with an error: each run ends its startup in
    /// `start_error` rather than `ready`.
    pub startup_fails: bool,
}

/// What later builds of the workspace do to an agent: a stop (or delete, or
/// replacing start) shuts it down while it runs and turns it off when it
/// succeeds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shutdown {
    pub shutting_down_since: Option<Timestamp>,
    pub off_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Connecting,
    Connected,
    Disconnected,
    Timeout,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Created,
    Starting,
    StartError,
    Ready,
    ShuttingDown,
    Off,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::StartError => "start_error",
            Self::Ready => "ready",
            Self::ShuttingDown => "shutting_down",
            Self::Off => "off",
        }
    }
}

/// What coderd reports about an agent at one moment.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub status: AgentStatus,
    pub lifecycle: Lifecycle,
    pub first_connected_at: Option<Timestamp>,
    pub last_connected_at: Option<Timestamp>,
    pub disconnected_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub ready_at: Option<Timestamp>,
    /// The process is running, so a dial through coderd could reach it.
    pub alive: bool,
}

impl AgentView {
    /// coderd's health summary of an agent.
    pub fn health_reason(&self) -> Option<&'static str> {
        match (self.status, self.lifecycle) {
            (status, Lifecycle::Off) if status != AgentStatus::Connected => Some("agent is not running"),
            (AgentStatus::Timeout, _) => Some("agent is taking too long to connect"),
            (AgentStatus::Disconnected, _) => Some("agent has lost connection"),
            (_, Lifecycle::StartError) => Some("agent startup script exited with an error"),
            (_, Lifecycle::ShuttingDown | Lifecycle::Off) => Some("agent is shutting down"),
            _ => None,
        }
    }
}

impl Agent {
    /// The agent process dies: heartbeats stop, nothing tells coderd.
    pub fn kill(&mut self, now: Timestamp) {
        let Some(life) = self.lives.last_mut() else {
            return;
        };
        if life.killed_at.is_some() {
            return;
        }
        if life.start > now {
            // Died before it ever connected.
            self.lives.pop();
        } else {
            life.killed_at = Some(now);
        }
    }

    /// The agent process respawns with the same id and connects again.
    pub fn revive(&mut self, now: Timestamp) {
        if self.lives.last().is_some_and(|life| life.killed_at.is_none()) {
            return;
        }
        self.lives.push(Life { start: now, killed_at: None });
    }

    pub fn view(&self, now: Timestamp, timings: &Timings, shutdown: Shutdown) -> AgentView {
        let heartbeat = signed(timings.heartbeat_interval);
        let inactive = signed(timings.inactive_timeout);
        let off_at = shutdown.off_at.filter(|&off| off <= now);
        // Nothing is heard from the agent after its workspace stopped.
        let horizon = off_at.unwrap_or(now);

        let lives: Vec<Run> = self
            .lives
            .iter()
            .filter(|life| life.start <= horizon)
            .map(|life| {
                let killed_at = life.killed_at.filter(|&killed| killed <= horizon);
                let end = killed_at.unwrap_or(horizon);
                Run {
                    start: life.start,
                    end,
                    killed: killed_at.is_some(),
                    last_beat: last_beat(life.start, end, heartbeat),
                }
            })
            .collect();

        // The disconnections coderd has noticed: a graceful one when the
        // workspace stopped, and a dead process once it stayed silent past
        // the inactive timeout (before it respawned, if it did).
        let mut noticed = off_at;
        for (index, run) in lives.iter().enumerate() {
            let next_contact = lives.get(index + 1).map_or(now, |next| next.start);
            if run.killed && next_contact.duration_since(run.last_beat) > inactive {
                noticed = noticed.max(Some(run.last_beat));
            }
        }

        let first_connected_at = lives.first().map(|run| run.start);
        let last_connected_at = lives.last().map(|run| run.last_beat);
        let (status, disconnected_at) = match last_connected_at {
            None => {
                let timeout = SignedDuration::from_secs(i64::from(timings.connection_timeout_seconds));
                let timed_out = timings.connection_timeout_seconds > 0 && now.duration_since(self.created_at) > timeout;
                let status = if timed_out { AgentStatus::Timeout } else { AgentStatus::Connecting };
                (status, None)
            }
            Some(last) => match noticed {
                Some(disconnected) if disconnected >= last => (AgentStatus::Disconnected, Some(disconnected)),
                _ if now.duration_since(last) > inactive => (AgentStatus::Disconnected, Some(last)),
                _ => (AgentStatus::Connected, noticed),
            },
        };

        let startup = signed(timings.agent_startup);
        let current = lives.last();
        let lifecycle = if off_at.is_some() {
            Lifecycle::Off
        } else if shutdown.shutting_down_since.is_some_and(|since| since <= now) {
            Lifecycle::ShuttingDown
        } else {
            match current {
                None => Lifecycle::Created,
                // A respawned agent runs its startup scripts again.
                Some(run) if run.end.duration_since(run.start) < startup => Lifecycle::Starting,
                Some(_) if self.startup_fails => Lifecycle::StartError,
                Some(_) => Lifecycle::Ready,
            }
        };
        let alive =
            off_at.is_none() && self.lives.last().is_some_and(|life| life.start <= now && life.killed_at.is_none());

        AgentView {
            status,
            lifecycle,
            first_connected_at,
            last_connected_at,
            disconnected_at,
            started_at: current.map(|run| run.start),
            ready_at: current
                .map(|run| run.start + startup)
                .filter(|&ready| current.is_some_and(|run| ready <= run.end)),
            alive,
        }
    }
}

struct Run {
    start: Timestamp,
    end: Timestamp,
    killed: bool,
    last_beat: Timestamp,
}

/// The last heartbeat in `[start, end]` for heartbeats every `interval` from `start`.
fn last_beat(start: Timestamp, end: Timestamp, interval: SignedDuration) -> Timestamp {
    let elapsed = end.duration_since(start).as_nanos();
    let interval = interval.as_nanos().max(1);
    let beats = elapsed.max(0) / interval;
    start + SignedDuration::from_nanos_i128(beats * interval)
}

fn signed(duration: std::time::Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_700_000_000_000 + ms).unwrap()
    }

    fn timings() -> Timings {
        Timings {
            heartbeat_interval: std::time::Duration::from_millis(250),
            inactive_timeout: std::time::Duration::from_secs(1),
            agent_startup: std::time::Duration::from_millis(200),
            connection_timeout_seconds: 3,
            ..Timings::fast()
        }
    }

    fn agent(connect_at: Option<i64>) -> Agent {
        Agent {
            id: Uuid::new_v4(),
            name: "main".to_owned(),
            parent_id: None,
            resource_id: Uuid::new_v4(),
            build_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
            created_at: at(0),
            lives: connect_at.map(|ms| Life { start: at(ms), killed_at: None }).into_iter().collect(),
            startup_fails: false,
        }
    }

    #[test]
    fn connecting_then_timeout_when_it_never_connects() {
        let agent = agent(None);
        let t = timings();
        assert_eq!(agent.view(at(100), &t, Shutdown::default()).status, AgentStatus::Connecting);
        assert_eq!(agent.view(at(3_001), &t, Shutdown::default()).status, AgentStatus::Timeout);
        assert_eq!(agent.view(at(3_001), &t, Shutdown::default()).lifecycle, Lifecycle::Created);
    }

    #[test]
    fn heartbeats_advance_last_connected_at() {
        let agent = agent(Some(200));
        let view = agent.view(at(1_000), &timings(), Shutdown::default());
        assert_eq!(view.status, AgentStatus::Connected);
        assert_eq!(view.first_connected_at, Some(at(200)));
        assert_eq!(view.last_connected_at, Some(at(950)));
        assert_eq!(view.lifecycle, Lifecycle::Ready);
        assert!(view.alive);
    }

    #[test]
    fn killed_agent_stays_connected_until_the_inactive_timeout() {
        let mut agent = agent(Some(0));
        agent.kill(at(600));
        let t = timings();
        let soon = agent.view(at(1_400), &t, Shutdown::default());
        assert_eq!(soon.status, AgentStatus::Connected);
        assert!(!soon.alive);
        assert_eq!(soon.last_connected_at, Some(at(500)));
        let later = agent.view(at(1_600), &t, Shutdown::default());
        assert_eq!(later.status, AgentStatus::Disconnected);
        assert_eq!(later.disconnected_at, Some(at(500)));
    }

    #[test]
    fn revived_agent_connects_again_and_remembers_the_outage() {
        let mut agent = agent(Some(0));
        agent.kill(at(600));
        agent.revive(at(3_000));
        let view = agent.view(at(3_100), &timings(), Shutdown::default());
        assert_eq!(view.status, AgentStatus::Connected);
        assert_eq!(view.first_connected_at, Some(at(0)));
        assert_eq!(view.last_connected_at, Some(at(3_000)));
        assert_eq!(view.disconnected_at, Some(at(500)));
        assert_eq!(view.lifecycle, Lifecycle::Starting);
    }

    #[test]
    fn a_failing_startup_script_ends_in_start_error_with_the_agent_connected() {
        let mut agent = agent(Some(0));
        agent.startup_fails = true;
        let t = timings();
        assert_eq!(agent.view(at(100), &t, Shutdown::default()).lifecycle, Lifecycle::Starting);
        let view = agent.view(at(300), &t, Shutdown::default());
        assert_eq!(view.lifecycle, Lifecycle::StartError);
        assert_eq!(view.status, AgentStatus::Connected);
        // coderd stamps ready_at when the startup ends, whatever its outcome.
        assert_eq!(view.ready_at, Some(at(200)));
        assert_eq!(view.health_reason(), Some("agent startup script exited with an error"));
    }

    #[test]
    fn a_stop_disconnects_the_agent_gracefully() {
        let agent = agent(Some(0));
        let shutdown = Shutdown { shutting_down_since: Some(at(1_000)), off_at: Some(at(1_500)) };
        let t = timings();
        assert_eq!(agent.view(at(1_200), &t, shutdown).lifecycle, Lifecycle::ShuttingDown);
        let view = agent.view(at(1_600), &t, shutdown);
        assert_eq!(view.status, AgentStatus::Disconnected);
        assert_eq!(view.disconnected_at, Some(at(1_500)));
        assert_eq!(view.lifecycle, Lifecycle::Off);
        assert!(!view.alive);
    }
}
