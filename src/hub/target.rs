//! Where an upload goes and with which token: the repository id, the revision, the endpoint, and the token's lookup order (`HF_TOKEN`, `$HF_TOKEN_PATH`, `$HF_HOME/token`).

use super::http::Token;
use super::DEFAULT_ENDPOINT;
use crate::util::error::{Error, Result};
use crate::util::fs::{limits, read_small_text};
use reqwest::Url;
use std::path::PathBuf;

/// A token and where it was found, or `None` when there is none (`HF_TOKEN` unset or empty,
/// no token file). A token file that exists but cannot be used (a FIFO, a device, a folder,
/// larger than [`limits::TOKEN`], not UTF-8, unreadable) is an error naming it: it is never
/// waited on or read past the limit, and silently ignoring it would hide a misconfiguration.
pub fn resolve_token_from(env: impl Fn(&str) -> Option<String>) -> Result<Option<(Token, String)>> {
    if let Some(text) = env("HF_TOKEN") {
        if let Some(t) = parse_token(&text, "the HF_TOKEN environment variable")? {
            return Ok(Some((t, "HF_TOKEN".to_string())));
        }
    }
    let Some((path, origin)) = token_file_and_origin(&env) else {
        return Ok(None);
    };
    // A missing file (or a link to nothing) means "not logged in", as for the Hugging Face
    // tools; anything else that is there must be a usable token file.
    if let Err(e) = std::fs::metadata(&path) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(None);
        }
    }
    let text = read_small_text(&path, limits::TOKEN, "a Hugging Face token file").map_err(|e| {
        Error::input(format!(
            "{e}; it is where l3kit looks for the Hugging Face token ({origin}): point \
             HF_TOKEN_PATH at the token file written by `hf auth login`, or set HF_TOKEN"
        ))
    })?;
    let shown = path.display().to_string();
    Ok(parse_token(&text, &shown)?.map(|t| (t, shown)))
}

/// A token from its text: surrounding whitespace is removed, and what is left must be one word
/// of visible ASCII (what an `Authorization` header can carry). The token is never quoted.
fn parse_token(text: &str, origin: &str) -> Result<Option<Token>> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::input(format!(
            "{origin}: the token holds spaces, line breaks, control or non-ASCII characters; a \
             Hugging Face token is one word (hf_...): put only the token there"
        )));
    }
    Ok(Token::new(t))
}

/// The token file the Hugging Face tools use: `$HF_TOKEN_PATH`, else `$HF_HOME/token`, where
/// `HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn token_file_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    token_file_and_origin(&env).map(|(p, _)| p)
}

/// The token file and which variable chose it.
fn token_file_and_origin(env: &impl Fn(&str) -> Option<String>) -> Option<(PathBuf, &'static str)> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = set("HF_TOKEN_PATH") {
        return Some((PathBuf::from(p), "HF_TOKEN_PATH"));
    }
    let home = match set("HF_HOME") {
        Some(h) => (PathBuf::from(h), "$HF_HOME/token"),
        None => match set("XDG_CACHE_HOME") {
            Some(x) => (
                PathBuf::from(x).join("huggingface"),
                "$XDG_CACHE_HOME/huggingface/token",
            ),
            None => (
                PathBuf::from(set("HOME")?)
                    .join(".cache")
                    .join("huggingface"),
                "~/.cache/huggingface/token",
            ),
        },
    };
    Some((home.0.join("token"), home.1))
}

/// [`resolve_token_from`] on the process environment.
pub fn resolve_token() -> Result<Option<(Token, String)>> {
    resolve_token_from(|k| std::env::var(k).ok())
}

/// Check an `OWNER/NAME` repository id the way the Hub does (letters, digits, `-`, `_`, `.`;
/// no leading or trailing `-`/`.`, no `--` or `..`; a name of at most 96 characters).
pub fn check_repo_id(repo: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::input(format!(
            "--repo {repo:?}: {why} (expected OWNER/NAME, e.g. my-org/my-l3-model)"
        )))
    };
    let Some((owner, name)) = repo.split_once('/') else {
        return bad("no '/' between owner and name");
    };
    for (part, what) in [(owner, "owner"), (name, "name")] {
        if part.is_empty() {
            return bad(&format!("the {what} is empty"));
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(&format!(
                "the {what} may hold only letters, digits, '-', '_' and '.'"
            ));
        }
        if part.starts_with(['-', '.'])
            || part.ends_with(['-', '.'])
            || part.contains("--")
            || part.contains("..")
        {
            return bad(&format!(
                "the {what} may not start or end with '-' or '.', nor contain '--' or '..'"
            ));
        }
    }
    if name.len() > 96 {
        return bad("the name is longer than 96 characters");
    }
    Ok(())
}

pub(crate) fn check_revision(rev: &str) -> Result<()> {
    if rev.is_empty()
        || rev.len() > 255
        || rev.chars().any(|c| c.is_control() || c.is_whitespace())
        || rev.contains("..")
    {
        return Err(Error::input(format!(
            "--revision {rev:?} is not a usable branch name"
        )));
    }
    Ok(())
}

/// The endpoint as a URL without a trailing slash.
pub fn resolve_endpoint(explicit: Option<&str>) -> Result<Url> {
    let from_env = std::env::var("HF_ENDPOINT").ok().filter(|s| !s.is_empty());
    let (text, origin) = match (explicit, &from_env) {
        (Some(e), _) => (e.to_string(), "--endpoint"),
        (None, Some(e)) => (e.clone(), "HF_ENDPOINT"),
        (None, None) => (DEFAULT_ENDPOINT.to_string(), "default"),
    };
    let url = Url::parse(text.trim_end_matches('/'))
        .map_err(|e| Error::input(format!("{origin} {text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::input(format!(
            "{origin} {text:?}: expected an http(s) URL such as {DEFAULT_ENDPOINT}"
        )));
    }
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(Error::input(format!(
            "{origin}: the endpoint may not carry a query or credentials"
        )));
    }
    Ok(url)
}
