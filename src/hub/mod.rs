//! `l3kit upload`: publish a packed model folder to the Hugging Face Hub in one commit.
//!
//! The steps (see `docs/upload.md`):
//!
//! 1. refuse a folder that `inspect --check` rejects (nothing is sent);
//! 2. list the files to send: those the index lists and the known side files
//!    ([`SIDE_FILES`]), each a regular file inside the folder (a link leading out is an error),
//!    everything else reported as skipped; without a `README.md`, generate a model card
//!    ([`card::model_card`]);
//! 3. `POST /api/repos/create` (a 409 means the repository exists, which is fine);
//! 4. `POST /api/models/{repo}/paths-info/{revision}`: what the Hub holds under those paths; a
//!    file whose SHA-256 (LFS) or git blob id (regular) already matches is not sent again, and
//!    when nothing differs there is no commit at all;
//! 5. `POST /api/models/{repo}/preupload/{revision}`: the Hub says which files it wants as
//!    large (LFS) files and which inline;
//! 6. large files: the Git LFS batch API (`{repo}.git/info/lfs/objects/batch`). When the Hub
//!    picks `basic` or `multipart`, l3kit PUTs the bytes itself (one PUT, or one per part and a
//!    completion call) and calls `verify`; when it picks `xet`, the commit is handed to the
//!    `hf-hub` crate, which speaks Xet ([`xet`]);
//! 7. `POST /api/models/{repo}/commit/{revision}`: one NDJSON commit with every changed file
//!    (small ones base64 inline, large ones as `lfsFile` pointers).
//!
//! The token comes from `HF_TOKEN`, then `$HF_TOKEN_PATH`, then `$HF_HOME/token` (by default
//! `~/.cache/huggingface/token`). It is sent only to the Hub's own origin and never printed;
//! everything the network sends back is [`Remote`] text, shown only redacted ([`redact`]).
//! Every reply body is read only up to a limit for its kind ([`MAX_JSON_REPLY_BYTES`],
//! [`MAX_STORAGE_REPLY_BYTES`], [`MAX_ERROR_REPLY_BYTES`]).
pub mod card;
pub mod http;

mod files;
mod lfs;
mod protocol;
mod redact;
mod report;
mod target;
mod xet;

pub use files::{is_side_file, SIDE_FILES};
pub use http::{
    RetryPolicy, Traffic, MAX_ERROR_REPLY_BYTES, MAX_JSON_REPLY_BYTES, MAX_STORAGE_REPLY_BYTES,
};
pub use redact::{redact, redact_error, Remote, Token, REDACTED};
pub use target::{
    check_repo_id, resolve_endpoint, resolve_token, resolve_token_from, token_file_from,
};

use crate::formats::packed::{check_packed, INDEX_FILE};
use crate::util::error::{Error, Result};
use crate::util::progress::Ui;
use files::{collect_files, LocalFile, Source};
use http::Http;
use protocol::{run, Session};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use target::check_revision;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

pub const DEFAULT_REVISION: &str = "main";

/// Files at least this large are planned as large files in a dry run (the Hub refuses regular
/// files above 10 MB).
pub const LARGE_FILE_BYTES: u64 = 10 * 1000 * 1000;

#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// The packed model folder.
    pub dir: PathBuf,
    /// `OWNER/NAME`.
    pub repo: String,
    /// Create the repository as private (an existing repository keeps its visibility).
    pub private: bool,
    /// The branch to commit to; it must exist (a new repository has `main`).
    pub revision: String,
    pub commit_message: Option<String>,
    /// Open a pull request against `revision` instead of committing to it.
    pub create_pr: bool,
    /// The Hub's base URL; `None`: `$HF_ENDPOINT`, else [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
    /// Plan only: validate, list the files and what would happen; send nothing.
    pub dry_run: bool,
    /// `None`: `HF_TOKEN`, then the Hugging Face token file.
    pub token: Option<Token>,
    /// Let the Hub choose Xet for large files (through hf-hub); `false` offers Git LFS only.
    pub xet: bool,
    pub retry: RetryPolicy,
    /// Connection and idle timeout of one request (large bodies get extra time by size).
    pub timeout: Duration,
    /// Run `verify` (the packed tables against their source, through the forward pass) before
    /// anything is sent; its `packed` is replaced by `dir`.
    pub verify: Option<crate::verify::VerifyOptions>,
}

