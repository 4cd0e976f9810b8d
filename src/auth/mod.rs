//! Authentication and entitlements (PROTOCOL §8): JWT verification over a
//! key set ([`verify`]), the `tw` claim's entitlements ([`claims`]), symbol
//! patterns ([`pattern`]), §9 channel names as entitlements see them
//! ([`channel`]), the per-user connection table ([`users`]) and the ingest's
//! per-feed token file ([`feeds`]).
//!
//! Pure: no sockets, no clock (`now` is always an argument), no locks, no
//! files (the callers read them and hand over bytes). Run by whichever thread
//! holds the state: a worker verifies its own connections' tokens and checks
//! their subscriptions; the shell holds the shared user table under a lock
//! touched only on connect, auth and close; the ingest thread checks feed
//! tokens.
//!
//! Never: logs, prints or `Debug`s a secret, a token or a key.

pub mod channel;
pub mod claims;
pub mod feeds;
pub mod pattern;
pub mod users;
pub mod verify;

pub use channel::ChannelSpec;
pub use claims::{Claims, Entitlements};
pub use verify::{KeySet, Verifier, VerifierConfig};

/// Longest token accepted, bytes (a header, a query parameter or an `auth`
/// request). An RS256 token with a full `tw` claim is 2–3 KiB; the request
/// head holding a header token is capped at 8 KiB anyway.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How long a connection may stay unauthenticated under `--auth required`
/// before it is closed with 4005 (PROTOCOL §8: the first request within 5 s).
pub const AUTH_DEADLINE_NS: u64 = 5_000_000_000;

/// `--auth`: whether clients must, may or cannot present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No authentication (the default): every client is served as before 1.1.
    #[default]
    Off,
    /// A token is optional: without one a client gets the anonymous entitlements.
    Optional,
    /// Every client must authenticate (at the upgrade or with a first `auth`).
    Required,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "off" => Some(AuthMode::Off),
            "optional" => Some(AuthMode::Optional),
            "required" => Some(AuthMode::Required),
            _ => None,
        }
    }
}

/// Why a token is refused. Every one is answered `unauthorized` (HTTP 401 at
/// the upgrade; `Error{unauthorized}` then close 4005 in an `auth` request);
/// the variant is the `result` label of `tickwire_authentications_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// `alg: none`, an algorithm tickwire does not take, or one no
    /// configured key is for (HS256 presented to an RS256 key, say).
    #[error("token algorithm not accepted")]
    BadAlgorithm,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token from another issuer")]
    WrongIssuer,
    #[error("token for another audience")]
    WrongAudience,
    /// A claim missing or of the wrong type, or entitlements refused
    /// (patterns too expensive, unknown channel names…). Never holds token text.
    #[error("bad token claims: {0}")]
    BadClaims(&'static str),
}

/// What one authentication came to: the `result` label of
/// `tickwire_authentications_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// A connection authenticated (at the upgrade or with `auth`).
    Ok,
    /// A valid `auth` of the same `sub` replaced the connection's token.
    Refreshed,
    Malformed,
    TooLarge,
    BadAlgorithm,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    BadClaims,
    /// A refresh with another user's token (`Error{forbidden}`, nothing changes).
    OtherUser,
    /// A refresh with a token that expires before the one held (`Error{forbidden}`).
    Older,
    /// No `auth` within 5 s under `--auth required` (close 4005).
    Timeout,
}

