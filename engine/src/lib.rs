//! Ringcast's engine: a thread-per-core realtime fan-out server.
//!
//! ```text
//!            SO_REUSEPORT: one listener per shard
//!   client ──► shard k: http::serve_connection ──► session (reads, parses) ──┐
//!                                                                           │ publish / subscribe
//!                                 owner shard of the channel ◄──────────────┘ (inline or via inbox)
//!                                 assigns seq, appends history, encodes ONCE
//!                                      │ Deliver{frame} to each watching shard (crossbeam queues)
//!                                      ▼
//!                     each shard: same Bytes to every local subscriber's queue
//!                                      ▼
//!                     one flush pass per shard turn: a send/writev per dirty connection,
//!                     all in one io_uring submission (send_ring)
//! ```
//!
//! Each shard's state (`Shard`) lives on its own thread and is touched only there; the
//! only cross-thread traffic is the inbox queues in [`mesh`] and the read-mostly
//! [`shard::Shared`]. See `ARCHITECTURE.md` for the ownership map and invariants.
#![deny(unsafe_code)]

pub mod accept_log;
pub mod admission;
pub mod api;
pub mod client_addr;
pub mod clock;
pub mod close_log;
pub mod config;
pub mod conn;
pub mod core;
pub mod datadir;
pub mod deadline;
pub mod demo;
pub mod dev_guard;
pub mod doctor;
pub mod fd_table;
pub mod history;
pub mod http;
pub mod idempotency;
mod iovec;
pub mod keys;
pub mod line_limit;
pub mod logging;
pub mod mesh;
pub mod metrics;
mod nowait;
pub mod outbound;
pub mod outgoing;
pub mod owner;
pub mod per_ip;
pub mod presence;
pub mod reload;
pub mod ren;
pub mod requests;
pub mod run;
pub mod send_ring;
pub mod server;
pub mod session;
pub mod shard;
pub mod shared;
pub mod subs;
pub mod tenant;
pub mod token;
pub mod topic_table;
pub mod usage;
