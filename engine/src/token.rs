//! Tenant JWTs (SPEC §6): verifying channel and connection tokens, minting them.
//!
//! Standard JWT, HS256 only, through the `jsonwebtoken` crate (its HMAC check is
//! constant-time). The header's `kid` picks one of the tenant's `token_keys`; a token
//! without `kid` is tried against the tenant's only key and refused when it has several.
//! `exp` is required; `exp` and `nbf` are checked here against the wall clock at the
//! time of the check ([`CheckTime`]) with [`SKEW_SECS`] of tolerance, not against the
//! shard's monotonic clock, which runs behind the wall after a suspend or an NTP step
//! (found in review: such an engine took tokens past their `exp`).
//!
//! Claims: `sub` (the verified userId; one over [`crate::presence::MAX_USER_ID_BYTES`] is taken, but
//! cannot join presence, whose userIds are bounded, and is never minted), `channel` or
//! `channels`, `permissions` (`subscribe`, `publish`; unknown
//! entries are ignored, so a token minted for a later version still works), `exp`,
//! `nbf?`, `iat?`, `tenant?` (when present, it must name the tenant the token is used
//! with). Minting refuses what verifying would refuse, and a token that allows nothing.
//!
//! Every refusal is `unauthorized` with a message saying which check failed, except a
//! valid token without the permission asked for: `forbidden`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ringcast_protocol::{ChannelName, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::presence::check_user_id;
use crate::tenant::{Tenant, TokenKeyConfig};

/// Clock skew allowed on `exp` and `nbf`.
pub const SKEW_SECS: u64 = 30;

/// What a token allows on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Subscribe, and join presence.
    Subscribe,
    /// Publish.
    Publish,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::Subscribe => "subscribe",
            Permission::Publish => "publish",
        }
    }

    /// Parses `subscribe` / `publish`.
    pub fn parse(name: &str) -> Option<Permission> {
        match name {
            "subscribe" => Some(Permission::Subscribe),
            "publish" => Some(Permission::Publish),
            _ => None,
        }
    }
}

/// A NumericDate claim (RFC 7519 §2): seconds since the epoch, which JWT libraries may
/// write with a fraction (PyJWT's `time.time() + 3600`); read whole, rounded down.
/// Negative, non-finite or non-numeric values are refused.
fn numeric_date<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let Some(value) = Option::<f64>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if !value.is_finite() || value < 0.0 || value >= u64::MAX as f64 {
        return Err(serde::de::Error::custom(
            "a NumericDate must be a non-negative number",
        ));
    }
    Ok(Some(value.floor() as u64))
}

/// The claims Ringcast reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The userId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// One channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Several channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// `subscribe`, `publish`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Expiry, epoch seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub exp: Option<u64>,
    /// Not before, epoch seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub nbf: Option<u64>,
    /// Issued at, epoch seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "numeric_date"
    )]
    pub iat: Option<u64>,
    /// The tenant it was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Its `sub`.
    pub user: Option<String>,
    /// The channels it names.
    pub channels: Vec<String>,
    /// May subscribe (and join presence).
    pub subscribe: bool,
    /// May publish.
    pub publish: bool,
    /// When it ends (`exp` plus [`SKEW_SECS`]) on the shard's clock, the clock of every
    /// deadline (the connection's expiry timer included): the token's remaining lifetime
    /// by the wall clock, added to the shard's clock at the check. After a suspend the
    /// shard's clock is behind the wall; `exp` itself would then fire late by that much.
    pub expires_ms: u64,
}

impl Grant {
    /// Whether it names `channel`.
    pub fn names(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| c == channel)
    }

    /// Whether it allows `permission` on `channel`: `Unauthorized` when the channel is
    /// not named, `Forbidden` when the permission is missing.
    pub fn allows(&self, channel: &str, permission: Permission) -> Result<(), Refused> {
        if !self.names(channel) {
            return Err(Refused::unauthorized(format!(
                "the token is not for channel `{channel}`"
            )));
        }
        let granted = match permission {
            Permission::Subscribe => self.subscribe,
            Permission::Publish => self.publish,
        };
        if !granted {
            return Err(Refused {
                code: ErrorCode::Forbidden,
                message: format!("the token lacks the `{}` permission", permission.name()),
            });
        }
        Ok(())
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `unauthorized` or `forbidden`.
    pub code: ErrorCode,
    /// Which check failed.
    pub message: String,
}

impl Refused {
    fn unauthorized(message: impl Into<String>) -> Refused {
        Refused {
            code: ErrorCode::Unauthorized,
            message: message.into(),
        }
    }
}

/// When a token is checked: two readings of the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckTime {
    /// The wall clock, epoch milliseconds, read at the check: `exp` and `nbf` are
    /// compared with it, since the issuer wrote them by its wall clock.
    pub wall_ms: u64,
    /// The shard's clock at the check, where [`Grant::expires_ms`] is placed.
    pub clock: Millis,
}

impl CheckTime {
    /// Reads both from `clock` ([`Clock::wall_now`] and [`Clock::now`]). Every caller of
    /// [`verify`] gets its time here.
    pub fn read(clock: &Clock) -> CheckTime {
        CheckTime {
            wall_ms: clock.wall_now(),
            clock: clock.now(),
        }
    }

