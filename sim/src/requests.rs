//! The log of `/api` requests, for tests that count or inspect what a client sent.

use std::collections::VecDeque;

use jiff::Timestamp;
use serde::Serialize;

/// Status recorded for a request whose client went away before the answer
/// (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

/// Bounds memory when a client polls for hours.
const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The status served, including injected faults; 499 when the client
    /// disconnected first.
    pub status: u16,
    /// When the request arrived.
    pub at: Timestamp,
    /// The `Host` header: tells apart clients that name the simulator
    /// differently (`127.0.0.1:port` and `localhost:port`).
    pub host: String,
    /// The JSON body of a POST, PUT or PATCH.
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
pub struct RequestLog {
    records: VecDeque<RequestRecord>,
}

impl RequestLog {
    pub fn push(&mut self, record: RequestRecord) {
        if self.records.len() == CAPACITY {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    pub fn snapshot(&self) -> Vec<RequestRecord> {
        self.records.iter().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.records.clear();
    }
}
