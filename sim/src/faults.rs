//! Injected faults: answers that replace (or delay) the normal handling of
//! matching `/api` requests, to exercise a client's retry and timeout paths.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A fault applied to requests whose path (with its query, if any) starts
/// with `path_prefix` (and
/// whose method matches, when given), `times` times or until cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub method: Option<String>,
    pub path_prefix: String,
    pub kind: FaultKind,
    /// `None`: until cleared.
    #[serde(default)]
    pub times: Option<u32>,
}

/// In JSON: `{"status": 503}`, `{"latency_ms": 2000}`,
/// `{"answer_late_ms": 3000}`, `{"rate_limited_s": 3}`, `"hang"`,
/// `{"hostile_list": {"count": 1000000000, "padding": 500}}` or
/// `{"huge_body_bytes": 100000000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer this HTTP status with a Coder error body.
    Status(u16),
    /// Wait this long, then serve normally.
    #[serde(rename = "latency_ms", with = "millis")]
    Latency(Duration),
    /// Never answer, until the faults are cleared (then serve normally) or
    /// two minutes pass (then 504).
    Hang,
    /// Serve normally, then hold the answer this long: the request has taken
    /// effect (a build exists) but the client does not know yet.
    #[serde(rename = "answer_late_ms", with = "millis")]
    AnswerLate(Duration),
    /// coderd's per-user rate limit: 429 with `Retry-After` in seconds, as
    /// its rate limiter answers.
    #[serde(rename = "rate_limited_s")]
    RateLimited(u64),
    /// A broken or hostile coderd's workspace list: served as if `offset`
    /// were 0 (every page starts over), then `count` claims this many
    /// workspaces whatever there are, and `padding` made-up workspaces
    /// (copies of the page's first, with new ids and names) are added to
    /// every page, whatever its `limit`.
    HostileList { count: i64, padding: u32 },
    /// A `200` whose body is this many bytes of JSON, streamed with no
    /// `Content-Length`: more than any real answer.
    #[serde(rename = "huge_body_bytes")]
    HugeBody(u64),
}

impl Fault {
    pub fn new(path_prefix: impl Into<String>, kind: FaultKind) -> Self {
        Self { method: None, path_prefix: path_prefix.into(), kind, times: None }
    }

    /// Only requests with this method (case-insensitive).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Only the next `times` matching requests.
    pub fn times(mut self, times: u32) -> Self {
        self.times = Some(times);
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|wanted| wanted.eq_ignore_ascii_case(method))
            && path.starts_with(&self.path_prefix)
    }
}

#[derive(Debug, Default)]
pub struct FaultTable {
    next_id: u64,
    active: Vec<(u64, Fault)>,
}

impl FaultTable {
    pub fn add(&mut self, fault: Fault) -> u64 {
        self.next_id += 1;
        // A fault for zero requests would never fire; drop it at once.
        if fault.times != Some(0) {
            self.active.push((self.next_id, fault));
        }
        self.next_id
    }

    pub fn clear(&mut self) {
        self.active.clear();
    }

    /// The first active fault matching the request, using up one of its times.
    pub fn take(&mut self, method: &str, path: &str) -> Option<FaultKind> {
        let index = self.active.iter().position(|(_, fault)| fault.matches(method, path))?;
        let fault = &mut self.active[index].1;
        let kind = fault.kind;
        if let Some(times) = &mut fault.times {
            *times -= 1;
            if *times == 0 {
                self.active.remove(index);
            }
        }
        Some(kind)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_json() {
        let fault: Fault = serde_json::from_str(
            r#"{"method": "POST", "path_prefix": "/api/v2/workspaces", "kind": {"status": 503}, "times": 2}"#,
        )
        .unwrap();
        assert_eq!(fault, Fault::new("/api/v2/workspaces", FaultKind::Status(503)).method("POST").times(2));
        let latency: FaultKind = serde_json::from_str(r#"{"latency_ms": 250}"#).unwrap();
        assert_eq!(latency, FaultKind::Latency(Duration::from_millis(250)));
        assert_eq!(serde_json::from_str::<FaultKind>(r#""hang""#).unwrap(), FaultKind::Hang);
        assert_eq!(
            serde_json::from_str::<FaultKind>(r#"{"hostile_list": {"count": 1000000000, "padding": 500}}"#).unwrap(),
            FaultKind::HostileList { count: 1_000_000_000, padding: 500 }
        );
        assert_eq!(
            serde_json::from_str::<FaultKind>(r#"{"huge_body_bytes": 100000000}"#).unwrap(),
            FaultKind::HugeBody(100_000_000)
        );
    }

    #[test]
    fn limited_faults_wear_off() {
        let mut table = FaultTable::default();
        table.add(Fault::new("/api/v2/workspaces", FaultKind::Status(500)).method("get").times(2));
        assert_eq!(table.take("POST", "/api/v2/workspaces"), None);
        assert_eq!(table.take("GET", "/api/v2/users/me"), None);
        assert_eq!(table.take("GET", "/api/v2/workspaces/x"), Some(FaultKind::Status(500)));
        assert_eq!(table.take("GET", "/api/v2/workspaces"), Some(FaultKind::Status(500)));
        assert_eq!(table.take("GET", "/api/v2/workspaces"), None);
    }
}