    /// Both clocks reading `ms` (tests, benches).
    pub fn at(ms: u64) -> CheckTime {
        CheckTime {
            wall_ms: ms,
            clock: Millis(ms),
        }
    }
}

/// Verifies `token` for `tenant` at `at`.
pub fn verify(token: &str, tenant: &Tenant, at: CheckTime) -> Result<Grant, Refused> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| Refused::unauthorized(format!("malformed token: {e}")))?;
    if header.alg != Algorithm::HS256 {
        return Err(Refused::unauthorized("tokens must be signed with HS256"));
    }
    let key = choose_key(&tenant.token_keys, header.kid.as_deref())?;
    let decoding = DecodingKey::from_secret(key.secret.as_bytes())
        .map_err(|e| Refused::unauthorized(format!("unusable key: {e}")))?;
    let mut validation = Validation::new(Algorithm::HS256);
    // Time is checked below with the wall clock of `at`; audience is not used.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Claims>(token, &decoding, &validation)
        .map_err(|e| Refused::unauthorized(format!("invalid token: {e}")))?
        .claims;
    let now = at.wall_ms / 1000;
    let Some(exp) = claims.exp else {
        return Err(Refused::unauthorized("the token has no `exp`"));
    };
    if exp.saturating_add(SKEW_SECS) <= now {
        return Err(Refused::unauthorized("the token expired"));
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(SKEW_SECS))
    {
        return Err(Refused::unauthorized("the token is not valid yet (`nbf`)"));
    }
    if let Some(named) = &claims.tenant {
        if named != tenant.id.as_str() {
            return Err(Refused::unauthorized("the token is for another tenant"));
        }
    }
    let mut channels = claims.channels.unwrap_or_default();
    channels.extend(claims.channel);
    let has = |p: Permission| claims.permissions.iter().any(|n| n == p.name());
    let remaining_ms = exp
        .saturating_add(SKEW_SECS)
        .saturating_mul(1000)
        .saturating_sub(at.wall_ms);
    Ok(Grant {
        user: claims.sub.filter(|s| !s.is_empty()),
        subscribe: has(Permission::Subscribe),
        publish: has(Permission::Publish),
        channels,
        expires_ms: at.clock.plus(remaining_ms).0,
    })
}

fn choose_key<'k>(
    keys: &'k [TokenKeyConfig],
    kid: Option<&str>,
) -> Result<&'k TokenKeyConfig, Refused> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| Refused::unauthorized(format!("unknown key id `{kid}`"))),
        None => match keys {
            [] => Err(Refused::unauthorized("this tenant has no token keys")),
            [only] => Ok(only),
            _ => Err(Refused::unauthorized(
                "the token has no `kid` and this tenant has several keys",
            )),
        },
    }
}

/// What to mint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRequest {
    /// The channels (usually one).
    pub channels: Vec<String>,
    /// The userId (`sub`).
    pub user: Option<String>,
    /// Permissions.
    pub permissions: Vec<Permission>,
    /// Lifetime.
    pub expires_in_secs: u64,
    /// Key to sign with; `None`: the tenant's newest (last) key.
    pub kid: Option<String>,
}

impl MintRequest {
    /// Whether the token would be of use: channels that are channel names, a `sub` that
    /// is a presence userId (1 to [`crate::presence::MAX_USER_ID_BYTES`] bytes), and
    /// at least one permission. `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.channels.is_empty() {
            return Err("a token names at least one channel".to_owned());
        }
        for channel in &self.channels {
            ChannelName::new(channel).map_err(|e| e.to_string())?;
        }
        if let Some(user) = &self.user {
            check_user_id(user)?;
        }
        if self.permissions.is_empty() {
            return Err(
                "a token needs at least one permission (subscribe, publish); one without allows nothing"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// Signs a token for `tenant` at `now_ms` (the wall clock: the token's `iat` and `exp`
/// are read by other machines). `Err` names what is missing or wrong
/// ([`MintRequest::check`]).
pub fn mint(tenant: &Tenant, request: &MintRequest, now_ms: u64) -> Result<String, String> {
    request.check()?;
    let key = match &request.kid {
        Some(kid) => tenant
            .token_keys
            .iter()
            .find(|k| &k.kid == kid)
            .ok_or_else(|| format!("tenant `{}` has no key `{kid}`", tenant.id))?,
        None => tenant
            .token_keys
            .last()
            .ok_or_else(|| format!("tenant `{}` has no token_keys", tenant.id))?,
    };
    let now = now_ms / 1000;
    let (channel, channels) = match request.channels.as_slice() {
        [one] => (Some(one.clone()), None),
        many => (None, Some(many.to_vec())),
    };
    let claims = Claims {
        sub: request.user.clone(),
        channel,
        channels,
        permissions: request
            .permissions
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        exp: Some(now.saturating_add(request.expires_in_secs)),
        nbf: None,
        iat: Some(now),
        tenant: Some(tenant.id.as_str().to_owned()),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let encoding = EncodingKey::from_secret(key.secret.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
