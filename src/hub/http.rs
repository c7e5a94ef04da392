//! A small blocking HTTP layer for the Hub's API: bounded retries with exponential backoff on
//! connection errors, 408, 429 and 5xx; counting of requests and bytes; the token attached only
//! to requests for the Hub's own origin; and every message that could carry text from outside
//! (transport errors, server error bodies) scrubbed of the token before it becomes an error.

use crate::util::error::{Error, Result};
use indicatif::ProgressBar;
use reqwest::blocking::{Body, Client};
use reqwest::{Method, Url};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A Hub access token. Its `Debug` form never shows the secret, so it cannot leak through a
/// stray `{:?}`; the value is only read where a request header is built.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token from its text (surrounding whitespace removed). `None` when empty.
    pub fn new(secret: impl Into<String>) -> Option<Token> {
        let s = secret.into().trim().to_string();
        (!s.is_empty()).then_some(Token(s))
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token replaced by `[token]`.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.0, "[token]")
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// How often and how patiently a request is repeated after a connection error or a transient
/// status (408, 429, 5xx). Attempt `n` (from 1) waits `base_delay * 2^(n-1)`, at most
/// `max_delay` (a `Retry-After` from the server is honoured up to `max_delay` too).
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: never retry).
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// What was sent, for the summary.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Traffic {
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// Request body bytes sent, retries included.
    pub bytes_sent: u64,
    /// Requests that were repeated after a transient failure.
    pub retries: u64,
}

/// A request body that can be produced again for a retry.
pub(crate) enum Payload<'a> {
    Bytes {
        data: &'a [u8],
        content_type: &'static str,
    },
    /// `len` bytes of a file from `offset`, reported to the progress bars as they are read.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
        bars: &'a [ProgressBar],
    },
}

impl Payload<'_> {
    fn len(&self) -> u64 {
        match self {
            Payload::Bytes { data, .. } => data.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }
}

/// A response read to the end.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::input(format!(
                "{what}: the Hub's answer is not what l3kit expects ({e}): {}",
                snippet(&self.body)
            ))
        })
    }

    /// The server's own explanation: the `X-Error-Message` header, else the JSON body's
    /// `error` (or `message`) field, else the start of the body.
    pub fn server_message(&self) -> Option<String> {
        if let Some(m) = self.header("x-error-message") {
            return Some(m.to_string());
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.body) {
            for key in ["error", "message"] {
                if let Some(s) = v.get(key).and_then(|e| e.as_str()) {
                    return Some(s.to_string());
                }
            }
        }
        let s = snippet(&self.body);
        (!s.is_empty()).then_some(s)
    }
}

/// The first 300 characters of a body, on one line.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut s: String = one_line.chars().take(300).collect();
    if one_line.chars().count() > 300 {
        s.push_str("...");
    }
    s
}

