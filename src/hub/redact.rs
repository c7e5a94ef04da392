//! The one redaction point for the Hub token, and [`Remote`], the type of every piece of text
//! that came from the network.
//!
//! A server (or a proxy in front of it) may echo the credentials it received into anything it
//! answers: an error body, a header, a field of a JSON reply, a URL it hands back. Redacting at
//! each place that prints such text is one forgotten call away from a leak, so the text itself
//! carries the obligation: every string l3kit reads from a reply is a [`Remote`], whose only
//! ways out to a person (`Display`, `Debug`, `Serialize`) redact it, and whose raw form is
//! reachable only through [`Remote::protocol`], for the protocol's own use (a URL to call, an
//! id to compare, a header to send on).
//!
//! Which secrets to redact is process-wide: every [`Token`] registers itself when it is made,
//! so a `Remote` needs no handle to the session that read it, and text redacted anywhere
//! (an error built three calls away, the summary serialised by the CLI) loses every token this
//! process has seen. An echo is recognised as is, percent-encoded (upper or lower case hex, all
//! bytes or only reserved ones), in hex, and in base64 (standard and URL-safe alphabets, at any
//! alignment, so `base64("Bearer " + token)` or a Basic credential is caught too).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, OnceLock};

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[token]";

/// At most this many characters of one piece of remote text are shown (a server may send
/// megabytes in a field; a message needs a line).
pub const MAX_SHOWN_CHARS: usize = 4000;

/// Derived forms (encodings) shorter than this are not redacted: they would match ordinary
/// text. The token itself is always redacted, whatever its length.
const MIN_DERIVED_LEN: usize = 8;

/// A Hub access token. Its `Debug` form never shows the secret, so it cannot leak through a
/// stray `{:?}`; the value is only read where a request header is built. Making one registers
/// it with the redaction point.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token from its text (surrounding whitespace removed). `None` when empty.
    pub fn new(secret: impl Into<String>) -> Option<Token> {
        let s = secret.into().trim().to_string();
        if s.is_empty() {
            return None;
        }
        register(&s);
        Some(Token(s))
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }

    /// `text` with this token, in every encoding the redaction point knows, replaced by
    /// `[token]`.
    pub fn redact(&self, text: &str) -> String {
        apply(&patterns(&self.0), text)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// Each registered secret with its patterns, longest first.
type Registry = Mutex<Vec<(String, Vec<String>)>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

fn register(secret: &str) {
    // A poisoned lock only means another thread panicked while holding it; the list itself is
    // always consistent (entries are pushed whole).
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    if !r.iter().any(|(s, _)| s == secret) {
        r.push((secret.to_string(), patterns(secret)));
    }
}

/// `text` with every token this process has seen replaced by `[token]`, in every encoding.
/// This is the one function that redacts; [`Remote`] and the CLI's last pass both call it.
pub fn redact(text: &str) -> String {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for (_, p) in r.iter() {
        out = apply(p, &out);
    }
    out
}

fn apply(patterns: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for p in patterns {
        if out.contains(p.as_str()) {
            out = out.replace(p.as_str(), REDACTED);
        }
    }
    out
}

/// The forms in which an echoing server may return `secret`, longest first.
fn patterns(secret: &str) -> Vec<String> {
    let mut derived = Vec::new();
    let bytes = secret.as_bytes();
    for upper in [true, false] {
        let hex_byte = |b: u8| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        };
        // Percent-encoding of the reserved bytes only (what URL builders do) and of every byte.
        let mut some = String::new();
        let mut all = String::new();
        for &b in bytes {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                some.push(b as char);
            } else {
                some.push('%');
                some.push_str(&hex_byte(b));
            }
            all.push('%');
            all.push_str(&hex_byte(b));
        }
        derived.push(some);
        derived.push(all);
        derived.push(bytes.iter().map(|&b| hex_byte(b)).collect());
    }
    // Form encoding writes a space as '+'.
    derived.push(derived[0].replace("%20", "+"));
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ] {
        derived.push(engine.encode(bytes));
        derived.extend(base64_cores(&engine, bytes));
    }
    let mut out = vec![secret.to_string()];
    out.extend(
        derived
            .into_iter()
            .filter(|d| d.len() >= MIN_DERIVED_LEN && d != secret),
    );
    out.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    out.dedup();
    out
}