impl UploadOptions {
    pub fn new(dir: impl Into<PathBuf>, repo: impl Into<String>) -> Self {
        UploadOptions {
            dir: dir.into(),
            repo: repo.into(),
            private: false,
            revision: DEFAULT_REVISION.to_string(),
            commit_message: None,
            create_pr: false,
            endpoint: None,
            dry_run: false,
            token: None,
            xet: true,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(60),
            verify: None,
        }
    }
}

/// What happened (or, in a dry run, would happen) to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Dry run: would be sent unless the Hub already holds it.
    Planned,
    /// The Hub already holds these bytes under this path; not sent.
    Unchanged,
    /// Sent base64-encoded inside the commit.
    Inline,
    /// Sent through Git LFS, referenced by SHA-256 in the commit.
    Lfs,
    /// Sent through Xet (hf-hub), referenced by SHA-256 in the commit.
    Xet,
    /// The Hub said it ignores this path (`shouldIgnore`).
    Ignored,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// A large (LFS/Xet) file: the Hub's answer, or in a dry run l3kit's guess (a binary
    /// extension or at least 10 MB).
    pub large: bool,
    /// The model card l3kit wrote (the folder had no README.md).
    pub generated: bool,
    pub action: Action,
}

/// What the Hub said about the commit: its text, shown (and serialised) only redacted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CommitReport {
    pub oid: Option<Remote>,
    pub url: Option<Remote>,
    pub pull_request_url: Option<Remote>,
}

