//! The presence routes, asked of the channel's owner (`Question::Presence*`, the same
//! questions a WebSocket `presence:*` frame asks, so the same events reach subscribers):
//!
//! - `GET  /api/realtime/presence/{channel}` → `{members:[{userId, metadata, lastSeen}]}`
//!   (by userId; members past their TTL are expired first).
//! - `POST …/{channel}/join` `{userId, metadata?}` → `{isNew}`: joins, or refreshes an
//!   existing member. The membership is held by the HTTP API ([`PresenceHolder::Http`]),
//!   which has no connection to send heartbeats: the app joins again within the TTL, or
//!   the member expires (and `presence:leave` goes out).
//! - `POST …/{channel}/update` `{userId, metadata}` → `{updated}` (false: not a member).
//! - `POST …/{channel}/leave` `{userId}` → `{wasPresent}`: removes the member, whoever
//!   holds it.
//!
//! The API is trusted: `private-` channels need no token. Metadata over the tenant's
//! limit is refused here, before the owner is asked (`presence_limit`, as on WebSocket).

use std::rc::Rc;

use bytes::Bytes;
use ringcast_protocol::api::{
    presence_joined, presence_left, presence_members, presence_updated, PresenceAction,
    PresenceEntry, Refusal,
};
use ringcast_protocol::{ApiError, ChannelName};

use crate::keys::ChannelKey;
use crate::mesh::{Answer, Question};
use crate::presence::{PresenceHolder, PresenceRefused};
use crate::shard::Shard;
use crate::tenant::Tenant;

/// The members of `channel` (already percent-decoded from the path).
pub async fn members(
    shard: &Rc<Shard>,
    channel: &str,
    tenant: &Tenant,
) -> Result<Vec<u8>, Refusal> {
    let key = channel_key(channel, tenant)?;
    let question = Question::PresenceMembers { key: key.clone() };
    match shard
        .ask(&key, question, super::request_timeout_ms(shard))
        .await
    {
        Ok(Answer::PresenceMembers { members }) => {
            Ok(presence_members(members.iter().map(|m| PresenceEntry {
                user_id: &m.user_id,
                metadata: m.metadata.as_deref(),
                last_seen_secs: m.last_seen_secs,
            })))
        }
        other => Err(super::failed(other)),
    }
}

/// A join, update or leave of `channel` with the request's `body`.
pub async fn act(
    shard: &Rc<Shard>,
    action: PresenceAction,
    channel: &str,
    body: &[u8],
    tenant: &Tenant,
) -> Result<Vec<u8>, Refusal> {
    let key = channel_key(channel, tenant)?;
    let parsed = shard.parse_presence(action, body)?;
    crate::presence::check_user_id(&parsed.user_id)
        .map_err(|message| Refusal::new(ApiError::BadRequest, message))?;
    let limit = tenant.limits.presence.max_metadata_bytes;
    if let Some(size) = parsed.metadata.map(<[u8]>::len).filter(|s| *s > limit) {
        let refused = PresenceRefused::MetadataTooLarge { size, limit };
        return Err(Refusal::new(ApiError::PresenceLimit, refused.to_string()));
    }
    let metadata = parsed.metadata.map(Bytes::copy_from_slice);
    let user_id = parsed.user_id;
    let question = match action {
        PresenceAction::Join => Question::PresenceJoin {
            key: key.clone(),
            user_id,
            metadata,
            holder: PresenceHolder::Http,
        },
        PresenceAction::Update => Question::PresenceUpdate {
            key: key.clone(),
            user_id,
            metadata,
            holder: PresenceHolder::Http,
        },
        PresenceAction::Leave => Question::PresenceLeave {
            key: key.clone(),
            user_id,
            holder: PresenceHolder::Http,
        },
    };
    match shard
        .ask(&key, question, super::request_timeout_ms(shard))
        .await
    {
        Ok(Answer::PresenceJoined { is_new }) if action == PresenceAction::Join => {
            Ok(presence_joined(is_new))
        }
        Ok(Answer::PresenceUpdated { updated }) if action == PresenceAction::Update => {
            Ok(presence_updated(updated))
        }
        Ok(Answer::PresenceLeft { was_present }) if action == PresenceAction::Leave => {
            Ok(presence_left(was_present))
        }
        other => Err(super::failed(other)),
    }
}

fn channel_key(channel: &str, tenant: &Tenant) -> Result<ChannelKey, Refusal> {
    let channel = ChannelName::new(channel)
        .map_err(|e| Refusal::new(ApiError::InvalidChannel, e.to_string()))?;
    Ok(ChannelKey::new(tenant.id.clone(), channel))
}