/// For each of the three alignments the secret can have inside a longer base64-encoded text,
/// the characters that depend on the secret's bytes alone: any base64 encoding of a text that
/// contains the secret contains one of them.
fn base64_cores(engine: &base64::engine::GeneralPurpose, secret: &[u8]) -> Vec<String> {
    let mut cores = Vec::new();
    for lead in 0..3usize {
        let mut data = vec![0u8; lead];
        data.extend_from_slice(secret);
        let enc = engine.encode(&data);
        let enc = enc.trim_end_matches('=');
        // Characters mixing the leading filler bytes with the secret's first byte(s).
        let skip = [0, 2, 3][lead];
        // The last character of a partial group mixes in the following (unknown) bytes.
        let drop_tail = usize::from(data.len() % 3 != 0);
        if enc.len() > skip + drop_tail {
            cores.push(enc[skip..enc.len() - drop_tail].to_string());
        }
    }
    cores
}

/// `text` redacted, on one line (control characters, including newlines and terminal escape
/// sequences, and bidirectional-override characters become spaces; runs of spaces collapse),
/// cut to `max` characters. Redaction comes first, so a cut never leaves part of a token.
fn shown(text: &str, max: usize) -> String {
    let red = redact(text);
    let mut out = String::with_capacity(red.len().min(max + 3));
    let mut count = 0usize;
    let mut space = false;
    for c in red.chars() {
        let blank = c.is_control()
            || c.is_whitespace()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if blank {
            space = !out.is_empty();
            continue;
        }
        if count >= max {
            out.push_str("...");
            return out;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
            if count >= max {
                out.push_str("...");
                return out;
            }
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Text that came from the network (a reply body, a header, a field of a JSON reply, a
/// transport error that may quote them). Shown only redacted, on one line and cut to
/// [`MAX_SHOWN_CHARS`]; see the module's documentation.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(transparent)]
pub struct Remote(String);

impl Remote {
    pub(crate) fn new(s: impl Into<String>) -> Remote {
        Remote(s.into())
    }

    /// A reply body as text. JSON is re-serialised compactly first, so an escaped echo
    /// (`"\u0068f_..."`) is decoded and recognised like any other.
    pub(crate) fn from_body(body: &[u8]) -> Remote {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => Remote(v.to_string()),
            Err(_) => Remote(String::from_utf8_lossy(body).into_owned()),
        }
    }

    /// The text exactly as the server sent it, for the protocol only: a URL to call, an id or
    /// mode to compare, a header to send back. Never for a message or a report.
    pub(crate) fn protocol(&self) -> &str {
        &self.0
    }

    /// At most `max` characters of the redacted text, on one line.
    pub fn excerpt(&self, max: usize) -> String {
        shown(&self.0, max)
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.excerpt(MAX_SHOWN_CHARS))
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({:?})", self.excerpt(MAX_SHOWN_CHARS))
    }
}

impl Serialize for Remote {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.excerpt(MAX_SHOWN_CHARS))
    }
}

