//! Which `Origin`s may open a WebSocket: the one check, for both entry points (the
//! server's own port and sockets handed over from Puma), made before the `101` reply;
//! the same rule for the HTTP transports (events, polls), and their CORS headers.
//!
//! The Ruby side builds the policy from the app's settings (Action Cable's
//! `allowed_request_origins`, `allow_same_origin_as_host`,
//! `disable_request_forgery_protection`, or `ANYCABLE_ALLOWED_ORIGINS`); this module
//! only applies it.

use regex::{Regex, RegexBuilder};

use super::head::RequestHead;

/// One entry of Action Cable's `allowed_request_origins`, or of `ANYCABLE_ALLOWED_ORIGINS`.
#[derive(Debug, Clone)]
pub enum OriginRule {
    /// A String entry: the whole Origin must equal it (Ruby's `String#===`).
    Exact(String),
    /// A Regexp entry: matched anywhere in the Origin (Ruby's `Regexp#===`).
    Pattern(Regex),
    /// An `ANYCABLE_ALLOWED_ORIGINS` host pattern (`example.com`, `*.example.com`,
    /// `localhost:3000`): the Origin's scheme is ignored, a port only counts when the
    /// pattern names one.
    Host(String),
}

/// The origin rule of Action Cable's `Connection::Base#allow_request_origin?`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// `disable_request_forgery_protection`: every request, with or without an Origin.
    pub any: bool,
    /// `allow_same_origin_as_host`: an Origin equal to `<scheme>://<Host header>`.
    pub same_as_host: bool,
    pub rules: Vec<OriginRule>,
}

/// A Ruby Regexp's source and the options that change what it matches.
#[derive(Debug, Clone, Default)]
pub struct RubyRegexp {
    pub source: String,
    pub ignore_case: bool,
    pub extended: bool,
    /// Ruby's `m`: `.` matches a newline too.
    pub multiline: bool,
}

impl OriginPolicy {
    /// Every origin (the core's default; the Ruby side always sets a policy).
    pub fn any() -> Self {
        OriginPolicy {
            any: true,
            ..Default::default()
        }
    }

    /// Compiles a Ruby Regexp for the regex crate. Ruby's `^`/`$` match at line
    /// boundaries; so do these. Features the regex crate lacks (look-around,
    /// back-references, `\h`, possessive quantifiers) are an error naming the pattern.
    pub fn compile(re: &RubyRegexp) -> Result<Regex, String> {
        RegexBuilder::new(&re.source)
            .multi_line(true)
            .case_insensitive(re.ignore_case)
            .ignore_whitespace(re.extended)
            .dot_matches_new_line(re.multiline)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                format!(
                    "the origin pattern /{}/ cannot be checked by anycable-rs ({}); \
                     use Strings, a simpler Regexp, or ANYCABLE_ALLOWED_ORIGINS",
                    re.source,
                    e.to_string().lines().last().unwrap_or("invalid")
                )
            })
    }

    /// `origin`: the Origin header; `host`: the Host header; `https`: whether the
    /// request reached the app over TLS (directly or, per the proxy's headers, before it).
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>, https: bool) -> bool {
        if self.any {
            return true;
        }
        let Some(origin) = origin else {
            return false;
        };
        if self.same_as_host {
            if let Some(host) = host {
                let scheme = if https { "https" } else { "http" };
                if origin
                    .strip_prefix(scheme)
                    .and_then(|r| r.strip_prefix("://"))
                    == Some(host)
                {
                    return true;
                }
            }
        }
        self.rules.iter().any(|rule| match rule {
            OriginRule::Exact(s) => s == origin,
            OriginRule::Pattern(re) => re.is_match(origin),
            OriginRule::Host(pattern) => host_matches(origin, pattern),
        })
    }
}

