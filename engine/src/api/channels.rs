//! `GET /api/realtime/channels` → `{channels:[…]}`: the tenant's active channels, sorted.
//!
//! Every shard owns some channels, so every shard is asked (`Question::ActiveChannels`)
//! and the answers are merged here. A channel is active while it has a subscriber on any
//! shard or a presence member (joined over WebSocket or HTTP); the owner-side handler in
//! `core.rs` decides.

use std::rc::Rc;

use ringcast_protocol::api::{channels as channels_answer, Refusal};
use ringcast_protocol::ChannelName;

use crate::mesh::{Answer, Question};
use crate::shard::Shard;
use crate::tenant::Tenant;

/// The active channels of `tenant`.
pub async fn channels(shard: &Rc<Shard>, tenant: &Tenant) -> Result<Vec<u8>, Refusal> {
    let question = Question::ActiveChannels {
        tenant: tenant.id.clone(),
    };
    let outcomes = shard
        .ask_all(question, super::request_timeout_ms(shard))
        .await;
    let names = merge(outcomes.into_iter().map(|outcome| match outcome {
        Ok(Answer::ActiveChannels(names)) => Ok(names),
        other => Err(super::failed(other)),
    }))?;
    Ok(channels_answer(names.iter().map(ChannelName::as_str)))
}

/// Every shard's part, sorted and without duplicates; the first failure fails it all.
fn merge(
    parts: impl Iterator<Item = Result<Vec<ChannelName>, Refusal>>,
) -> Result<Vec<ChannelName>, Refusal> {
    let mut all = Vec::new();
    for part in parts {
        all.extend(part?);
    }
    all.sort_unstable();
    all.dedup();
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::ApiError;

    fn names(list: &[&str]) -> Vec<ChannelName> {
        list.iter().map(|n| ChannelName::new(n).unwrap()).collect()
    }

    #[test]
    fn parts_merge_sorted_and_a_failure_fails() {
        let merged = merge([Ok(names(&["b", "a"])), Ok(names(&["c", "a"]))].into_iter()).unwrap();
        assert_eq!(merged, names(&["a", "b", "c"]));
        let failed = merge(
            [
                Ok(names(&["a"])),
                Err(Refusal::new(ApiError::Overloaded, "x")),
            ]
            .into_iter(),
        );
        assert_eq!(failed.unwrap_err().error, ApiError::Overloaded);
    }
}
