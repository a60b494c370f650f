//! The front door of every TCP connection: read an HTTP/1.1 request head (with a
//! deadline), then either upgrade to WebSocket or answer a plain HTTP request.
//! HTTP and WebSocket share the listener and the shard.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use ringcast_protocol::http::{
    error_response, json_response, parse_request_head, response, switching_protocols, HttpError,
    RequestHead, Upgrade,
};

use crate::admission::ConnectionSlot;
use crate::session::start_session;
use crate::shard::Shard;

/// What to do with a request.
enum Route {
    Respond(Vec<u8>, bool),
    Upgrade {
        response: Vec<u8>,
        tenant: Arc<crate::tenant::Tenant>,
        client_id: String,
    },
}

/// Serves one accepted connection. `slot` is `None` when the server is full: the request
/// is read and answered with 503.
pub async fn serve_connection(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    slot: Option<ConnectionSlot>,
) {
    let timeout = Duration::from_millis(shard.shared.config.load().handshake_timeout_ms);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = match monoio::time::timeout(timeout, read_head(&mut stream, &mut buf)).await {
            Err(_) => {
                let out =
                    error_response(408, "timeout", "request head not received in time", false);
                let _ = monoio::time::timeout(timeout, stream.write_all(out)).await;
                return;
            }
            Ok(Err(ReadError::Http(HttpError::TooLarge))) => {
                let out =
                    error_response(431, "headers_too_large", "request head over 16 KiB", false);
                let _ = stream.write_all(out).await;
                return;
            }
            Ok(Err(ReadError::Http(_))) => {
                let out = error_response(400, "bad_request", "malformed HTTP request", false);
                let _ = stream.write_all(out).await;
                return;
            }
            Ok(Err(ReadError::Closed)) => return,
            Ok(Ok(head)) => head,
        };
        if slot.is_none() {
            shard.shared.metrics.shard(shard.id).error("overloaded");
            let out = error_response(
                503,
                "overloaded",
                "max_connections reached; retry later",
                false,
            );
            let _ = stream.write_all(out).await;
            return;
        }
        // Bodies are not used by any route yet; skip them so keep-alive stays in sync.
        let body_len = head.content_length().unwrap_or(0);
        if body_len > shard.shared.config.load().max_message_bytes {
            let out = error_response(413, "payload_too_large", "request body too large", false);
            let _ = stream.write_all(out).await;
            return;
        }
        if skip_body(&mut stream, &mut buf, head.head_len, body_len)
            .await
            .is_err()
        {
            return;
        }
        match route(&shard, &head) {
            Route::Respond(out, keep_alive) => {
                let (result, _) = stream.write_all(out).await;
                if result.is_err() || !keep_alive {
                    return;
                }
            }
            Route::Upgrade {
                response,
                tenant,
                client_id,
            } => {
                let (result, _) = stream.write_all(response).await;
                if let (Ok(_), Some(slot)) = (result, slot) {
                    // Tasks of their own, so this HTTP-phase state is freed while the
                    // WebSocket lives (idle connections stay small).
                    start_session(shard, stream, buf, tenant, &client_id, slot);
                }
                return;
            }
        }
    }
}

enum ReadError {
    Http(HttpError),
    Closed,
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<RequestHead, ReadError> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_request_head(buf).map_err(ReadError::Http)? {
                return Ok(head);
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(buf.len().max(1024));
        }
        let len = buf.len();
        let (result, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
        *buf = slice.into_inner();
        match result {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

/// Drops the head and a body of `body_len` bytes from the front of `buf`, reading more
/// as needed.
async fn skip_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_len: usize,
    body_len: usize,
) -> Result<(), ()> {
    let needed = head_len + body_len;
    while buf.len() < needed {
        buf.reserve(needed - buf.len());
        let len = buf.len();
        let (result, slice) = stream.read(std::mem::take(buf).slice_mut(len..)).await;
        *buf = slice.into_inner();
        match result {
            Ok(0) | Err(_) => return Err(()),
            Ok(_) => {}
        }
    }
    buf.drain(..needed);
    Ok(())
}

fn route(shard: &Rc<Shard>, head: &RequestHead) -> Route {
    let keep_alive = head.keep_alive();
    let respond = |out: Vec<u8>| Route::Respond(out, keep_alive);
    let error = |status: u16, code: &str, message: &str| {
        shard.shared.metrics.shard(shard.id).error(code);
        Route::Respond(
            error_response(status, code, message, keep_alive),
            keep_alive,
        )
    };
    let path = head.path.as_str();
    let is_get = head.method == "GET";
    match path {
        "/_rt/ws" if !is_get => error(405, "method_not_allowed", "use GET to open a WebSocket"),
        "/_rt/ws" => websocket(shard, head, keep_alive),
        "/healthz" | "/readyz" | "/metrics" if !is_get => {
            error(405, "method_not_allowed", "use GET")
        }
        "/healthz" => respond(json_response(200, br#"{"status":"ok"}"#, keep_alive)),
        "/readyz" => {
            let ready = shard.shared.ready_shards.load(Ordering::SeqCst) == shard.mesh.shards()
                && !shard.mesh.is_shutting_down();
            if ready {
                respond(json_response(200, br#"{"status":"ready"}"#, keep_alive))
            } else {
                error(503, "not_ready", "starting or shutting down")
            }
        }
        "/metrics" => {
            let text = shard.shared.metrics.render();
            respond(response(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
                keep_alive,
            ))
        }
        _ if path.starts_with("/api/realtime/")
            || path == "/api/maravilla/ren"
            || path == "/api/ren/events" =>
        {
            error(
                501,
                "not_implemented",
                "this HTTP API route is not available in this release of Ringcast",
            )
        }
        _ => error(404, "not_found", "no such route"),
    }
}

fn websocket(shard: &Rc<Shard>, head: &RequestHead, keep_alive: bool) -> Route {
    let error = |status: u16, code: &str, message: &str| {
        shard.shared.metrics.shard(shard.id).error(code);
        Route::Respond(
            error_response(status, code, message, keep_alive),
            keep_alive,
        )
    };
    let accept = match head.websocket_upgrade() {
        Upgrade::Valid { accept } => accept,
        Upgrade::NotRequested => {
            return error(
                426,
                "upgrade_required",
                "this endpoint speaks WebSocket only",
            )
        }
        Upgrade::Malformed(why) => return error(400, "bad_request", why),
    };
    if shard.is_shutting_down() {
        return error(503, "overloaded", "server shutting down");
    }
    let tenant_id = head.query_param("tenant");
    let Some(tenant) = shard.shared.tenants.load().resolve(tenant_id.as_deref()) else {
        return error(404, "unknown_tenant", "no such tenant");
    };
    let client_id = head
        .query_param("cid")
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| shard.generate_client_id());
    let shard_header = shard.id.to_string();
    let response = switching_protocols(&accept, &[("x-ringcast-shard", &shard_header)]);
    Route::Upgrade {
        response,
        tenant,
        client_id,
    }
}
