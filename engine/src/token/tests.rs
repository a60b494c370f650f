use std::sync::Arc;

use super::*;
use crate::presence::MAX_USER_ID_BYTES;
use crate::tenant::{Plan, TenantConfig, TenantTable};

const SECRET_A: &str = "acme-secret-0123456789abcdef0123456789";
const SECRET_B: &str = "acme-secret-second-0123456789abcdef0123";
const NOW_MS: u64 = 1_800_000_000_000;

fn tenant(id: &str, keys: &[(&str, &str)]) -> Arc<Tenant> {
    let mut config = TenantConfig::new(id, Plan::Free);
    config.token_keys = keys
        .iter()
        .map(|(kid, secret)| TokenKeyConfig {
            kid: (*kid).to_owned(),
            secret: (*secret).to_owned(),
        })
        .collect();
    TenantTable::new(&[config], None).get(id).unwrap()
}

fn claims(channel: &str, permissions: &[&str], exp_in: i64) -> Claims {
    Claims {
        sub: Some("alice".into()),
        channel: Some(channel.into()),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        exp: Some((NOW_MS / 1000).saturating_add_signed(exp_in)),
        ..Claims::default()
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, secret: &str, claims: &Claims) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn refused(token: &str, tenant: &Tenant) -> String {
    let refusal = verify(token, tenant, CheckTime::at(NOW_MS)).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::Unauthorized, "{}", refusal.message);
    refusal.message
}

#[test]
fn a_good_token_grants_its_channels_permissions_and_user() {
    let acme = tenant("acme", &[("k1", SECRET_A)]);
    let token = sign(
        Algorithm::HS256,
        Some("k1"),
        SECRET_A,
        &claims("private-room", &["subscribe"], 60),
    );
    let grant = verify(&token, &acme, CheckTime::at(NOW_MS)).unwrap();
    assert_eq!(grant.user.as_deref(), Some("alice"));
    assert!(grant.allows("private-room", Permission::Subscribe).is_ok());
    let no_publish = grant
        .allows("private-room", Permission::Publish)
        .unwrap_err();
    assert_eq!(no_publish.code, ErrorCode::Forbidden);
    let other = grant.allows("private-other", Permission::Subscribe);
    assert_eq!(other.unwrap_err().code, ErrorCode::Unauthorized);
    assert_eq!(grant.expires_ms, (NOW_MS / 1000 + 60 + SKEW_SECS) * 1000);
}

#[test]
fn a_token_without_kid_needs_a_tenant_with_one_key() {
    let c = claims("private-room", &["subscribe"], 60);
    let token = sign(Algorithm::HS256, None, SECRET_A, &c);
    assert!(verify(
        &token,
        &tenant("acme", &[("k1", SECRET_A)]),
        CheckTime::at(NOW_MS)
    )
    .is_ok());
    let two = tenant("acme", &[("k1", SECRET_A), ("k2", SECRET_B)]);
    assert!(refused(&token, &two).contains("several keys"));
    // With a kid, either key of a rotation works.
    let by_k2 = sign(Algorithm::HS256, Some("k2"), SECRET_B, &c);
    assert!(verify(&by_k2, &two, CheckTime::at(NOW_MS)).is_ok());
}

#[test]
fn every_forgery_and_misuse_is_refused() {
    let acme = tenant("acme", &[("k1", SECRET_A)]);
    let good = claims("private-room", &["subscribe"], 60);
    // alg: none, with the good claims and no signature.
    let payload = b64url(serde_json::to_string(&good).unwrap().as_bytes());
    for header in [r#"{"alg":"none","kid":"k1"}"#, r#"{"alg":"none"}"#] {
        let none = format!("{}.{payload}.", b64url(header.as_bytes()));
        refused(&none, &acme);
    }
    // Another algorithm with the same secret.
    refused(&sign(Algorithm::HS384, Some("k1"), SECRET_A, &good), &acme);
    // A bad signature: the right kid, the wrong secret.
    refused(&sign(Algorithm::HS256, Some("k1"), SECRET_B, &good), &acme);
    // A tampered payload.
    let token = sign(Algorithm::HS256, Some("k1"), SECRET_A, &good);
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut evil = good.clone();
    evil.sub = Some("mallory".into());
    let evil_payload = b64url(serde_json::to_string(&evil).unwrap().as_bytes());
    parts[1] = &evil_payload;
    refused(&parts.join("."), &acme);
    // Unknown kid; another tenant's key; a tenant claim naming another tenant.
    assert!(refused(&sign(Algorithm::HS256, Some("k9"), SECRET_A, &good), &acme).contains("k9"));
    let globex = tenant("globex", &[("g1", SECRET_B)]);
    refused(&sign(Algorithm::HS256, Some("g1"), SECRET_B, &good), &acme);
    let mut for_globex = good.clone();
    for_globex.tenant = Some("globex".into());
    let token = sign(Algorithm::HS256, Some("k1"), SECRET_A, &for_globex);
    assert!(refused(&token, &acme).contains("another tenant"));
    assert!(verify(
        &sign(Algorithm::HS256, Some("g1"), SECRET_B, &good),
        &globex,
        CheckTime::at(NOW_MS)
    )
    .is_ok());
    // Garbage.
    refused("not-a-jwt", &acme);
}

