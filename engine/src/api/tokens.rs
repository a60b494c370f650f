//! `POST /api/realtime/tokens` `{channel, userId?, permissions?, expiresIn?}` →
//! `{token}`: a channel token signed with the tenant's newest key (the last of its
//! `token_keys`), so a backend without a JWT library can hand one to a browser.

use ringcast_protocol::api::{minted, Refusal};
use ringcast_protocol::ApiError;

use crate::shard::Shard;
use crate::tenant::Tenant;
use crate::token::{self, MintRequest, Permission};

/// Mints the token the body asks for. A request for a token that [`token::verify`] would
/// refuse (a `userId` over 256 bytes) or that allows nothing is a 400, not a token.
pub fn tokens(shard: &Shard, body: &[u8], tenant: &Tenant) -> Result<Vec<u8>, Refusal> {
    let request = shard.parse_token_request(body)?;
    if tenant.token_keys.is_empty() {
        // `--dev` alone declares none: say how to get one (found in a SPEC audit).
        let message = if tenant.id.as_str() == crate::config::DEV_TENANT {
            "this tenant has no token_keys to sign with: declare the dev tenant with a \
             [[tenants.token_keys]] entry in a config file (README, \"Configuration\")"
        } else {
            "this tenant has no token_keys to sign with"
        };
        return Err(Refusal::new(ApiError::BadRequest, message));
    }
    // The parser let only known names through; one it did not know is refused here too
    // rather than dropped (it was filtered away silently).
    let permissions = request
        .permissions
        .iter()
        .map(|p| {
            Permission::parse(p).ok_or_else(|| {
                Refusal::new(ApiError::BadRequest, format!("unknown permission `{p}`"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mint = MintRequest {
        channels: vec![request.channel.as_str().to_owned()],
        user: request.user_id,
        permissions,
        expires_in_secs: request.expires_in_secs,
        kid: None,
    };
    mint.check()
        .map_err(|e| Refusal::new(ApiError::BadRequest, e))?;
    // `iat` and `exp` by the wall clock, as verifiers elsewhere read them.
    let token = token::mint(tenant, &mint, shard.token_time().wall_ms)
        .map_err(|e| Refusal::new(ApiError::Internal, e))?;
    Ok(minted(&token))
}
