//! chatworkspace-operator: keeps Coder workspaces used by AI chats in the
//! state people and agents ask for, and recovers them when their agent dies.
//!
//! - [`crd`]: the `ChatWorkspace` resource.
//! - [`decision`]: the pure core (spec + observation + previous status + now
//!   → one action + new status), with [`conditions`] and [`claims`].
//! - [`coder`]: the Coder REST client; [`credentials`] and [`templates`]
//!   resolve what a resource talks to and creates from.
//! - [`index`]: the Coder index, observing Coder in the background and
//!   waking the resources whose workspace changed.
//! - [`controller`]: the reconciler (gather, decide, act, record) on its own
//!   small runtime over kube-runtime's watcher.
//! - [`admin`], [`metrics`], [`telemetry`]: health, metrics and logs.

pub mod admin;
pub mod backoff;
pub mod cache;
pub mod claims;
pub mod coder;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod decision;
pub mod error;
pub mod events;
pub mod index;
pub mod key;
pub mod leader;
pub mod metrics;
pub mod pack;
pub mod telemetry;
pub mod templates;
pub mod tenancy;