impl AuthResult {
    pub const ALL: [AuthResult; 14] = [
        AuthResult::Ok,
        AuthResult::Refreshed,
        AuthResult::Malformed,
        AuthResult::TooLarge,
        AuthResult::BadAlgorithm,
        AuthResult::BadSignature,
        AuthResult::Expired,
        AuthResult::NotYetValid,
        AuthResult::WrongIssuer,
        AuthResult::WrongAudience,
        AuthResult::BadClaims,
        AuthResult::OtherUser,
        AuthResult::Older,
        AuthResult::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Refreshed => "refreshed",
            AuthResult::Malformed => "malformed",
            AuthResult::TooLarge => "too_large",
            AuthResult::BadAlgorithm => "bad_algorithm",
            AuthResult::BadSignature => "bad_signature",
            AuthResult::Expired => "expired",
            AuthResult::NotYetValid => "not_yet_valid",
            AuthResult::WrongIssuer => "wrong_issuer",
            AuthResult::WrongAudience => "wrong_audience",
            AuthResult::BadClaims => "bad_claims",
            AuthResult::OtherUser => "other_user",
            AuthResult::Older => "older_token",
            AuthResult::Timeout => "timeout",
        }
    }
}

impl From<&AuthError> for AuthResult {
    fn from(e: &AuthError) -> AuthResult {
        match e {
            AuthError::Malformed => AuthResult::Malformed,
            AuthError::TooLarge => AuthResult::TooLarge,
            AuthError::BadAlgorithm => AuthResult::BadAlgorithm,
            AuthError::BadSignature => AuthResult::BadSignature,
            AuthError::Expired => AuthResult::Expired,
            AuthError::NotYetValid => AuthResult::NotYetValid,
            AuthError::WrongIssuer => AuthResult::WrongIssuer,
            AuthError::WrongAudience => AuthResult::WrongAudience,
            AuthError::BadClaims(_) => AuthResult::BadClaims,
        }
    }
}

/// Where the upgrade request carries a token (PROTOCOL §8, first match
/// wins): `Authorization: Bearer <jwt>`, then `?token=<jwt>`. An
/// `Authorization` of another scheme is not ours (a proxy's Basic, say) and
/// is skipped. `Err` for a Bearer header or a `token` parameter that is
/// empty: a client that meant to present a token and presented nothing.
pub fn upgrade_token<'a>(
    authorization: Option<&'a str>,
    query_token: Option<&'a str>,
) -> Result<Option<&'a str>, AuthError> {
    if let Some(h) = authorization {
        let h = h.trim();
        // RFC 6750 §2.1 / RFC 9110 §11.1: the scheme is case-insensitive.
        if h.len() >= 6 && h[..6].eq_ignore_ascii_case("bearer") {
            let rest = &h[6..];
            if rest.is_empty() || rest.starts_with([' ', '\t']) {
                let t = rest.trim();
                return if t.is_empty() {
                    Err(AuthError::Malformed)
                } else {
                    Ok(Some(t))
                };
            }
        }
    }
    match query_token {
        Some("") => Err(AuthError::Malformed),
        Some(t) => Ok(Some(t)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_first_then_query() {
        assert_eq!(
            upgrade_token(Some("Bearer abc"), Some("q")),
            Ok(Some("abc"))
        );
        assert_eq!(upgrade_token(Some("bearer  abc "), None), Ok(Some("abc")));
        assert_eq!(upgrade_token(Some("BEARER\tabc"), None), Ok(Some("abc")));
        assert_eq!(
            upgrade_token(Some("Basic dXNlcg=="), Some("q")),
            Ok(Some("q"))
        );
        assert_eq!(upgrade_token(Some("Bearerx abc"), None), Ok(None));
        assert_eq!(upgrade_token(None, Some("q")), Ok(Some("q")));
        assert_eq!(upgrade_token(None, None), Ok(None));
        assert_eq!(
            upgrade_token(Some("Bearer "), Some("q")),
            Err(AuthError::Malformed)
        );
        assert_eq!(upgrade_token(None, Some("")), Err(AuthError::Malformed));
    }

    #[test]
    fn modes_and_labels() {
        assert_eq!(AuthMode::parse("off"), Some(AuthMode::Off));
        assert_eq!(AuthMode::parse("optional"), Some(AuthMode::Optional));
        assert_eq!(AuthMode::parse("required"), Some(AuthMode::Required));
        assert_eq!(AuthMode::parse("on"), None);
        let labels: std::collections::HashSet<_> =
            AuthResult::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), AuthResult::ALL.len());
    }
}
