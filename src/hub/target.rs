//! Where an upload goes and with which token: the repository id, the revision, the endpoint, and the token's lookup order (`HF_TOKEN`, `$HF_TOKEN_PATH`, `$HF_HOME/token`).

use super::http::Token;
use super::DEFAULT_ENDPOINT;
use crate::util::error::{Error, Result};
use reqwest::Url;
use std::path::PathBuf;

/// A token and where it was found.
pub fn resolve_token_from(env: impl Fn(&str) -> Option<String>) -> Option<(Token, String)> {
    if let Some(t) = env("HF_TOKEN").and_then(Token::new) {
        return Some((t, "HF_TOKEN".to_string()));
    }
    let path = token_file_from(&env)?;
    let text = std::fs::read_to_string(&path).ok()?;
    Token::new(text).map(|t| (t, path.display().to_string()))
}

/// The token file the Hugging Face tools use: `$HF_TOKEN_PATH`, else `$HF_HOME/token`, where
/// `HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn token_file_from(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = set("HF_TOKEN_PATH") {
        return Some(PathBuf::from(p));
    }
    let home = match set("HF_HOME") {
        Some(h) => PathBuf::from(h),
        None => match set("XDG_CACHE_HOME") {
            Some(x) => PathBuf::from(x).join("huggingface"),
            None => PathBuf::from(set("HOME")?)
                .join(".cache")
                .join("huggingface"),
        },
    };
    Some(home.join("token"))
}

/// [`resolve_token_from`] on the process environment.
pub fn resolve_token() -> Option<(Token, String)> {
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
