//! HTTP plumbing of the server: the checks every request passes (Host, token, Origin),
//! responses with the security headers, JSON errors, query strings.

use std::io::Read;
use tiny_http::{Header, Request, Response, StatusCode};

/// The cookie that keeps the token after the page was opened with `?token=`, named after the
/// port: browsers share cookies between the ports of a host, so two servers side by side
/// would otherwise overwrite each other's token.
pub fn token_cookie_name(port: u16) -> String {
    format!("ser_engine_token_{port}")
}

/// Headers every response carries: no sniffing, nothing from other origins, not framed, no
/// Referer (the URL may hold the token). No CORS headers are ever sent.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
];

pub fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

/// The value of request header `name` (first one), if present and ASCII.
pub fn req_header<'a>(req: &'a Request, name: &'static str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// A response with the security headers.
pub fn respond_bytes(
    status: u16,
    content_type: &str,
    body: Vec<u8>,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut r = Response::from_data(body).with_status_code(StatusCode(status));
    r.add_header(header("Content-Type", content_type));
    for (k, v) in SECURITY_HEADERS {
        r.add_header(header(k, v));
    }
    r
}

pub fn json(status: u16, v: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    respond_bytes(status, "application/json", v.to_string().into_bytes())
}

/// `{"error": msg}` with `status`.
pub fn error(status: u16, msg: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    json(status, &serde_json::json!({ "error": msg }))
}

/// The raw header block of a streamed (SSE) response, security headers included.
pub fn stream_head(content_type: &str) -> String {
    let mut s = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\nX-Accel-Buffering: no\r\n"
    );
    for (k, v) in SECURITY_HEADERS {
        s += &format!("{k}: {v}\r\n");
    }
    s += "\r\n";
    s
}

/// Splits `/path?query` into the path and its decoded `key=value` pairs.
pub fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    (percent_decode(path), pairs)
}

/// `%XX` and `+` decoding (invalid escapes are kept as they are; the result is looked up,
/// never used as a path).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn query<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The host part of a Host header or an origin's authority (`[::1]:8000` → `[::1]`).
fn host_only(authority: &str) -> &str {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        }
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}

/// The access rules of one server.
pub struct Guard {
    /// None: `--no-token`.
    pub token: Option<String>,
    /// Host names accepted in the Host header besides the loopback ones (the bound address,
    /// when it is not loopback).
    pub extra_hosts: Vec<String>,
    /// The bound port (names the token cookie).
    pub port: u16,
}

/// A refused request: status and message.
pub type Refusal = (u16, String);

impl Guard {
    /// Host (DNS rebinding), token (query, cookie or Bearer) and, for every request that is
    /// not a GET/HEAD, Origin. Returns whether the token came in the query (then the answer
    /// sets the cookie).
    pub fn check(&self, req: &Request, q: &[(String, String)]) -> Result<bool, Refusal> {
        let host = req_header(req, "Host").ok_or((403, "no Host header".to_string()))?;
        let h = host_only(host).to_ascii_lowercase();
        let loopback = ["localhost", "127.0.0.1", "[::1]"];
        if !loopback.contains(&h.as_str()) && !self.extra_hosts.contains(&h) {
            return Err((
                403,
                format!(
                    "Host '{host}' is not accepted (only localhost, 127.0.0.1 and [::1]; reach a \
                     remote server through `ssh -L`)"
                ),
            ));
        }
        let method = req.method().as_str().to_ascii_uppercase();
        if method != "GET" && method != "HEAD" {
            if let Some(origin) = req_header(req, "Origin") {
                let expected = format!("http://{host}");
                if !origin.eq_ignore_ascii_case(&expected) {
                    return Err((
                        403,
                        format!("Origin '{origin}' is not this server ({expected})"),
                    ));
                }
            }
        }
        let Some(token) = &self.token else {
            return Ok(false);
        };
        let from_query = query(q, "token");
        let bearer = req_header(req, "Authorization").and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        });
        let cookie = req_header(req, "Cookie").and_then(|c| {
            c.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == token_cookie_name(self.port)).then_some(v)
            })
        });
        let given: Vec<&str> = [from_query, bearer.map(str::trim), cookie]
            .into_iter()
            .flatten()
            .collect();
        if given.is_empty() {
            return Err((
                401,
                "a token is required: open the URL that `ser-engine serve` printed, or send \
                 `Authorization: Bearer TOKEN`"
                    .to_string(),
            ));
        }
        if !given.iter().any(|g| same_secret(g, token)) {
            return Err((403, "wrong token".to_string()));
        }
        Ok(from_query.is_some_and(|g| same_secret(g, token)))
    }
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A fresh random token (128 bits from the OS, hex).
pub fn random_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The cookie header that keeps `token` for this server (HttpOnly: scripts never see it).
pub fn token_cookie(token: &str, port: u16) -> Header {
    header(
        "Set-Cookie",
        &format!(
            "{}={token}; Path=/; HttpOnly; SameSite=Strict",
            token_cookie_name(port)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2Fb%20c+d"), "a/b c d");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%2e%2E"), "..");
    }

    #[test]
    fn host_part_of_authorities() {
        assert_eq!(host_only("localhost:8000"), "localhost");
        assert_eq!(host_only("[::1]:80"), "[::1]");
        assert_eq!(host_only("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("ab", "abc"));
    }
}
