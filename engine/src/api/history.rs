//! `GET /api/realtime/history/{channel}?limit=&after=&before=` →
//! `{messages:[{seq, channel, data, uid?, ts}]}`, always oldest first, asked of the
//! channel's owner (`Question::HistoryPage`). A channel never published to gives an empty
//! list. `limit` defaults to 100 and is at most 1,000.

use std::rc::Rc;

use ringcast_protocol::api::{history_page, history_query, HistoryEntry, Refusal};
use ringcast_protocol::http::RequestHead;
use ringcast_protocol::{ApiError, ChannelName};

use crate::history::HistoryQuery;
use crate::keys::ChannelKey;
use crate::mesh::{Answer, Question};
use crate::shard::Shard;
use crate::tenant::Tenant;

/// One page of `channel`'s history (already percent-decoded from the path).
pub async fn history(
    shard: &Rc<Shard>,
    head: &RequestHead,
    channel: &str,
    tenant: &Tenant,
) -> Result<Vec<u8>, Refusal> {
    let channel = ChannelName::new(channel)
        .map_err(|e| Refusal::new(ApiError::InvalidChannel, e.to_string()))?;
    let params = history_query(head)?;
    let query = HistoryQuery {
        after: params.after,
        before: params.before,
        limit: params.limit,
    };
    let key = ChannelKey::new(tenant.id.clone(), channel);
    let question = Question::HistoryPage {
        key: key.clone(),
        query,
    };
    match shard
        .ask(&key, question, super::request_timeout_ms(shard))
        .await
    {
        Ok(Answer::HistoryPage(page)) => Ok(history_page(
            key.channel.as_str(),
            page.messages.iter().map(|m| HistoryEntry {
                seq: m.seq,
                ts: m.ts,
                user_id: m.user_id.as_deref(),
                data: &m.data,
            }),
        )),
        other => Err(super::failed(other)),
    }
}
