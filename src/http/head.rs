//! A parsed HTTP request head, as both entry points have it: read by the server on its
//! own port, or handed over (already parsed by Puma) with a hijacked socket.

/// A parsed HTTP request head. Header names are lower-case.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub method: String,
    /// Path with query string, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The connection itself came over TLS (Puma's `HTTPS`/`rack.url_scheme`).
    pub tls: bool,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query's `name=value` pairs in order, decoded as forms are (`+` is a space).
    pub fn query_params(&self) -> Vec<(String, String)> {
        let Some((_, query)) = self.target.split_once('?') else {
            return Vec::new();
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(pair), String::new()),
            })
            .collect()
    }

    /// Rack's `Request#ssl?`: TLS on this connection, else what a proxy says
    /// (`X-Forwarded-Ssl: on`, `X-Forwarded-Scheme`, the first `X-Forwarded-Proto`).
    pub fn https(&self) -> bool {
        if self.tls || self.header("x-forwarded-ssl") == Some("on") {
            return true;
        }
        let allowed = |s: &str| ["https", "http", "wss", "ws"].contains(&s);
        let scheme = self
            .header("x-forwarded-scheme")
            .filter(|s| allowed(s))
            .or_else(|| {
                self.header("x-forwarded-proto")
                    .map(|p| p.split(',').next().unwrap_or(""))
                    .filter(|s| allowed(s))
            });
        matches!(scheme, Some("https" | "wss"))
    }

    pub(crate) fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Parses a request head from `buf`: `Ok(None)` while incomplete, else the head and
/// how many bytes it took.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            let head = RequestHead {
                method: req.method.unwrap_or("").to_string(),
                target: req.path.unwrap_or("").to_string(),
                headers: req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
                tls: false,
            };
            Ok(Some((head, len)))
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head_in_pieces() {
        let raw = b"GET /cable?x=1 HTTP/1.1\r\nHost: a\r\nX-Request-ID: r1\r\n\r\nrest";
        assert_eq!(parse_head(&raw[..10]).unwrap().map(|h| h.1), None);
        let (h, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(h.path(), "/cable");
        assert_eq!(h.header("X-Request-Id"), Some("r1"));
        assert!(parse_head(b"\x00\x01 nonsense\r\n\r\n").is_err());
    }
}
