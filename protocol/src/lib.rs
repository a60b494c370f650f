//! Ringcast's wire protocol, sans IO.
//!
//! This crate turns bytes into typed values and typed values into bytes. It has no
//! sockets, no threads, no runtime and no clock of its own: every function that needs
//! the time takes `now` (epoch milliseconds) as an argument. The engine drives it.
//!
//! ```text
//!  socket bytes ──► http::parse_request_head ──► (upgrade) ──► ws::WsDecoder
//!                   │ plain HTTP                               │ text message
//!                   ▼                                          ▼
//!                   body::BodyDecoder          client::FrameParser::parse ──► ClientFrame
//!                   │ body bytes
//!                   ▼
//!                   api::ApiParser::publish ──► PublishBody (data raw); api::* encode answers
//!                   api::ApiParser::ren_events ──► REN events (ren.rs: filters, SSE chunks)
//!                   engine route(head, body); refusals: error::ApiError ──► status + code
//!  engine decides what happens, then encodes each outgoing event ONCE:
//!      event::* ──► a complete WebSocket frame (header + JSON) as `Bytes`, shared by
//!                   every subscriber on every shard.
//! ```
//!
//! Invariants: no function here panics on any input, and `data` payloads are carried as
//! the raw bytes the publisher sent, valid JSON: `fuzzing::every_parser` checks both
//! over every parser, run by the `protocol_parsers` fuzz target and a property test.
#![forbid(unsafe_code)]

pub mod api;
pub mod body;
pub mod channel;
pub mod client;
pub mod error;
pub mod event;
pub mod fuzzing;
pub mod http;
mod json;
pub mod proxy;
pub mod ren;
pub mod ws;

pub use channel::{ChannelName, TenantId};
pub use client::{ClientFrame, FrameParser, ParseFailure};
pub use error::{ApiError, CloseCode, ErrorCode, ReconnectAdvice};
