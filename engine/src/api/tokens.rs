//! `POST /api/realtime/tokens` `{channel, userId?, permissions?, expiresIn?}` →
//! `{token}`: a channel token signed with the tenant's newest key (the last of its
//! `token_keys`), so a backend without a JWT library can hand one to a browser.

use ringcast_protocol::api::{minted, Refusal};
use ringcast_protocol::ApiError;

use crate::shard::Shard;
use crate::tenant::Tenant;
use crate::token::{self, MintRequest, Permission};

/// Mints the token the body asks for.
pub fn tokens(shard: &Shard, body: &[u8], tenant: &Tenant) -> Result<Vec<u8>, Refusal> {
    let request = shard.parse_token_request(body)?;
    if tenant.token_keys.is_empty() {
        return Err(Refusal::new(
            ApiError::BadRequest,
            "this tenant has no token_keys to sign with",
        ));
    }
    let mint = MintRequest {
        channels: vec![request.channel.as_str().to_owned()],
        user: request.user_id,
        permissions: request
            .permissions
            .iter()
            .filter_map(|p| Permission::parse(p))
            .collect(),
        expires_in_secs: request.expires_in_secs,
        kid: None,
    };
    let token = token::mint(tenant, &mint, shard.now().0)
        .map_err(|e| Refusal::new(ApiError::Internal, e))?;
    Ok(minted(&token))
}