#[test]
fn expiry_and_not_before_allow_thirty_seconds_of_skew() {
    let acme = tenant("acme", &[("k1", SECRET_A)]);
    let at = |exp_in: i64, nbf_in: Option<i64>| {
        let mut c = claims("private-room", &["subscribe"], exp_in);
        c.nbf = nbf_in.map(|n| (NOW_MS / 1000).saturating_add_signed(n));
        sign(Algorithm::HS256, Some("k1"), SECRET_A, &c)
    };
    assert!(verify(&at(-29, None), &acme, CheckTime::at(NOW_MS)).is_ok());
    assert!(refused(&at(-30, None), &acme).contains("expired"));
    assert!(verify(&at(60, Some(30)), &acme, CheckTime::at(NOW_MS)).is_ok());
    assert!(refused(&at(60, Some(31)), &acme).contains("nbf"));
    let mut no_exp = claims("private-room", &["subscribe"], 0);
    no_exp.exp = None;
    let token = sign(Algorithm::HS256, Some("k1"), SECRET_A, &no_exp);
    assert!(refused(&token, &acme).contains("exp"));
}

#[test]
fn minted_tokens_verify_with_the_newest_key() {
    let acme = tenant("acme", &[("old", SECRET_A), ("new", SECRET_B)]);
    let request = MintRequest {
        channels: vec!["private-room".into()],
        user: Some("bob".into()),
        permissions: vec![Permission::Subscribe, Permission::Publish],
        expires_in_secs: 120,
        kid: None,
    };
    let token = mint(&acme, &request, NOW_MS).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("new"));
    let grant = verify(&token, &acme, CheckTime::at(NOW_MS)).unwrap();
    assert_eq!(grant.user.as_deref(), Some("bob"));
    assert!(grant.allows("private-room", Permission::Publish).is_ok());
    let expired = verify(
        &token,
        &acme,
        CheckTime::at(NOW_MS + (120 + SKEW_SECS) * 1000),
    );
    assert!(expired.is_err());
    let old = mint(
        &acme,
        &MintRequest {
            kid: Some("old".into()),
            ..request.clone()
        },
        NOW_MS,
    )
    .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&old).unwrap().kid.as_deref(),
        Some("old")
    );
    assert!(mint(&tenant("bare", &[]), &request, NOW_MS).is_err());
}

/// NumericDates with a fraction (PyJWT writes `time.time() + 3600` as it is) are read
/// rounded down; negative ones are refused (found in review: any fraction was refused).
#[test]
fn numeric_dates_with_a_fraction_are_read_and_negative_ones_refused() {
    let acme = tenant("acme", &[("k1", SECRET_A)]);
    let now = NOW_MS / 1000;
    let claims = |exp: &str| {
        serde_json::json!({
            "sub": "alice",
            "channel": "private-room",
            "permissions": ["subscribe"],
            "exp": serde_json::from_str::<serde_json::Value>(exp).unwrap(),
            "iat": (now as f64) + 0.25,
        })
    };
    let sign_json = |claims: &serde_json::Value| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let key = EncodingKey::from_secret(SECRET_A.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    };
    let token = sign_json(&claims(&format!("{}.75", now + 60)));
    let grant = verify(&token, &acme, CheckTime::at(NOW_MS)).unwrap();
    assert_eq!(grant.expires_ms, (now + 60 + SKEW_SECS) * 1000);
    let token = sign_json(&claims("-5"));
    assert!(refused(&token, &acme).contains("invalid token"));
}