/// Whether a browser page may make this request (an event stream, a poll): one with
/// an `Origin` as the WebSocket path allows it; one without (a same-origin `EventSource`, curl) unless
/// the browser says it comes from another site (`Sec-Fetch-Site`), which a cross-site
/// `<img>` or `<script>` would (they send no `Origin`, yet carry the user's cookies).
pub fn request_allowed(head: &RequestHead, origins: &OriginPolicy) -> bool {
    match head.header("origin") {
        Some(origin) => origins.allows(Some(origin), head.header("host"), head.https()),
        None => {
            origins.any
                || !matches!(
                    head.header("sec-fetch-site").map(str::trim),
                    Some("cross-site" | "same-site")
                )
        }
    }
}

/// CORS headers for an `Origin` that is `allowed` (the stream is readable by that
/// page, with its cookies); none for another, or without one.
pub fn cors_headers(head: &RequestHead, allowed: bool) -> String {
    match head.header("origin") {
        Some(origin) if allowed && !origin.contains(['\r', '\n']) => format!(
            "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Allow-Credentials: true\r\n\
             Vary: Origin\r\n"
        ),
        _ => String::new(),
    }
}

fn host_matches(origin: &str, pattern: &str) -> bool {
    let host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin)
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let host_no_port = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(&host);
    let pattern = pattern.trim().to_ascii_lowercase();
    let pattern = pattern
        .split_once("://")
        .map(|(_, p)| p.to_string())
        .unwrap_or(pattern);
    let candidate = if pattern.contains(':') {
        host.as_str()
    } else {
        host_no_port
    };
    match pattern.strip_prefix("*.") {
        Some(suffix) => candidate == suffix || candidate.ends_with(&format!(".{suffix}")),
        None => candidate == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> OriginPolicy {
        OriginPolicy {
            rules: list
                .iter()
                .map(|h| OriginRule::Host(h.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn host_patterns() {
        let p = hosts(&["example.com", "*.app.test", "localhost:3000"]);
        let ok = |o| p.allows(Some(o), None, false);
        assert!(ok("https://example.com"));
        assert!(ok("http://example.com:8080"));
        assert!(ok("https://a.b.app.test"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("http://localhost:4000"));
        assert!(!ok("https://evil.com"));
        assert!(!ok("https://notexample.com"));
        assert!(!p.allows(None, None, false));
    }

    #[test]
    fn action_cable_rules() {
        let re = OriginPolicy::compile(&RubyRegexp {
            // Rails' development default, as Regexp#source gives it.
            source: r"https?:\/\/localhost:\d+".into(),
            ..Default::default()
        })
        .unwrap();
        let p = OriginPolicy {
            any: false,
            same_as_host: true,
            rules: vec![
                OriginRule::Exact("https://app.example".into()),
                OriginRule::Pattern(re),
            ],
        };
        assert!(p.allows(Some("https://app.example"), None, false));
        assert!(!p.allows(Some("https://app.example/"), None, false));
        assert!(p.allows(Some("http://localhost:3000"), None, false));
        assert!(!p.allows(Some("http://localhost"), None, false));
        // Same origin as the Host header, with the request's scheme.
        assert!(p.allows(Some("https://my.host"), Some("my.host"), true));
        assert!(!p.allows(Some("http://my.host"), Some("my.host"), true));
        assert!(p.allows(Some("http://my.host:8080"), Some("my.host:8080"), false));
        assert!(!p.allows(None, Some("my.host"), false));
        assert!(OriginPolicy::any().allows(None, None, false));
        assert!(!OriginPolicy::default().allows(Some("http://x"), Some("x"), false));
    }

    #[test]
    fn ruby_regexp_options_and_anchors() {
        let compile = |source: &str, ignore_case| {
            OriginPolicy::compile(&RubyRegexp {
                source: source.into(),
                ignore_case,
                ..Default::default()
            })
        };
        assert!(compile(r"\Ahttps://EXAMPLE\.com\z", true)
            .unwrap()
            .is_match("https://example.com"));
        assert!(!compile(r"\Ahttps://example\.com\z", false)
            .unwrap()
            .is_match("https://example.com.evil"));
        assert!(compile(r"^https://example\.com$", false)
            .unwrap()
            .is_match("https://example.com"));
        let err = compile(r"(?<=a)b", false).unwrap_err();
        assert!(err.contains("/(?<=a)b/"), "{err}");
    }
}
