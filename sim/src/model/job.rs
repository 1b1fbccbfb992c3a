//! Provisioner jobs: their status is computed from timestamps fixed when the
//! job is created (or canceled), so a read at any moment sees the state a
//! real provisioner would have reached by then.

use jiff::Timestamp;
use uuid::Uuid;

/// A workspace build transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start,
    Stop,
    Delete,
}

impl Transition {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "start" => Some(Self::Start),
            "stop" => Some(Self::Stop),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Pending,
    Running,
    Succeeded,
    Canceling,
    Canceled,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Canceling => "canceling",
            Self::Canceled => "canceled",
            Self::Failed => "failed",
        }
    }

    /// Whether a new build must wait for this job (coderd answers 409).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running | Self::Canceling)
    }

    /// The workspace build status for this job status and transition, as in
    /// the table of docs/coder-api.md.
    pub fn build_status(self, transition: Transition) -> &'static str {
        match (self, transition) {
            (Self::Pending, _) => "pending",
            (Self::Running, Transition::Start) => "starting",
            (Self::Running, Transition::Stop) => "stopping",
            (Self::Running, Transition::Delete) => "deleting",
            (Self::Succeeded, Transition::Start) => "running",
            (Self::Succeeded, Transition::Stop) => "stopped",
            (Self::Succeeded, Transition::Delete) => "deleted",
            (Self::Canceling, _) => "canceling",
            (Self::Canceled, _) => "canceled",
            (Self::Failed, _) => "failed",
        }
    }
}

/// A failure decided when the build is created (see `fail_next_build`); it
/// only becomes visible when the job completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub error: String,
    pub error_code: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub file_id: Uuid,
    pub created_at: Timestamp,
    /// When a provisioner picks the job up; `None` if it was canceled first.
    pub started_at: Option<Timestamp>,
    /// When the job ends (succeeded, failed or canceled).
    pub completed_at: Timestamp,
    pub canceled_at: Option<Timestamp>,
    pub failure: Option<JobFailure>,
}

/// What a client sees of a job at one moment.
#[derive(Debug, Clone)]
pub struct JobView {
    pub status: JobStatus,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub canceled_at: Option<Timestamp>,
    pub failure: Option<JobFailure>,
}

impl Job {
    pub fn new(
        created_at: Timestamp,
        pending: std::time::Duration,
        running: std::time::Duration,
        failure: Option<JobFailure>,
    ) -> Self {
        let started_at = super::after(created_at, pending);
        Self {
            id: Uuid::new_v4(),
            file_id: Uuid::new_v4(),
            created_at,
            started_at: Some(started_at),
            completed_at: super::after(started_at, running),
            canceled_at: None,
            failure,
        }
    }

    pub fn status(&self, now: Timestamp) -> JobStatus {
        if self.canceled_at.is_some() {
            return if self.completed_at <= now { JobStatus::Canceled } else { JobStatus::Canceling };
        }
        match self.started_at {
            Some(started) if started > now => JobStatus::Pending,
            _ if self.completed_at > now => JobStatus::Running,
            _ if self.failure.is_some() => JobStatus::Failed,
            _ => JobStatus::Succeeded,
        }
    }

    pub fn view(&self, now: Timestamp) -> JobView {
        let status = self.status(now);
        let completed_at = Some(self.completed_at).filter(|&at| at <= now);
        JobView {
            status,
            started_at: self.started_at.filter(|&at| at <= now),
            completed_at,
            canceled_at: self.canceled_at,
            failure: if status == JobStatus::Failed { self.failure.clone() } else { None },
        }
    }

    /// Cancels the job as coderd does: a pending job ends at once, a running
    /// one is `canceling` until the provisioner stops (after `grace`).
    pub fn cancel(&mut self, now: Timestamp, grace: std::time::Duration) -> Result<(), &'static str> {
        match self.status(now) {
            JobStatus::Pending => {
                self.started_at = None;
                self.completed_at = now;
            }
            JobStatus::Running => self.completed_at = super::after(now, grace),
            JobStatus::Canceling | JobStatus::Canceled => {
                return Err("Job has already been marked as canceled!");
            }
            JobStatus::Succeeded | JobStatus::Failed => return Err("Job has already completed!"),
        }
        self.canceled_at = Some(now);
        // A canceled job never reports the failure planned for it.
        self.failure = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_700_000_000_000 + ms).unwrap()
    }

    #[test]
    fn job_moves_from_pending_to_running_to_succeeded() {
        let job = Job::new(at(0), Duration::from_millis(100), Duration::from_millis(400), None);
        assert_eq!(job.status(at(50)), JobStatus::Pending);
        assert_eq!(job.status(at(100)), JobStatus::Running);
        assert_eq!(job.status(at(499)), JobStatus::Running);
        assert_eq!(job.status(at(500)), JobStatus::Succeeded);
        assert_eq!(job.view(at(50)).started_at, None);
        assert_eq!(job.view(at(500)).completed_at, Some(at(500)));
    }

    #[test]
    fn planned_failure_shows_only_once_completed() {
        let failure = JobFailure { error: "boom".to_owned(), error_code: None };
        let job = Job::new(at(0), Duration::from_millis(100), Duration::from_millis(400), Some(failure));
        assert_eq!(job.view(at(200)).failure, None);
        assert_eq!(job.status(at(600)), JobStatus::Failed);
        assert_eq!(job.view(at(600)).failure.map(|f| f.error), Some("boom".to_owned()));
    }

    #[test]
    fn canceling_a_pending_job_ends_it_at_once() {
        let mut job = Job::new(at(0), Duration::from_millis(100), Duration::from_millis(400), None);
        job.cancel(at(10), Duration::from_millis(100)).unwrap();
        assert_eq!(job.status(at(10)), JobStatus::Canceled);
        assert_eq!(job.view(at(10)).started_at, None);
    }

    #[test]
    fn canceling_a_running_job_passes_through_canceling() {
        let mut job = Job::new(at(0), Duration::from_millis(100), Duration::from_millis(400), None);
        job.cancel(at(200), Duration::from_millis(100)).unwrap();
        assert_eq!(job.status(at(250)), JobStatus::Canceling);
        assert_eq!(job.status(at(300)), JobStatus::Canceled);
        assert!(job.cancel(at(400), Duration::ZERO).is_err());
    }

    #[test]
    fn build_status_follows_the_table() {
        assert_eq!(JobStatus::Running.build_status(Transition::Stop), "stopping");
        assert_eq!(JobStatus::Succeeded.build_status(Transition::Start), "running");
        assert_eq!(JobStatus::Succeeded.build_status(Transition::Delete), "deleted");
        assert_eq!(JobStatus::Canceling.build_status(Transition::Start), "canceling");
    }
}
