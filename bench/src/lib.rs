//! Ringcast's benchmark tooling: the load generator's pieces and the floor server's codec.
//!
//! ```text
//! loadgen ──mio──▶ N client sockets ──▶ server under test (Ringcast, floor, peers)
//!    │ publish {"lg":<intended ns>,"i":<id>,"p":"xx…"}      │ fan-out
//!    └◀───────────── deliveries: scan for "lg" ─────────────┘
//! ```
//!
//! `publish_api` the HTTP-vs-WebSocket publish workloads, `ws` the WebSocket codec, `payload` the stamped payload, `client` the connection
//! pool, `workload` W1–W6 of `shared/BENCHMARKS.md`, `report` the result line, `procfs`
//! what is read about the server from `/proc`, `verify` the checks on every delivery.

pub mod client;
pub mod payload;
pub mod procfs;
pub mod publish_api;
pub mod ren_fanout;
pub mod report;
pub mod table;
pub mod verify;
pub mod workload;
pub mod ws;
