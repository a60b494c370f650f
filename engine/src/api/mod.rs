//! The HTTP API of SPEC §5: what apps' backends call on the same port as WebSockets
//! (the SDK's `createRemoteClient`). One role per file: [`auth`] (tenant and key of every
//! request), [`publish`], [`history`], [`channels`], [`presence`], [`tokens`], [`ren`]
//! (the SSE stream, whose GET `http.rs` takes before [`serve`], and
//! `POST /api/ren/events`).
//!
//! ```text
//!  http::serve_requests ──► api::serve(shard, head, body)
//!                             route by path and method (404 / 405)
//!                             auth::authorize ──► tenant (401 / 403 / 404)
//!                             handler ──► Shard::publish_once / ask / ask_all ──► owner(s)
//!                             answer JSON, or Refusal ──► ApiError's (status, code) table
//! ```
//!
//! Every refusal goes through [`respond_refusal`]: one mapping from [`ApiError`] to the
//! status and the `{"error":{"code","message"}}` body, counted in `ringcast_errors_total`.

pub mod auth;
pub mod channels;
pub mod history;
pub mod presence;
pub mod publish;
pub mod ren;
pub mod tokens;

use std::rc::Rc;

use ringcast_protocol::api::{PresenceAction, Refusal};
use ringcast_protocol::http::{api_error_response, ok_json, with_header, RequestHead};
use ringcast_protocol::ApiError;

use crate::mesh::Answer;
use crate::requests::Outcome;
use crate::shard::Shard;

/// Whether `path` belongs to the HTTP API (answered by [`serve`]).
pub fn handles(path: &str) -> bool {
    path.starts_with("/api/realtime/") || path == "/api/maravilla/ren" || path == "/api/ren/events"
}

/// Answers one API request: the complete response bytes.
pub async fn serve(shard: &Rc<Shard>, head: &RequestHead, body: &[u8]) -> Vec<u8> {
    let keep_alive = head.keep_alive();
    match answer(shard, head, body).await {
        Ok(json) => ok_json(&json, keep_alive),
        Err(refusal) => respond_refusal(shard, &refusal, keep_alive),
    }
}

/// The one error answer of the API: status and code from [`ApiError::wire`], counted.
pub fn respond_refusal(shard: &Shard, refusal: &Refusal, keep_alive: bool) -> Vec<u8> {
    shard
        .shared
        .metrics
        .shard(shard.id)
        .error(refusal.error.code());
    let mut response = api_error_response(refusal.error, &refusal.message, keep_alive);
    if let Some(secs) = refusal.retry_after_secs {
        response = with_header(response, "Retry-After", &secs.to_string());
    }
    if let Some(method) = refusal.allow {
        response = with_header(response, "Allow", method);
    }
    response
}

/// A route of the API, chosen by path.
enum ApiRoute {
    Publish,
    Channels,
    History(String),
    /// `GET /api/realtime/presence/{channel}`.
    PresenceMembers(String),
    /// `POST /api/realtime/presence/{channel}/{join|update|leave}`.
    Presence(String, PresenceAction),
    /// `POST /api/realtime/tokens`.
    Tokens,
    /// `POST /api/ren/events`.
    RenEvents,
    /// `GET /api/maravilla/ren`: `http.rs` takes the GET before [`serve`] (the
    /// connection becomes the stream); only other methods get here (405).
    RenStream,
}

fn choose(head: &RequestHead) -> Result<(ApiRoute, &'static str), Refusal> {
    let bad_path = |e| Refusal::new(ApiError::from(e), format!("bad path: {e}"));
    let segments = head.path_segments().map_err(bad_path)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = match segments.as_slice() {
        ["api", "realtime", "publish"] => (ApiRoute::Publish, "POST"),
        ["api", "realtime", "channels"] => (ApiRoute::Channels, "GET"),
        ["api", "realtime", "history", channel] => {
            (ApiRoute::History((*channel).to_owned()), "GET")
        }
        ["api", "realtime", "presence", channel] => {
            (ApiRoute::PresenceMembers((*channel).to_owned()), "GET")
        }
        ["api", "realtime", "presence", channel, action] => {
            let action = match *action {
                "join" => PresenceAction::Join,
                "update" => PresenceAction::Update,
                "leave" => PresenceAction::Leave,
                _ => return Err(Refusal::new(ApiError::NotFound, "no such route")),
            };
            (ApiRoute::Presence((*channel).to_owned(), action), "POST")
        }
        ["api", "realtime", "tokens"] => (ApiRoute::Tokens, "POST"),
        ["api", "ren", "events"] => (ApiRoute::RenEvents, "POST"),
        ["api", "maravilla", "ren"] => (ApiRoute::RenStream, "GET"),
        _ => return Err(Refusal::new(ApiError::NotFound, "no such route")),
    };
    Ok(route)
}

async fn answer(shard: &Rc<Shard>, head: &RequestHead, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let (route, method) = choose(head)?;
    if head.method != method {
        // `http.rs` answers HEAD as GET on every GET route but the stream's.
        let allow = match (&route, method) {
            (ApiRoute::RenStream, _) => method,
            (_, "GET") => "GET, HEAD",
            _ => method,
        };
        return Err(Refusal::new(
            ApiError::MethodNotAllowed,
            format!("use {method} on this route"),
        )
        .allowing(allow));
    }
    let tenant = auth::authorize(&shard.shared, head)?;
    match route {
        ApiRoute::Publish => publish::publish(shard, head, body, &tenant).await,
        ApiRoute::Channels => channels::channels(shard, &tenant).await,
        ApiRoute::History(channel) => history::history(shard, head, &channel, &tenant).await,
        ApiRoute::Tokens => tokens::tokens(shard, body, &tenant),
        ApiRoute::PresenceMembers(channel) => presence::members(shard, &channel, &tenant).await,
        ApiRoute::Presence(channel, action) => {
            presence::act(shard, action, &channel, body, &tenant).await
        }
        ApiRoute::RenEvents => ren::ingest(shard, head, body, &tenant).await,
        ApiRoute::RenStream => Err(Refusal::new(
            ApiError::Internal,
            "a REN stream request reached the JSON API",
        )),
    }
}

/// The refusal for an owner's answer that is not the one asked for.
pub(crate) fn failed(outcome: Outcome) -> Refusal {
    match outcome {
        Ok(Answer::Failed { code, message }) => Refusal::new(ApiError::from(code), message),
        Ok(Answer::RateLimited { retry_after_secs }) => Refusal::new(
            ApiError::RateLimited,
            format!("the tenant's publishes_per_minute is reached; retry in {retry_after_secs} s"),
        )
        .retry_after(retry_after_secs),
        Ok(other) => {
            tracing::error!(?other, "unexpected answer to an HTTP API request");
            Refusal::new(ApiError::Internal, "unexpected answer from the owner shard")
        }
        // No answer (backpressure, a full inbox, the deadline): worth a retry soon.
        Err(e) => Refusal::new(ApiError::Overloaded, e.to_string()).retry_after(1),
    }
}

/// How long a handler waits for owners' answers.
pub(crate) fn request_timeout_ms(shard: &Shard) -> u64 {
    shard.shared.config.load().request_timeout_ms
}