/// An error whose message is redacted (the exit code is kept): the last pass the CLI makes
/// over an upload's error, behind the [`Remote`] type.
pub fn redact_error(e: crate::util::error::Error) -> crate::util::error::Error {
    use crate::util::error::Error;
    match e {
        Error::Input(m) => Error::Input(redact(&m)),
        Error::Check(m) => Error::Check(redact(&m)),
        Error::Other(m) => Error::Other(redact(&m)),
        Error::Io { path, source } => {
            let text = format!("{}: {source}", path.display());
            if redact(&text) == text {
                Error::Io { path, source }
            } else {
                Error::Input(redact(&text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "hf_unitTESTsecret+/=9876543210";

    #[test]
    fn token_debug_and_plain_redaction() {
        let t = Token::new("  hf_secretvalue123\n").unwrap();
        assert_eq!(format!("{t:?}"), "Token([redacted])");
        assert_eq!(
            t.redact("Bearer hf_secretvalue123 rejected"),
            "Bearer [token] rejected"
        );
        assert!(Token::new("  ").is_none());
    }

    #[test]
    fn every_encoding_is_redacted() {
        let _t = Token::new(T).unwrap();
        let b64 = |e: &base64::engine::GeneralPurpose, s: &str| e.encode(s.as_bytes());
        let std = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let pct = |upper: bool| -> String {
            T.bytes()
                .map(|b| match (b.is_ascii_alphanumeric() || b == b'_', upper) {
                    (true, _) => (b as char).to_string(),
                    (false, true) => format!("%{b:02X}"),
                    (false, false) => format!("%{b:02x}"),
                })
                .collect()
        };
        let hex: String = T.bytes().map(|b| format!("{b:02X}")).collect();
        let cases = vec![
            format!("Authorization: Bearer {T}"),
            format!("echo {} end", pct(false)),
            format!("echo {} end", pct(true)),
            format!("hex {hex}"),
            b64(&std, T),
            b64(&std, &format!("Bearer {T}")),
            b64(&std, &format!("xBearer {T}!")),
            b64(&std, &format!("xyBearer {T}!?")),
            b64(&url, &format!("user:{T}")),
            b64(&url, &format!("{{\"authorization\":\"Bearer {T}\"}}")),
        ];
        for c in cases {
            let r = redact(&c);
            assert!(r.contains(REDACTED), "not redacted: {c} -> {r}");
            // What is left is at most the few characters that mix the token with its
            // neighbours: no run of six characters of any encoding of the token survives.
            for form in patterns(T) {
                for w in form.as_bytes().windows(12) {
                    let w = std::str::from_utf8(w).unwrap();
                    assert!(!r.contains(w), "{c} -> {r} still holds {w}");
                }
            }
        }
    }

    #[test]
    fn remote_text_is_shown_redacted_on_one_line_and_short() {
        let _t = Token::new(T).unwrap();
        let r = Remote::new(format!("line one {T}\n\x1b[31mred\x1b[0m\u{202E}txt"));
        let shown = r.to_string();
        assert_eq!(shown, "line one [token] [31mred [0m txt");
        assert!(!format!("{r:?}").contains(T));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            "\"line one [token] [31mred [0m txt\""
        );
        assert_eq!(
            r.protocol(),
            format!("line one {T}\n\x1b[31mred\x1b[0m\u{202E}txt")
        );
        // The cut comes after redaction: a token across it is not half shown.
        let long = Remote::new(format!("{}{T}", "a".repeat(10)));
        assert_eq!(long.excerpt(12), "aaaaaaaaaa[t...");
        let huge = Remote::new("x".repeat(100_000));
        assert!(huge.to_string().len() <= MAX_SHOWN_CHARS + 3);
        // An escaped echo inside JSON is decoded before redaction.
        let escaped: String = T.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
        let body = format!("{{\"error\":\"{escaped}\"}}");
        let r = Remote::from_body(body.as_bytes()).to_string();
        assert!(r.contains(REDACTED) && !r.contains("\\u0068"), "{r}");
    }

    #[test]
    fn short_tokens_do_not_blank_ordinary_text() {
        // Not registered: a two-letter token would blank every "ab" in this test process.
        assert_eq!(apply(&patterns("ab"), "a b ab"), "a b [token]");
        assert!(patterns("ab")
            .iter()
            .all(|p| p == "ab" || p.len() >= MIN_DERIVED_LEN));
    }
}