/// A file of the folder that is not sent, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedFile {
    /// The path inside the folder (`/`-separated; a name that is not UTF-8 shown lossily).
    pub path: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct UploadSummary {
    pub dir: PathBuf,
    pub repo: String,
    pub endpoint: String,
    pub revision: String,
    pub url: String,
    pub dry_run: bool,
    /// The source `verify` compared the packed tables against (when asked, and it passed).
    pub verified_against: Option<String>,
    /// Where the token came from (`HF_TOKEN` or a file path), never the token.
    pub token_source: Option<String>,
    /// Whether this upload created the repository (`None` in a dry run).
    pub repo_created: Option<bool>,
    pub files: Vec<FileReport>,
    /// Entries of the folder that are not sent (not listed by the index and not a side file,
    /// hidden, links, FIFOs, ...), with the reason.
    pub skipped: Vec<SkippedFile>,
    pub total_bytes: u64,
    /// Files sent (inline, LFS or Xet).
    pub sent_files: usize,
    pub sent_bytes: u64,
    /// Every file already matched what the Hub holds: no commit was made.
    pub nothing_changed: bool,
    /// How large files travelled: `basic`, `multipart` (Git LFS) or `xet` (l3kit's own names,
    /// never the server's text).
    pub large_file_transfer: Option<String>,
    pub commit: Option<CommitReport>,
    /// l3kit's own requests (the Xet path's requests are made by hf-hub and not counted).
    pub traffic: Traffic,
    /// The generated model card, when the folder had no README.md.
    pub generated_readme: Option<String>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Upload (or with `dry_run`, plan the upload of) a packed model folder.
pub fn upload(opts: &UploadOptions, ui: &Ui) -> Result<UploadSummary> {
    let started = Instant::now();
    check_repo_id(&opts.repo)?;
    check_revision(&opts.revision)?;
    let endpoint = resolve_endpoint(opts.endpoint.as_deref())?;
    let endpoint_text = endpoint.as_str().trim_end_matches('/').to_string();
    if let Some(m) = &opts.commit_message {
        if m.trim().is_empty() {
            return Err(Error::input("--commit-message is empty"));
        }
    }
    if !opts.dir.is_dir() {
        return Err(Error::in_file(&opts.dir, "is not a folder"));
    }

    // 1. The folder must pass `inspect --check` (and `verify` when asked) before anything is
    //    sent.
    let mut summary_verified = None;
    let check = check_packed(&opts.dir, ui);
    if !check.ok() {
        let shown: Vec<&str> = check.problems.iter().take(5).map(String::as_str).collect();
        let message = format!(
            "{}: not uploaded, `inspect --check` found {} problem(s): {}{}",
            opts.dir.display(),
            check.problems.len(),
            shown.join("; "),
            if check.problems.len() > shown.len() {
                "; ..."
            } else {
                ""
            }
        );
        // A folder that cannot be read as a packed model is bad input, not a failed check.
        return Err(if check.bad_input {
            Error::Input(message)
        } else {
            Error::Check(message)
        });
    }
    if let Some(v) = &opts.verify {
        let mut v = v.clone();
        v.packed = opts.dir.clone();
        let report = crate::verify::verify(&v, ui)?;
        if !report.passed {
            let failed: Vec<String> = report
                .layers
                .iter()
                .filter(|l| !l.passed)
                .map(|l| {
                    format!(
                        "{} (relative L2 {:.3e} > {:.1e})",
                        l.name, l.relative_l2_error, l.tolerance
                    )
                })
                .collect();
            return Err(Error::Check(format!(
                "{}: not uploaded, `verify` against {} failed: {}",
                opts.dir.display(),
                v.source.display(),
                failed.join(", ")
            )));
        }
        summary_verified = Some(v.source.display().to_string());
    }
    let model = crate::formats::packed::PackedModel::open(&opts.dir)?;

    // 2. The files, and the model card when there is none.
    let (mut files, skipped) = collect_files(&opts.dir, &model.index.metadata.sha256)?;
    drop(model);
    let mut generated_readme = None;
    if !files.iter().any(|f| f.path == "README.md") {
        let text = card::model_card(&opts.dir, &opts.repo)?;
        let bytes = text.clone().into_bytes();
        files.push(LocalFile {
            path: "README.md".to_string(),
            size: bytes.len() as u64,
            sha256: {
                use sha2::{Digest, Sha256};
                hex::encode(Sha256::digest(&bytes))
            },
            source: Source::Generated(bytes),
            modified: None,
            identity: None,
            large: false,
        });
        files.sort_by(|a, b| a.path.cmp(&b.path));
        generated_readme = Some(text);
    }
    if !files.iter().any(|f| f.path == INDEX_FILE) {
        return Err(Error::in_file(&opts.dir, format!("has no {INDEX_FILE}")));
    }
    let total_bytes = files
        .iter()
        .try_fold(0u64, |a, f| a.checked_add(f.size))
        .ok_or_else(|| Error::in_file(&opts.dir, "the files' sizes add up past 2^64 bytes"))?;

    let token = match &opts.token {
        Some(t) => Some((t.clone(), "given".to_string())),
        None => resolve_token()?,
    };
    let mut summary = UploadSummary {
        dir: opts.dir.clone(),
        repo: opts.repo.clone(),
        endpoint: endpoint_text.clone(),
        revision: opts.revision.clone(),
        url: format!("{endpoint_text}/{}", opts.repo),
        dry_run: opts.dry_run,
        verified_against: summary_verified,
        token_source: token.as_ref().map(|(_, s)| s.clone()),
        repo_created: None,
        files: Vec::new(),
        skipped,
        total_bytes,
        sent_files: 0,
        sent_bytes: 0,
        nothing_changed: false,
        large_file_transfer: None,
        commit: None,
        traffic: Traffic::default(),
        generated_readme,
        warnings: Vec::new(),
        seconds: 0.0,
    };
    let report = |f: &LocalFile, action: Action| FileReport {
        path: f.path.clone(),
        bytes: f.size,
        sha256: f.sha256.clone(),
        large: f.large,
        generated: matches!(f.source, Source::Generated(_)),
        action,
    };
    if opts.dry_run {
        summary.files = files.iter().map(|f| report(f, Action::Planned)).collect();
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    let Some((token, _)) = token else {
        return Err(Error::input(no_token_message()));
    };

    let mut s = Session {
        http: Http::new(&endpoint, Some(token.clone()), opts.retry, opts.timeout)?,
        endpoint: endpoint.clone(),
        repo: &opts.repo,
        revision: &opts.revision,
    };
    let result = run(opts, &mut s, &mut files, &mut summary, ui);
    summary.traffic = s.http.traffic;
    summary.seconds = started.elapsed().as_secs_f64();
    let actions = result?;
    summary.files = files
        .iter()
        .zip(actions)
        .map(|(f, a)| report(f, a))
        .collect();
    Ok(summary)
}

fn no_token_message() -> String {
    let file = token_file_from(|k| std::env::var(k).ok())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.cache/huggingface/token".to_string());
    format!(
        "no Hugging Face token: set HF_TOKEN, or log in with `hf auth login` (which writes {file}); \
         a token with write access is needed"
    )
}

#[cfg(test)]
mod tests {
    use super::files::guess_large;
    use super::protocol::utf8_percent_encode;
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(check_repo_id("me/model").is_ok());
        assert!(check_repo_id("my-org/L3_model.v2").is_ok());
        for bad in [
            "model", "/x", "x/", "a/b/c", "a/-b", "a/b.", "a/b--c", "a/b c", "a/b..c",
        ] {
            assert!(check_repo_id(bad).is_err(), "{bad}");
        }
        assert!(check_repo_id(&format!("a/{}", "x".repeat(97))).is_err());
    }

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let f = LocalFile {
            path: "x".into(),
            source: Source::Generated(b"hello\n".to_vec()),
            size: 6,
            sha256: String::new(),
            modified: None,
            identity: None,
            large: false,
        };
        assert_eq!(
            f.git_blob_id().unwrap(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn token_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let home_token = dir.path().join("hf").join("token");
        std::fs::create_dir_all(home_token.parent().unwrap()).unwrap();
        std::fs::write(&home_token, "from-home-file\n").unwrap();
        let path_token = dir.path().join("t");
        std::fs::write(&path_token, "from-token-path").unwrap();
        let hf_home = dir.path().join("hf").display().to_string();
        let path = path_token.display().to_string();

        let env = |vars: Vec<(&'static str, String)>| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let got = |e| {
            resolve_token_from(e)
                .unwrap()
                .map(|(t, src)| (t.secret().to_string(), src))
        };
        assert_eq!(
            got(env(vec![
                ("HF_TOKEN", "from-env".into()),
                ("HF_TOKEN_PATH", path.clone()),
            ])),
            Some(("from-env".into(), "HF_TOKEN".into()))
        );
        assert_eq!(
            got(env(vec![
                ("HF_TOKEN", "".into()),
                ("HF_TOKEN_PATH", path.clone()),
                ("HF_HOME", hf_home.clone()),
            ])),
            Some(("from-token-path".into(), path.clone()))
        );
        assert_eq!(
            got(env(vec![("HF_HOME", hf_home.clone())])),
            Some(("from-home-file".into(), home_token.display().to_string()))
        );
        assert_eq!(
            token_file_from(env(vec![("HOME", "/home/u".into())])),
            Some(PathBuf::from("/home/u/.cache/huggingface/token"))
        );
        assert_eq!(
            token_file_from(env(vec![
                ("HOME", "/home/u".into()),
                ("XDG_CACHE_HOME", "/c".into())
            ])),
            Some(PathBuf::from("/c/huggingface/token"))
        );
        assert!(got(env(vec![("HOME", dir.path().display().to_string())])).is_none());
    }

    #[test]
    fn revision_encoding() {
        assert_eq!(utf8_percent_encode("main"), "main");
        assert_eq!(utf8_percent_encode("refs/pr/1"), "refs%2Fpr%2F1");
    }

    #[test]
    fn large_guess() {
        assert!(guess_large("model-00001-of-00002.safetensors", 10));
        assert!(!guess_large("config.json", 2000));
        assert!(guess_large("tokenizer.json", 20_000_000));
    }
}
