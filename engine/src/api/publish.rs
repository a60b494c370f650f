//! `POST /api/realtime/publish` `{channel, data, userId?, idempotencyKey?}` →
//! `{ok:true, seq, ts}`, answered once the owner appended the message to history (durable
//! per the flush policy) and handed it to every shard with subscribers.

use std::rc::Rc;

use bytes::Bytes;
use ringcast_protocol::api::{check_idempotency_key, published, Refusal};
use ringcast_protocol::http::RequestHead;
use ringcast_protocol::ApiError;

use crate::keys::ChannelKey;
use crate::mesh::{Answer, PublishExtras};
use crate::shard::Shard;
use crate::tenant::Tenant;

/// Publishes the body's message for `tenant`.
pub async fn publish(
    shard: &Rc<Shard>,
    head: &RequestHead,
    body: &[u8],
    tenant: &Tenant,
) -> Result<Vec<u8>, Refusal> {
    let parsed = shard.parse_publish(body)?;
    let limit = tenant.limits.max_message_bytes;
    if parsed.data.len() > limit {
        return Err(Refusal::new(
            ApiError::MessageTooLarge,
            format!(
                "data is {} bytes; the tenant's limit is {limit}",
                parsed.data.len()
            ),
        ));
    }
    let header_key = match head.header("idempotency-key") {
        None => None,
        Some(v) => {
            let key = std::str::from_utf8(v)
                .map_err(|_| Refusal::new(ApiError::BadRequest, "Idempotency-Key is not UTF-8"))?
                .trim();
            check_idempotency_key(key)?;
            Some(key.to_owned())
        }
    };
    let idempotency_key = match (parsed.idempotency_key, header_key) {
        (Some(body), Some(header)) if body != header => {
            return Err(Refusal::new(
                ApiError::BadRequest,
                "`idempotencyKey` and the Idempotency-Key header differ",
            ))
        }
        (body, header) => body.or(header),
    };
    let http = PublishExtras {
        idempotency_key: idempotency_key.map(String::into_boxed_str),
        src: super::ren::ren_client(head)?.map(String::into_boxed_str),
    };
    let key = ChannelKey::new(tenant.id.clone(), parsed.channel);
    let outcome = shard
        .publish_once(
            key,
            Bytes::copy_from_slice(parsed.data),
            parsed.user_id.map(String::into_boxed_str),
            http,
            super::request_timeout_ms(shard),
        )
        .await;
    match outcome {
        Ok(Answer::Published { seq, ts }) => Ok(published(seq, ts)),
        other => Err(super::failed(other)),
    }
}
