//! AnyCable's JWT identification: a token in the `X-JID` header, the
//! `anycable-token.<token>` subprotocol or `?jid=` (in that order; the parameter name is
//! configurable) carries the connection's identifiers in its `ext` claim. A valid one
//! identifies the connection without the app's `connect`.
//!
//! HS256, HS384 and HS512 (as AnyCable-Go accepts), through the `jsonwebtoken` crate;
//! `exp` is optional and has no leeway, `nbf` is checked when present.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::http::RequestHead;

pub const SUBPROTOCOL_PREFIX: &str = "anycable-token.";

#[derive(Clone)]
pub struct JwtConfig {
    /// `ANYCABLE_JWT_SECRET`, else `ANYCABLE_SECRET`.
    pub key: Vec<u8>,
    /// `ANYCABLE_JWT_PARAM` (`jid`): the query parameter, and the header `x-<param>`.
    pub param: String,
    /// `ANYCABLE_ENFORCE_JWT`: a connection without a token is refused.
    pub enforce: bool,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("JwtConfig")
            .field("param", &self.param)
            .field("enforce", &self.enforce)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// `token_expired` (reconnect: false): the client should fetch a new token.
    Expired,
    /// `unauthorized`: forged, malformed, another algorithm, or no `ext` string.
    Invalid(String),
}

/// A NumericDate claim (`exp`, `nbf`): seconds since the epoch, a JSON number (RFC 7519
/// allows fractions). jsonwebtoken skips a claim it cannot read as an integer, so a
/// string `exp` would never expire: anything but a number is refused here.
fn numeric_date(name: &str, claim: Option<&serde_json::Value>) -> Result<Option<f64>, JwtError> {
    match claim {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(JwtError::Invalid(format!("{name} is not a number"))),
    }
}

