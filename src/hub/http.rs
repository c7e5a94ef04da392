//! A small blocking HTTP layer for the Hub's API: bounded retries with exponential backoff on
//! connection errors, 408, 429 and 5xx; counting of requests and bytes; the token attached only
//! to requests for the Hub's own origin; every reply body read only up to a limit for its kind;
//! and everything a reply carries (its status aside) handed on as [`Remote`] text, which is
//! shown only redacted.

use super::redact::Remote;
pub use super::redact::Token;
use crate::util::error::{Error, Result};
use indicatif::ProgressBar;
use reqwest::blocking::{Body, Client};
use reqwest::{Method, Url};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The most l3kit reads of a successful JSON API reply (repository creation, paths-info,
/// preupload, the LFS batch, verify, the multipart completion, the commit). The largest real
/// answers (paths-info or preupload for 100 paths, a batch of 100 objects) are tens of KiB.
pub const MAX_JSON_REPLY_BYTES: u64 = 16 << 20;
/// The most l3kit reads of a successful storage reply (the PUT of a file or of one part):
/// only its status and headers matter, and storage services answer with an empty or tiny body.
pub const MAX_STORAGE_REPLY_BYTES: u64 = 64 << 10;
/// The most l3kit reads of an error reply (a status outside 2xx), whose start is quoted.
pub const MAX_ERROR_REPLY_BYTES: u64 = 16 << 10;
/// How many characters of a server's text an error message quotes.
pub const QUOTED_CHARS: usize = 300;

/// What a successful reply is for, which decides how much of its body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Json,
    Storage,
}

impl ReplyKind {
    fn limit(self) -> u64 {
        match self {
            ReplyKind::Json => MAX_JSON_REPLY_BYTES,
            ReplyKind::Storage => MAX_STORAGE_REPLY_BYTES,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ReplyKind::Json => "JSON API replies",
            ReplyKind::Storage => "storage replies",
        }
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
    /// `len` bytes of an open file from `offset`, reported to the progress bars as they are
    /// read. The handle is the one opened (and checked) when the files were listed, so a path
    /// swapped for a link during the upload changes nothing.
    File {
        path: PathBuf,
        file: Arc<File>,
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

/// A response: its status, and its headers and body, which are the server's text.
pub(crate) struct Reply {
    pub status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
    /// The body went past [`MAX_ERROR_REPLY_BYTES`] and was not read further (error replies
    /// only: a successful reply past its limit is an error).
    truncated: bool,
    /// `METHOD URL` (query left out) for messages; a storage URL is the server's text.
    request: Remote,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn header(&self, name: &str) -> Option<Remote> {
        self.headers
            .get(name)
            .map(|v| Remote::new(String::from_utf8_lossy(v.as_bytes()).into_owned()))
    }

    /// The body as the JSON type `T`, or an error that names the step and the request, quotes
    /// the start of the answer (redacted) and says what to do.
    pub fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            // serde's message quotes the offending value, which is the server's text too.
            let why = Remote::new(e.to_string());
            let body = Remote::from_body(&self.body);
            let quoted = if body.is_empty() {
                "an empty body".to_string()
            } else {
                body.excerpt(QUOTED_CHARS)
            };
            Error::input(format!(
                "{what}: the Hub's answer to {} is not what l3kit expects ({why}): {quoted}; \
                 check that --endpoint names a Hugging Face Hub and run again (report it if it \
                 persists)",
                self.request
            ))
        })
    }

    /// The server's own explanation: the `X-Error-Message` header, else the JSON body's
    /// `error` (or `message`) field, else the body.
    pub fn server_message(&self) -> Option<Remote> {
        if let Some(m) = self.header("x-error-message").filter(|m| !m.is_empty()) {
            return Some(m);
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.body) {
            for key in ["error", "message"] {
                if let Some(s) = v.get(key).and_then(|e| e.as_str()) {
                    return Some(Remote::new(s));
                }
            }
        }
        let body = Remote::from_body(&self.body);
        (!body.is_empty()).then_some(body)
    }

    /// `METHOD URL` of the request this answers.
    pub fn request(&self) -> &Remote {
        &self.request
    }