/// The shard's clock can run far behind the wall (wall time read at start-up plus
/// monotonic time since: a suspend or an NTP step leaves it behind). `exp` and `nbf` are
/// read by the wall clock, and the grant's deadline is the remaining lifetime placed on
/// the shard's clock (found in review: such an engine took tokens past their `exp`).
#[test]
fn expiry_is_checked_by_the_wall_clock_and_the_deadline_placed_on_the_shards() {
    let acme = tenant("acme", &[("k1", SECRET_A)]);
    let hour_ms = 3_600_000;
    let behind = CheckTime {
        wall_ms: NOW_MS,
        clock: Millis(NOW_MS - hour_ms),
    };
    // Expired ten minutes ago by the wall; by the shard's clock it has 50 minutes left.
    let expired = sign(
        Algorithm::HS256,
        Some("k1"),
        SECRET_A,
        &claims("private-room", &["subscribe"], -600),
    );
    let refusal = verify(&expired, &acme, behind).unwrap_err();
    assert!(refusal.message.contains("expired"), "{}", refusal.message);
    // Fresh, not valid before now by the wall: accepted, and it ends a minute (plus
    // the skew) later on the shard's clock, where its expiry timer runs.
    let mut fresh = claims("private-room", &["subscribe"], 60);
    fresh.nbf = Some(NOW_MS / 1000);
    let fresh = sign(Algorithm::HS256, Some("k1"), SECRET_A, &fresh);
    let grant = verify(&fresh, &acme, behind).unwrap();
    assert_eq!(grant.expires_ms, NOW_MS - hour_ms + (60 + SKEW_SECS) * 1000);

    // What every caller passes: a system clock whose start-up reading is an hour
    // behind the wall still checks by the wall (`CheckTime::read` reads it afresh).
    let clock = Clock::System {
        base_ms: crate::clock::wall_ms() - hour_ms,
        base: std::time::Instant::now(),
    };
    let at = CheckTime::read(&clock);
    assert!(at.wall_ms.abs_diff(crate::clock::wall_ms()) < 60_000);
    assert!(at.clock.0.abs_diff(at.wall_ms - hour_ms) < 60_000);
    let mut by_wall = claims("private-room", &["subscribe"], 0);
    by_wall.exp = Some(at.wall_ms / 1000 - 600);
    let token = sign(Algorithm::HS256, Some("k1"), SECRET_A, &by_wall);
    assert!(verify(&token, &acme, at).is_err());
    // A manual clock moves both readings.
    let manual = crate::clock::ManualClock::new(Millis(NOW_MS));
    assert_eq!(
        CheckTime::read(&Clock::Manual(manual)),
        CheckTime::at(NOW_MS)
    );
}

/// A `sub` longer than a presence userId would make every presence join of the
/// connection a bad_request: the token is refused (found in review), and not minted.
#[test]
fn a_sub_longer_than_a_presence_user_id_is_verified_but_not_minted() {
    let acme = tenant("acme", &[("k1", SECRET_A)]);
    let mut long = claims("private-room", &["subscribe"], 60);
    long.sub = Some("u".repeat(MAX_USER_ID_BYTES + 1));
    // Verified all the same (an issuer's long ids still subscribe and publish; a
    // presence join answers `bad_request` naming the bound), never minted.
    let token = sign(Algorithm::HS256, Some("k1"), SECRET_A, &long);
    assert!(verify(&token, &acme, CheckTime::at(NOW_MS)).is_ok());
    long.sub = Some("u".repeat(MAX_USER_ID_BYTES));
    let token = sign(Algorithm::HS256, Some("k1"), SECRET_A, &long);
    assert!(verify(&token, &acme, CheckTime::at(NOW_MS)).is_ok());

    let request = |user: Option<String>, channel: &str, permissions: Vec<Permission>| MintRequest {
        channels: vec![channel.to_owned()],
        user,
        permissions,
        expires_in_secs: 60,
        kid: None,
    };
    let subscribe = || vec![Permission::Subscribe];
    let long_user = Some("u".repeat(MAX_USER_ID_BYTES + 1));
    let err = mint(
        &acme,
        &request(long_user, "private-room", subscribe()),
        NOW_MS,
    )
    .unwrap_err();
    assert!(err.contains("at most 256"), "{err}");
    let err = mint(
        &acme,
        &request(Some(String::new()), "c", subscribe()),
        NOW_MS,
    )
    .unwrap_err();
    assert!(err.contains("empty"), "{err}");
    let err = mint(&acme, &request(None, "", subscribe()), NOW_MS).unwrap_err();
    assert!(err.contains("channel name is empty"), "{err}");
    let err = mint(&acme, &request(None, &"c".repeat(256), subscribe()), NOW_MS).unwrap_err();
    assert!(err.contains("longer than 255"), "{err}");
    let err = mint(&acme, &request(None, "c", vec![]), NOW_MS).unwrap_err();
    assert!(err.contains("at least one permission"), "{err}");
    assert!(mint(&acme, &request(None, &"c".repeat(255), subscribe()), NOW_MS).is_ok());
}