impl JwtConfig {
    /// The token the request carries, if any.
    pub fn token<'a>(&self, head: &'a RequestHead) -> Option<&'a str> {
        let header = format!("x-{}", self.param.to_ascii_lowercase());
        if let Some(t) = head
            .header(&header)
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Some(t);
        }
        let offered = head
            .headers
            .iter()
            .filter(|(k, _)| k == "sec-websocket-protocol")
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .find_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX))
            .filter(|t| !t.is_empty());
        if offered.is_some() {
            return offered;
        }
        let query = head.target.split_once('?')?.1;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == self.param)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }

    /// The identifiers JSON (`ext`, verbatim) of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, JwtError> {
        self.verify_with_expiry(token).map(|(ext, _)| ext)
    }

    /// [`JwtConfig::verify`], and the token's `exp` (unix seconds, rounded down) if it
    /// has one.
    pub fn verify_with_expiry(&self, token: &str) -> Result<(String, Option<u64>), JwtError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &DecodingKey::from_secret(&self.key),
            &validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            other => JwtError::Invalid(format!("{other:?}")),
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let exp = numeric_date("exp", data.claims.get("exp"))?;
        if exp.is_some_and(|exp| now >= exp) {
            return Err(JwtError::Expired);
        }
        let exp = exp.map(|e| e.max(0.0) as u64);
        if numeric_date("nbf", data.claims.get("nbf"))?.is_some_and(|nbf| now < nbf) {
            return Err(JwtError::Invalid("not yet valid".into()));
        }
        match data.claims.get("ext") {
            // The identifiers, keyed by `identified_by` name: a JSON object.
            Some(serde_json::Value::String(ext))
                if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(ext)
                    .is_ok() =>
            {
                Ok((ext.clone(), exp))
            }
            Some(serde_json::Value::String(_)) => {
                Err(JwtError::Invalid("ext is not a JSON object".into()))
            }
            _ => Err(JwtError::Invalid("no ext claim holding a string".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn config() -> JwtConfig {
        JwtConfig {
            key: b"s3cr3t".to_vec(),
            param: "jid".into(),
            enforce: false,
        }
    }

    fn token(alg: Algorithm, claims: serde_json::Value, key: &[u8]) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn the_documented_token_is_expired_and_its_signature_good() {
        let t = "eyJhbGciOiJIUzI1NiJ9.eyJleHQiOiJ7XCJ1c2VyXCI6XCJaMmxrT2k4dmJYbGhjSEF2VlhObGNpODBNZ1wifSIsImV4cCI6MTc2NzIyNTYwMH0.HMRAMFbPToMVTuPT7fCR6aX_d8aMJASA_snGTa7b3rE";
        assert_eq!(config().verify(t), Err(JwtError::Expired));
        let forged = t.replace("HMRAM", "HMRAN");
        assert!(matches!(
            config().verify(&forged),
            Err(JwtError::Invalid(_))
        ));
    }

    #[test]
    fn outcomes() {
        let ext = serde_json::json!({"ext": r#"{"user":"u1"}"#, "exp": now() + 60});
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert_eq!(
                config()
                    .verify(&token(alg, ext.clone(), b"s3cr3t"))
                    .as_deref(),
                Ok(r#"{"user":"u1"}"#)
            );
        }
        assert!(matches!(
            config().verify(&token(Algorithm::HS256, ext.clone(), b"other")),
            Err(JwtError::Invalid(_))
        ));
        let no_exp = serde_json::json!({"ext": "{}"});
        assert_eq!(
            config()
                .verify(&token(Algorithm::HS256, no_exp, b"s3cr3t"))
                .as_deref(),
            Ok("{}")
        );
        let not_json = serde_json::json!({"ext": "user=1"});
        assert!(matches!(
            config().verify(&token(Algorithm::HS256, not_json, b"s3cr3t")),
            Err(JwtError::Invalid(_))
        ));
        let not_string = serde_json::json!({"ext": {"user": 1}});
        assert!(matches!(
            config().verify(&token(Algorithm::HS256, not_string, b"s3cr3t")),
            Err(JwtError::Invalid(_))
        ));
        let later = serde_json::json!({"ext": "{}", "nbf": now() + 600});
        assert!(matches!(
            config().verify(&token(Algorithm::HS256, later, b"s3cr3t")),
            Err(JwtError::Invalid(_))
        ));
        // alg: none, and truncation.
        let none = format!(
            "{}.{}.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"alg":"none"}"#
            ),
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"ext":"{}"}"#
            )
        );
        assert!(matches!(config().verify(&none), Err(JwtError::Invalid(_))));
        let good = token(Algorithm::HS256, ext, b"s3cr3t");
        assert!(matches!(
            config().verify(&good[..good.len() - 5]),
            Err(JwtError::Invalid(_))
        ));
    }

    #[test]
    fn finds_the_token_in_header_then_subprotocol_then_query() {
        let head = |headers: &[(&str, &str)], target: &str| RequestHead {
            method: "GET".into(),
            target: target.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tls: false,
        };
        let c = config();
        assert_eq!(c.token(&head(&[], "/cable?a=1&jid=q")), Some("q"));
        let proto = [(
            "sec-websocket-protocol",
            "actioncable-v1-json, anycable-token.p",
        )];
        assert_eq!(c.token(&head(&proto, "/cable?jid=q")), Some("p"));
        let both = [proto[0], ("x-jid", "h")];
        assert_eq!(c.token(&head(&both, "/cable?jid=q")), Some("h"));
        assert_eq!(c.token(&head(&[], "/cable")), None);
    }

    #[test]
    fn exp_and_nbf_must_be_numbers_and_fractions_count() {
        let c = config();
        let ext = r#"{"user":"u1"}"#;
        let signed = |claims| token(Algorithm::HS256, claims, b"s3cr3t");
        // A string exp never expired before: jsonwebtoken skips what it cannot parse.
        let t = signed(serde_json::json!({"ext": ext, "exp": "1"}));
        let got = c.verify(&t);
        assert!(
            matches!(&got, Err(JwtError::Invalid(why)) if why.contains("exp")),
            "{got:?}"
        );
        let t = signed(serde_json::json!({"ext": ext, "exp": null}));
        assert!(matches!(c.verify(&t), Err(JwtError::Invalid(_))));
        let t = signed(serde_json::json!({"ext": ext, "nbf": "9999999999"}));
        assert!(matches!(c.verify(&t), Err(JwtError::Invalid(why)) if why.contains("nbf")));
        // A fraction is a NumericDate too: in the past, expired; in the future, fine.
        let past = now() as f64 - 10.5;
        let t = signed(serde_json::json!({"ext": ext, "exp": past}));
        assert!(matches!(c.verify(&t), Err(JwtError::Expired)));
        let t = signed(serde_json::json!({"ext": ext, "exp": now() as f64 + 60.5}));
        assert_eq!(c.verify(&t).unwrap(), ext);
        let t = signed(serde_json::json!({"ext": ext, "nbf": now() as f64 + 60.5}));
        assert!(matches!(c.verify(&t), Err(JwtError::Invalid(_))));
    }
}