/// Counts bytes as reqwest reads the body and moves the progress bars along.
struct CountingReader<R> {
    inner: R,
    bars: Vec<ProgressBar>,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        for b in &self.bars {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

pub(crate) struct Http {
    client: Client,
    origin: String,
    token: Option<Token>,
    retry: RetryPolicy,
    timeout: Duration,
    pub traffic: Traffic,
}

/// Slowest transfer rate a body upload is given time for before it counts as stalled.
const MIN_RATE_BYTES_PER_SEC: u64 = 256 * 1024;

impl Http {
    pub fn new(
        endpoint: &Url,
        token: Option<Token>,
        retry: RetryPolicy,
        timeout: Duration,
    ) -> Result<Http> {
        let mut builder = Client::builder()
            .user_agent(user_agent())
            .connect_timeout(timeout)
            .timeout(None::<Duration>);
        if is_loopback(endpoint) {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| Error::input(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Http {
            client,
            origin: origin(endpoint),
            token,
            retry,
            timeout,
            traffic: Traffic::default(),
        })
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// `text` with the token removed.
    pub fn redact(&self, text: &str) -> String {
        match &self.token {
            Some(t) => t.redact(text),
            None => text.to_string(),
        }
    }

    /// Whether `url` is on the Hub's own origin (only those requests carry the token; LFS
    /// storage URLs are pre-signed and must not see it).
    pub fn is_hub(&self, url: &str) -> bool {
        Url::parse(url)
            .map(|u| origin(&u) == self.origin)
            .unwrap_or(false)
    }

    /// Send a request, repeating it on connection errors and transient statuses up to the
    /// retry policy; the final reply is returned whatever its status. With `auth` the token
    /// goes along, but only to the Hub's own origin. `what` names the step for error messages.
    pub fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        payload: &Payload,
        auth: bool,
        what: &str,
    ) -> Result<Reply> {
        let with_token = auth && self.is_hub(url);
        let mut retry = 0u32;
        loop {
            self.traffic.requests += 1;
            let sent = Arc::new(AtomicU64::new(0));
            let result = self.attempt(&method, url, headers, payload, with_token, &sent);
            self.traffic.bytes_sent += match payload {
                Payload::File { .. } => sent.load(Ordering::Relaxed),
                _ => payload.len(),
            };
            let wait = match &result {
                Ok(reply) if is_transient_status(reply.status) => {
                    let after = reply
                        .header("retry-after")
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    Some(after.unwrap_or_else(|| self.retry.delay(retry)))
                }
                Ok(_) => None,
                Err(e) if is_transient_error(e) => Some(self.retry.delay(retry)),
                Err(_) => None,
            };
            let wait = match wait {
                Some(w) if retry < self.retry.max_retries => w,
                _ => {
                    return result.map_err(|e| {
                        let attempts = retry + 1;
                        Error::input(self.redact(&format!(
                            "{what}: {method} {} failed after {attempts} attempt{}: {}",
                            strip_query(url),
                            if attempts == 1 { "" } else { "s" },
                            error_chain(&e)
                        )))
                    });
                }
            };
            if let Payload::File { bars, .. } = payload {
                let back = sent.load(Ordering::Relaxed);
                for b in bars.iter() {
                    b.set_position(b.position().saturating_sub(back));
                }
            }
            self.traffic.retries += 1;
            std::thread::sleep(wait.min(self.retry.max_delay));
            retry += 1;
        }
    }

    fn attempt(
        &self,
        method: &Method,
        url: &str,
        headers: &[(String, String)],
        payload: &Payload,
        with_token: bool,
        sent: &Arc<AtomicU64>,
    ) -> std::result::Result<Reply, AttemptError> {
        let body_time = Duration::from_secs(payload.len() / MIN_RATE_BYTES_PER_SEC);
        let mut req = self
            .client
            .request(method.clone(), url)
            .timeout(self.timeout + body_time);
        if with_token {
            if let Some(t) = &self.token {
                req = req.bearer_auth(t.secret());
            }
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req = match payload {
            Payload::Bytes { data, content_type } => req
                .header(reqwest::header::CONTENT_TYPE, *content_type)
                .body(data.to_vec()),
            Payload::File {
                path,
                offset,
                len,
                bars,
            } => {
                let mut f = std::fs::File::open(path)
                    .map_err(|e| AttemptError::Local(format!("{}: {e}", path.display())))?;
                f.seek(SeekFrom::Start(*offset))
                    .map_err(|e| AttemptError::Local(format!("{}: {e}", path.display())))?;
                let reader = CountingReader {
                    inner: f.take(*len),
                    bars: bars.to_vec(),
                    read: sent.clone(),
                };
                req.body(Body::sized(reader, *len))
            }
        };
        let resp = req.send().map_err(AttemptError::Http)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().map_err(AttemptError::Http)?.to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

pub(crate) enum AttemptError {
    Http(reqwest::Error),
    /// Reading the local file failed: not worth retrying.
    Local(String),
}

fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status)
}

fn is_transient_error(e: &AttemptError) -> bool {
    match e {
        AttemptError::Http(e) => !(e.is_builder() || e.is_redirect() || e.is_decode()),
        AttemptError::Local(_) => false,
    }
}

/// A transport error and its causes on one line, without the URL reqwest adds (the caller
/// names the URL once, without its query).
fn error_chain(e: &AttemptError) -> String {
    match e {
        AttemptError::Local(s) => s.clone(),
        AttemptError::Http(e) => {
            let mut parts = Vec::new();
            let top = e.to_string();
            let top = match e.url() {
                Some(u) => top
                    .replace(&format!(" for url ({u})"), "")
                    .replace(&format!(" ({u})"), ""),
                None => top,
            };
            parts.push(top);
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let text = s.to_string();
                if parts.last() != Some(&text) {
                    parts.push(text);
                }
                source = s.source();
            }
            if e.is_timeout() {
                parts.push("timed out".to_string());
            }
            parts.join(": ")
        }
    }
}

pub(crate) fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

fn origin(u: &Url) -> String {
    format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str().unwrap_or(""),
        u.port_or_known_default().unwrap_or(0)
    )
}

/// A Hub on this machine (a mirror, a test server) is reached directly, whatever proxy the
/// environment names.
pub(crate) fn is_loopback(u: &Url) -> bool {
    let host = u.host_str().unwrap_or("");
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn user_agent() -> String {
    format!("l3kit/{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_and_redaction() {
        let t = Token::new("  hf_secretvalue123\n").unwrap();
        assert_eq!(format!("{t:?}"), "Token([redacted])");
        assert_eq!(
            t.redact("Bearer hf_secretvalue123 rejected"),
            "Bearer [token] rejected"
        );
        assert!(Token::new("  ").is_none());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.delay(0), Duration::from_millis(100));
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(800));
        assert_eq!(p.delay(4), Duration::from_secs(1));
        assert_eq!(p.delay(60), Duration::from_secs(1));
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(s));
        }
        for s in [200, 400, 401, 403, 404, 409, 413, 422] {
            assert!(!is_transient_status(s));
        }
    }

    #[test]
    fn hub_origin_only() {
        let url = Url::parse("https://huggingface.co").unwrap();
        let h = Http::new(&url, None, RetryPolicy::default(), Duration::from_secs(5)).unwrap();
        assert!(h.is_hub("https://huggingface.co/api/repos/create"));
        assert!(h.is_hub("https://huggingface.co:443/x"));
        assert!(!h.is_hub("https://s3.amazonaws.com/bucket/obj?sig=1"));
        assert!(!h.is_hub("http://huggingface.co/api"));
        assert!(!is_loopback(&url));
        for l in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:1",
        ] {
            assert!(is_loopback(&Url::parse(l).unwrap()), "{l}");
        }
    }

    #[test]
    fn snippet_is_short_and_one_line() {
        let long = "a\n".repeat(400);
        let s = snippet(long.as_bytes());
        assert!(!s.contains('\n'));
        assert!(s.ends_with("..."));
    }
}