    /// Whether the body was cut at [`MAX_ERROR_REPLY_BYTES`].
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// Reads `len` bytes of a file from `offset` with positioned reads (the handle is shared
/// between retries, so it has no cursor of its own), counting them and moving the bars.
struct FileReader {
    path: PathBuf,
    file: Arc<File>,
    pos: u64,
    end: u64,
    bars: Vec<ProgressBar>,
    read: Arc<AtomicU64>,
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = (buf.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .file
            .read_at(&mut buf[..want], self.pos)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: became shorter while it was sent; run the upload again",
                    self.path.display()
                ),
            ));
        }
        self.pos += n as u64;
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
        let client = builder.build().map_err(|e| {
            Error::input(format!(
                "cannot set up the HTTP client: {}",
                Remote::new(e.to_string())
            ))
        })?;
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

    /// Whether `url` is on the Hub's own origin (only those requests carry the token; LFS
    /// storage URLs are pre-signed and must not see it).
    pub fn is_hub(&self, url: &str) -> bool {
        Url::parse(url)
            .map(|u| origin(&u) == self.origin)
            .unwrap_or(false)
    }

    /// Send a request, repeating it on connection errors and transient statuses up to the
    /// retry policy; the final reply is returned whatever its status. With `auth` the token
    /// goes along, but only to the Hub's own origin. `what` names the step for error messages;
    /// `kind` decides how much of a successful reply's body is read.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        payload: &Payload,
        auth: bool,
        kind: ReplyKind,
        what: &str,
    ) -> Result<Reply> {
        let with_token = auth && self.is_hub(url);
        let mut retry = 0u32;
        loop {
            self.traffic.requests += 1;
            let sent = Arc::new(AtomicU64::new(0));
            let result = self.attempt(&method, url, headers, payload, with_token, kind, &sent);
            self.traffic.bytes_sent += match payload {
                Payload::File { .. } => sent.load(Ordering::Relaxed),
                _ => payload.len(),
            };
            let wait = match &result {
                Ok(reply) if is_transient_status(reply.status) => {
                    let after = reply
                        .header("retry-after")
                        .and_then(|s| s.protocol().trim().parse::<u64>().ok())
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
                        // The URL may be a storage URL the server chose, and a transport error
                        // may quote what the server sent: all of it is the server's text.
                        let text = Remote::new(format!(
                            "{what}: {method} {} failed after {attempts} attempt{}: {}",
                            strip_query(url),
                            if attempts == 1 { "" } else { "s" },
                            error_chain(&e)
                        ));
                        Error::input(text.to_string())
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

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        method: &Method,
        url: &str,
        headers: &[(String, String)],
        payload: &Payload,
        with_token: bool,
        kind: ReplyKind,
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
                file,
                offset,
                len,
                bars,
            } => {
                let end = offset
                    .checked_add(*len)
                    .ok_or_else(|| AttemptError::Local("a part past the end of the file".into()))?;
                let reader = FileReader {
                    path: path.clone(),
                    file: file.clone(),
                    pos: *offset,
                    end,
                    bars: bars.to_vec(),
                    read: sent.clone(),
                };
                req.body(Body::sized(reader, *len))
            }
        };
        let mut resp = req.send().map_err(AttemptError::Http)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let ok = (200..300).contains(&status);
        let limit = if ok {
            kind.limit()
        } else {
            MAX_ERROR_REPLY_BYTES
        };
        // One byte past the limit tells a body at the limit from a longer one; the rest is
        // never read (the connection is dropped with the response).
        let mut body = Vec::new();
        (&mut resp)
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(AttemptError::Body)?;
        let truncated = body.len() as u64 > limit;
        if truncated {
            if ok {
                return Err(AttemptError::TooLarge { status, kind });
            }
            body.truncate(limit as usize);
        }
        Ok(Reply {
            status,
            headers,
            body,
            truncated,
            request: Remote::new(format!("{method} {}", strip_query(url))),
        })
    }
}

pub(crate) enum AttemptError {
    Http(reqwest::Error),
    /// The connection failed while the body was read.
    Body(std::io::Error),
    /// A successful reply whose body is longer than the limit for its kind: a misbehaving
    /// server, not worth asking again.
    TooLarge {
        status: u16,
        kind: ReplyKind,
    },
    /// Reading the local file failed: not worth retrying.
    Local(String),
}

fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status)
}

fn is_transient_error(e: &AttemptError) -> bool {
    match e {
        AttemptError::Http(e) => !(e.is_builder() || e.is_redirect() || e.is_decode()),
        AttemptError::Body(_) => true,
        AttemptError::TooLarge { .. } | AttemptError::Local(_) => false,
    }
}

/// A transport error and its causes on one line, without the URL reqwest adds (the caller
/// names the URL once, without its query).
fn error_chain(e: &AttemptError) -> String {
    match e {
        AttemptError::Local(s) => s.clone(),
        AttemptError::TooLarge { status, kind } => format!(
            "the answer ({status}) is longer than the {} limit for {}, so l3kit stopped \
             reading it; check that --endpoint names a Hugging Face Hub (a proxy or another \
             server may be answering)",
            super::card::human_bytes(kind.limit()),
            kind.name()
        ),
        AttemptError::Body(e) => {
            let mut parts = vec![format!("reading the answer: {e}")];
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let text = s.to_string();
                if !parts.iter().any(|p| p.contains(&text)) {
                    parts.push(text);
                }
                source = s.source();
            }
            parts.join(": ")
        }
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
}
