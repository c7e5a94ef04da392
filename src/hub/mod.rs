//! `l3kit upload`: publish a packed model folder to the Hugging Face Hub in one commit.
//!
//! The steps (see `docs/upload.md`):
//!
//! 1. refuse a folder that `inspect --check` rejects (nothing is sent);
//! 2. list the folder's files (hidden names skipped) and, without a `README.md`, generate a
//!    model card ([`card::model_card`]);
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
//! `~/.cache/huggingface/token`). It is sent only to the Hub's own origin, never printed, and
//! scrubbed from every error message.

pub mod card;
pub mod http;
mod xet;

use crate::pack::inspect::check_packed;
use crate::pack::INDEX_FILE;
use crate::util::error::{Error, IoContext, Result};
use crate::util::progress::Ui;
use base64::Engine as _;
use http::{Http, Payload, Reply};
pub use http::{RetryPolicy, Token, Traffic};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_REVISION: &str = "main";
/// Files at least this large are planned as large files in a dry run (the Hub refuses regular
/// files above 10 MB).
pub const LARGE_FILE_BYTES: u64 = 10 * 1000 * 1000;
/// Paths per preupload / paths-info request and objects per LFS batch request.
const CHUNK: usize = 100;
/// A file the Hub asks to receive inline is refused above this size (it would be held in
/// memory, base64-encoded, inside the commit request).
const MAX_INLINE_BYTES: u64 = 64 << 20;
const LFS_MEDIA_TYPE: &str = "application/vnd.git-lfs+json";

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

#[derive(Clone, Debug, Default, Serialize)]
pub struct CommitReport {
    pub oid: Option<String>,
    pub url: Option<String>,
    pub pull_request_url: Option<String>,
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
    pub total_bytes: u64,
    /// Files sent (inline, LFS or Xet).
    pub sent_files: usize,
    pub sent_bytes: u64,
    /// Every file already matched what the Hub holds: no commit was made.
    pub nothing_changed: bool,
    /// How large files travelled: `basic`, `multipart` (Git LFS) or `xet`.
    pub large_file_transfer: Option<String>,
    pub commit: Option<CommitReport>,
    /// l3kit's own requests (the Xet path's requests are made by hf-hub and not counted).
    pub traffic: Traffic,
    /// The generated model card, when the folder had no README.md.
    pub generated_readme: Option<String>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    File(PathBuf),
    Generated(Vec<u8>),
}

#[derive(Clone, Debug)]
pub(crate) struct LocalFile {
    pub path: String,
    pub source: Source,
    pub size: u64,
    pub sha256: String,
    pub modified: Option<SystemTime>,
    pub large: bool,
}

impl LocalFile {
    fn sample(&self) -> Result<Vec<u8>> {
        match &self.source {
            Source::Generated(b) => Ok(b[..b.len().min(512)].to_vec()),
            Source::File(p) => {
                let mut buf = Vec::with_capacity(512);
                std::fs::File::open(p)
                    .with_path(p)?
                    .take(512)
                    .read_to_end(&mut buf)
                    .with_path(p)?;
                Ok(buf)
            }
        }
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        match &self.source {
            Source::Generated(b) => Ok(b.clone()),
            Source::File(p) => std::fs::read(p).with_path(p),
        }
    }

    /// The git blob id (`sha1("blob {len}\0" + bytes)`), which the Hub reports for regular files.
    fn git_blob_id(&self) -> Result<String> {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", self.size).as_bytes());
        match &self.source {
            Source::Generated(b) => h.update(b),
            Source::File(p) => {
                let mut f = std::fs::File::open(p).with_path(p)?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).with_path(p)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

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

fn check_revision(rev: &str) -> Result<()> {
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

/// Extensions the Hub's default `.gitattributes` stores in LFS (a dry run's guess).
const LFS_EXTENSIONS: &[&str] = &[
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "ftz",
    "gguf",
    "gz",
    "h5",
    "joblib",
    "mlmodel",
    "model",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "ot",
    "parquet",
    "pb",
    "pickle",
    "pkl",
    "pt",
    "pth",
    "rar",
    "safetensors",
    "tar",
    "tflite",
    "tgz",
    "wasm",
    "xz",
    "zip",
    "zst",
];

fn guess_large(path: &str, size: u64) -> bool {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    size >= LARGE_FILE_BYTES || ext.is_some_and(|e| LFS_EXTENSIONS.contains(&e.as_str()))
}

/// Every regular file under `dir` (hidden names skipped), sorted by repository path, with the
/// SHA-256 from the index when the check just verified it, else computed here.
fn collect_files(dir: &Path, verified: &BTreeMap<String, String>) -> Result<Vec<LocalFile>> {
    let mut out = Vec::new();
    walk(dir, dir, verified, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    verified: &BTreeMap<String, String>,
    out: &mut Vec<LocalFile>,
) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_path(dir)? {
        let entry = entry.with_path(dir)?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::in_file(
                &path,
                "the file name is not UTF-8; the Hub needs UTF-8 paths",
            ));
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path).with_path(&path)?;
        if meta.is_dir() {
            walk(root, &path, verified, out)?;
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("walk stays under its root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let sha256 = match verified.get(&rel) {
            Some(s) => s.clone(),
            None => crate::util::fs::sha256_file(&path)?,
        };
        out.push(LocalFile {
            large: guess_large(&rel, meta.len()),
            path: rel,
            source: Source::File(path),
            size: meta.len(),
            sha256,
            modified: meta.modified().ok(),
        });
    }
    Ok(())
}

/// What the advice for an HTTP status on this repository is (empty when there is none).
pub(crate) fn advice(status: u16, repo: &str, revision: &str) -> String {
    match status {
        401 => "the Hub did not accept the token: set HF_TOKEN (or log in with `hf auth login`) \
                to a valid token with write access"
            .to_string(),
        403 => format!(
            "the token may not write to {repo}: use a token with write access to this \
             namespace (fine-grained tokens need the repository or organisation listed)"
        ),
        404 => format!(
            "the repository {repo} or the revision {revision:?} does not exist (or the token \
             cannot see it); a branch other than main must be created before uploading to it"
        ),
        409 => format!(
            "the Hub reports a conflict on {repo}@{revision} (the branch moved during the \
             upload, or the repository name is taken by another type); run the upload again"
        ),
        413 => "the Hub refused a request as too large: a file that should have gone as a \
                large (LFS) file was sent inline, or the commit lists too many files"
            .to_string(),
        429 => "the Hub is rate-limiting this token; wait a few minutes and run again".to_string(),
        500..=599 => "the Hub had a server error; l3kit retried with backoff, run again later \
                      (files already uploaded are not sent twice)"
            .to_string(),
        _ => String::new(),
    }
}

struct Session<'a> {
    http: Http,
    endpoint: Url,
    repo: &'a str,
    revision: &'a str,
}

impl Session<'_> {
    fn api(&self, path: &str) -> String {
        format!(
            "{}/api/{path}",
            self.endpoint.as_str().trim_end_matches('/')
        )
    }

    fn rev(&self) -> String {
        utf8_percent_encode(self.revision)
    }

    /// An error for a reply that is not 2xx: the step, the status, the server's message (token
    /// scrubbed) and what to do.
    fn fail(&self, what: &str, reply: &Reply) -> Error {
        let server = reply
            .server_message()
            .map(|m| format!(" ({})", self.http.redact(&m)))
            .unwrap_or_default();
        let mut advice = advice(reply.status, self.repo, self.revision);
        if reply.status == 404 {
            match reply.header("x-error-code") {
                Some("RevisionNotFound") => {
                    advice = format!(
                        "the revision {:?} does not exist in {}: create the branch first \
                         (or upload to main)",
                        self.revision, self.repo
                    )
                }
                Some("RepoNotFound") => {
                    advice = format!(
                        "the repository {} does not exist or the token cannot see it",
                        self.repo
                    )
                }
                _ => {}
            }
        }
        let sep = if advice.is_empty() { "" } else { ": " };
        Error::input(format!(
            "{what}: the Hub answered {} {}{server}{sep}{advice}",
            reply.status,
            status_text(reply.status)
        ))
    }

    fn post_json(&mut self, url: &str, body: &serde_json::Value, what: &str) -> Result<Reply> {
        let data = serde_json::to_vec(body).expect("JSON values serialise");
        self.http.send(
            Method::POST,
            url,
            &[],
            &Payload::Bytes {
                data: &data,
                content_type: "application/json",
            },
            true,
            what,
        )
    }
}

pub(crate) fn status_text(s: u16) -> &'static str {
    match s {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Percent-encode a revision as one path segment (`/` included, as the Hub expects).
fn utf8_percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct RemoteEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<RemoteLfs>,
}

#[derive(Deserialize)]
struct RemoteLfs {
    /// The Hub calls the SHA-256 `oid`; some clients' models call it `sha256`.
    #[serde(alias = "sha256")]
    oid: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
struct PreuploadReply {
    files: Vec<PreuploadFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreuploadFile {
    path: String,
    upload_mode: String,
    #[serde(default)]
    should_ignore: bool,
}

#[derive(Deserialize)]
struct BatchReply {
    #[serde(default)]
    transfer: Option<String>,
    #[serde(default)]
    objects: Vec<BatchObject>,
}

#[derive(Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    actions: Option<BatchActions>,
    #[serde(default)]
    error: Option<BatchError>,
}

#[derive(Deserialize)]
struct BatchActions {
    upload: Option<LfsAction>,
    verify: Option<LfsAction>,
}

#[derive(Deserialize)]
struct LfsAction {
    href: String,
    #[serde(default)]
    header: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct BatchError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitReply {
    #[serde(default)]
    commit_oid: Option<String>,
    #[serde(default)]
    commit_url: Option<String>,
    #[serde(default)]
    pull_request_url: Option<String>,
}

fn header_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn multi_progress(ui: &Ui) -> MultiProgress {
    if ui.quiet || !std::io::stderr().is_terminal() {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    }
}

fn short(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
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
        return Err(Error::Check(format!(
            "{}: not uploaded, `inspect --check` found {} problem(s): {}{}",
            opts.dir.display(),
            check.problems.len(),
            shown.join("; "),
            if check.problems.len() > shown.len() {
                "; ..."
            } else {
                ""
            }
        )));
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
    let model = crate::pack::inspect::PackedModel::open(&opts.dir)?;

    // 2. The files, and the model card when there is none.
    let mut files = collect_files(&opts.dir, &model.index.metadata.sha256)?;
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
            large: false,
        });
        files.sort_by(|a, b| a.path.cmp(&b.path));
        generated_readme = Some(text);
    }
    if !files.iter().any(|f| f.path == INDEX_FILE) {
        return Err(Error::in_file(&opts.dir, format!("has no {INDEX_FILE}")));
    }
    let total_bytes = files.iter().map(|f| f.size).sum();

    let token = match &opts.token {
        Some(t) => Some((t.clone(), "given".to_string())),
        None => resolve_token(),
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

/// Steps 3 to 7; returns each file's action, in `files` order.
fn run(
    opts: &UploadOptions,
    s: &mut Session,
    files: &mut [LocalFile],
    summary: &mut UploadSummary,
    ui: &Ui,
) -> Result<Vec<Action>> {
    // 3. The repository.
    let (owner, name) = opts.repo.split_once('/').expect("checked OWNER/NAME");
    let body = serde_json::json!({
        "name": name,
        "organization": owner,
        "private": opts.private,
        "type": "model",
    });
    let url = s.api("repos/create");
    let reply = s.post_json(&url, &body, "creating the repository")?;
    let created = match reply.status {
        200 | 201 => true,
        409 => false,
        _ => return Err(s.fail("creating the repository", &reply)),
    };
    summary.repo_created = Some(created);
    if !created && opts.private {
        summary.warnings.push(format!(
            "{} already exists: --private does not change its visibility",
            opts.repo
        ));
    }

    // 4. What the Hub already holds.
    let mut actions = vec![Action::Planned; files.len()];
    let mut remote: HashMap<String, RemoteEntry> = HashMap::new();
    let url = format!(
        "{}/paths-info/{}",
        s.api(&format!("models/{}", opts.repo)),
        s.rev()
    );
    for chunk in files.chunks(CHUNK) {
        let paths: Vec<&str> = chunk.iter().map(|f| f.path.as_str()).collect();
        let body = serde_json::json!({ "paths": paths, "expand": false });
        let reply = s.post_json(&url, &body, "reading the repository's files")?;
        if !reply.ok() {
            return Err(s.fail("reading the repository's files", &reply));
        }
        let entries: Vec<RemoteEntry> = reply.json("paths-info")?;
        for e in entries {
            if e.kind == "file" {
                remote.insert(e.path.clone(), e);
            }
        }
    }
    for (i, f) in files.iter_mut().enumerate() {
        let Some(r) = remote.get(&f.path) else {
            continue;
        };
        let same = match &r.lfs {
            Some(lfs) => {
                f.large = true;
                lfs.oid.as_deref() == Some(f.sha256.as_str()) && lfs.size.or(r.size) == Some(f.size)
            }
            None => {
                r.size.is_none_or(|n| n == f.size)
                    && r.oid.as_deref() == Some(f.git_blob_id()?.as_str())
            }
        };
        if same {
            actions[i] = Action::Unchanged;
        }
    }
    let changed: Vec<usize> = (0..files.len())
        .filter(|&i| actions[i] == Action::Planned)
        .collect();
    if changed.is_empty() {
        summary.nothing_changed = true;
        return Ok(actions);
    }

    // 5. Which files the Hub wants as large files.
    let mut query = String::new();
    if opts.create_pr {
        query.push_str("?create_pr=1");
    }
    let url = format!(
        "{}/preupload/{}{query}",
        s.api(&format!("models/{}", opts.repo)),
        s.rev()
    );
    let mut modes: HashMap<String, PreuploadFile> = HashMap::new();
    for chunk in changed.chunks(CHUNK) {
        let mut list = Vec::new();
        for &i in chunk {
            let f = &files[i];
            list.push(serde_json::json!({
                "path": f.path,
                "size": f.size,
                "sample": base64::engine::general_purpose::STANDARD.encode(f.sample()?),
            }));
        }
        let body = serde_json::json!({ "files": list });
        let reply = s.post_json(&url, &body, "asking the Hub how to send each file")?;
        if !reply.ok() {
            return Err(s.fail("asking the Hub how to send each file", &reply));
        }
        let answer: PreuploadReply = reply.json("preupload")?;
        for f in answer.files {
            modes.insert(f.path.clone(), f);
        }
    }
    let mut lfs_files = Vec::new();
    let mut inline_files = Vec::new();
    for &i in &changed {
        let f = &mut files[i];
        let Some(m) = modes.get(&f.path) else {
            return Err(Error::input(format!(
                "preupload: the Hub's answer does not mention {}",
                f.path
            )));
        };
        if m.should_ignore {
            actions[i] = Action::Ignored;
            summary
                .warnings
                .push(format!("{}: the Hub ignores this path; not sent", f.path));
            continue;
        }
        f.large = m.upload_mode == "lfs" && f.size > 0;
        if f.large {
            lfs_files.push(i);
        } else {
            if f.size > MAX_INLINE_BYTES {
                return Err(Error::input(format!(
                    "{}: the Hub asked for this {} file inline; l3kit sends at most {} inline",
                    f.path,
                    card::human_bytes(f.size),
                    card::human_bytes(MAX_INLINE_BYTES)
                )));
            }
            inline_files.push(i);
        }
    }
    let to_send: Vec<usize> = changed
        .iter()
        .copied()
        .filter(|&i| actions[i] != Action::Ignored)
        .collect();
    if to_send.is_empty() {
        summary.nothing_changed = true;
        return Ok(actions);
    }

    let multi = multi_progress(ui);
    let send_total: u64 = to_send.iter().map(|&i| files[i].size).sum();
    let overall = multi.add(ui.bytes(send_total, "upload"));
    let message = opts
        .commit_message
        .clone()
        .unwrap_or_else(|| "Upload L3 model packed by l3kit".to_string());

    // 6. Large files.
    let mut transfer = None;
    if !lfs_files.is_empty() {
        let mut by_oid: BTreeMap<&str, u64> = BTreeMap::new();
        for &i in &lfs_files {
            by_oid.insert(&files[i].sha256, files[i].size);
        }
        let objects: Vec<(String, u64)> = by_oid
            .into_iter()
            .map(|(o, n)| (o.to_string(), n))
            .collect();
        let mut transfers = vec!["basic", "multipart"];
        if opts.xet {
            transfers.push("xet");
        }
        let url = format!(
            "{}/{}.git/info/lfs/objects/batch",
            s.endpoint.as_str().trim_end_matches('/'),
            opts.repo
        );
        let mut work: Vec<(BatchObject, String)> = Vec::new();
        for chunk in objects.chunks(CHUNK) {
            let body = serde_json::json!({
                "operation": "upload",
                "transfers": transfers,
                "objects": chunk.iter().map(|(oid, size)| serde_json::json!({"oid": oid, "size": size})).collect::<Vec<_>>(),
                "hash_algo": "sha256",
                "ref": { "name": opts.revision },
            });
            let data = serde_json::to_vec(&body).expect("JSON values serialise");
            let headers = vec![("Accept".to_string(), LFS_MEDIA_TYPE.to_string())];
            let reply = s.http.send(
                Method::POST,
                &url,
                &headers,
                &Payload::Bytes {
                    data: &data,
                    content_type: LFS_MEDIA_TYPE,
                },
                true,
                "negotiating the large-file transfer",
            )?;
            if !reply.ok() {
                return Err(s.fail("negotiating the large-file transfer (LFS batch)", &reply));
            }
            let answer: BatchReply = reply.json("LFS batch")?;
            let t = answer.transfer.unwrap_or_else(|| "basic".to_string());
            if t == "xet" {
                transfer = Some(t);
                break;
            }
            if t != "basic" && t != "multipart" {
                return Err(Error::input(format!(
                    "LFS batch: the Hub chose the transfer {t:?}, which l3kit cannot speak"
                )));
            }
            transfer = Some(t.clone());
            if let Some((missing, _)) = chunk
                .iter()
                .find(|(oid, _)| !answer.objects.iter().any(|o| &o.oid == oid))
            {
                return Err(Error::input(format!(
                    "LFS batch: the Hub's answer leaves out object {missing}"
                )));
            }
            for o in answer.objects {
                let Some(size) = chunk.iter().find(|(oid, _)| *oid == o.oid).map(|(_, n)| *n)
                else {
                    return Err(Error::input(format!(
                        "LFS batch: the Hub answered for an object l3kit did not ask about ({})",
                        o.oid
                    )));
                };
                if let Some(e) = &o.error {
                    return Err(Error::input(s.http.redact(&format!(
                        "LFS batch: the Hub refused object {} ({} bytes): {} {}",
                        o.oid,
                        o.size.unwrap_or(size),
                        e.code.map(|c| c.to_string()).unwrap_or_default(),
                        e.message.as_deref().unwrap_or("")
                    ))));
                }
                work.push((o, t.clone()));
            }
        }
        summary.large_file_transfer = transfer.clone();
        if transfer.as_deref() == Some("xet") {
            check_unchanged(files, &to_send)?;
            let send: Vec<&LocalFile> = to_send.iter().map(|&i| &files[i]).collect();
            let make_ui = *ui;
            let done = xet::commit(
                &xet::XetCommit {
                    endpoint: s.endpoint.as_str().trim_end_matches('/'),
                    token: s.http.token().expect("a token is set for uploads"),
                    repo: &opts.repo,
                    revision: &opts.revision,
                    message: &message,
                    create_pr: opts.create_pr,
                    files: &send,
                    retry: opts.retry,
                    timeout: opts.timeout,
                },
                &multi,
                &overall,
                move |n, name| make_ui.bytes(n, name),
            )?;
            overall.finish_and_clear();
            for (&i, a) in to_send.iter().zip(done.actions) {
                actions[i] = a;
            }
            summary.sent_files = to_send.len();
            summary.sent_bytes = send_total;
            summary.commit = Some(CommitReport {
                oid: done.commit_oid,
                url: done.commit_url,
                pull_request_url: done.pull_request_url,
            });
            return Ok(actions);
        }
        for (object, _) in &work {
            let idx: Vec<usize> = lfs_files
                .iter()
                .copied()
                .filter(|&i| files[i].sha256 == object.oid)
                .collect();
            let f = &files[idx[0]];
            let Some(acts) = &object.actions else {
                // The Hub already has these bytes (under another path or an earlier commit).
                overall.inc(f.size * idx.len() as u64);
                continue;
            };
            if let Some(up) = &acts.upload {
                let bar = multi.add(ui.bytes(f.size, short(&f.path)));
                let bars = [bar.clone(), overall.clone()];
                if up.header.contains_key("chunk_size") {
                    summary.large_file_transfer = Some("multipart".to_string());
                    upload_multipart(s, f, up, &bars)?;
                } else {
                    upload_basic(s, f, up, &bars)?;
                }
                bar.finish_and_clear();
                overall.inc(f.size * (idx.len() as u64 - 1));
            } else {
                overall.inc(f.size * idx.len() as u64);
            }
            if let Some(v) = &acts.verify {
                verify_object(s, f, v)?;
            }
        }
    }

    // 7. The commit.
    check_unchanged(files, &to_send)?;
    let mut body = Vec::new();
    let header = serde_json::json!({
        "key": "header",
        "value": { "summary": message, "description": "" },
    });
    body.extend(serde_json::to_vec(&header).expect("serialises"));
    body.push(b'\n');
    for &i in &to_send {
        let f = &files[i];
        let line = if f.large {
            actions[i] = Action::Lfs;
            serde_json::json!({
                "key": "lfsFile",
                "value": { "path": f.path, "algo": "sha256", "oid": f.sha256, "size": f.size },
            })
        } else {
            actions[i] = Action::Inline;
            serde_json::json!({
                "key": "file",
                "value": {
                    "content": base64::engine::general_purpose::STANDARD.encode(f.bytes()?),
                    "path": f.path,
                    "encoding": "base64",
                },
            })
        };
        body.extend(serde_json::to_vec(&line).expect("serialises"));
        body.push(b'\n');
    }
    let url = format!(
        "{}/commit/{}{query}",
        s.api(&format!("models/{}", opts.repo)),
        s.rev()
    );
    let reply = s.http.send(
        Method::POST,
        &url,
        &[],
        &Payload::Bytes {
            data: &body,
            content_type: "application/x-ndjson",
        },
        true,
        "committing",
    )?;
    if !reply.ok() {
        return Err(s.fail("committing", &reply));
    }
    let inline: u64 = inline_files
        .iter()
        .filter(|&&i| actions[i] == Action::Inline)
        .map(|&i| files[i].size)
        .sum();
    overall.inc(inline);
    overall.finish_and_clear();
    let answer: CommitReply = reply.json("commit")?;
    summary.sent_files = to_send.len();
    summary.sent_bytes = send_total;
    summary.commit = Some(CommitReport {
        oid: answer.commit_oid,
        url: answer.commit_url,
        pull_request_url: answer.pull_request_url,
    });
    Ok(actions)
}

fn lfs_headers(action: &LfsAction) -> Vec<(String, String)> {
    action
        .header
        .iter()
        .filter(|(k, _)| k.as_str() != "chunk_size" && !k.chars().all(|c| c.is_ascii_digit()))
        .map(|(k, v)| (k.clone(), header_text(v)))
        .collect()
}

fn upload_basic(
    s: &mut Session,
    f: &LocalFile,
    up: &LfsAction,
    bars: &[ProgressBar],
) -> Result<()> {
    let what = format!("uploading {}", f.path);
    let headers = lfs_headers(up);
    let reply = match &f.source {
        Source::File(p) => s.http.send(
            Method::PUT,
            &up.href,
            &headers,
            &Payload::File {
                path: p.clone(),
                offset: 0,
                len: f.size,
                bars,
            },
            false,
            &what,
        )?,
        Source::Generated(b) => s.http.send(
            Method::PUT,
            &up.href,
            &headers,
            &Payload::Bytes {
                data: b,
                content_type: "application/octet-stream",
            },
            false,
            &what,
        )?,
    };
    if !reply.ok() {
        return Err(s.fail(&what, &reply));
    }
    Ok(())
}

fn upload_multipart(
    s: &mut Session,
    f: &LocalFile,
    up: &LfsAction,
    bars: &[ProgressBar],
) -> Result<()> {
    let what = format!("uploading {}", f.path);
    let chunk: u64 = header_text(&up.header["chunk_size"])
        .parse()
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| {
            Error::input(format!(
                "{what}: the Hub's multipart chunk_size {:?} is not a positive number",
                header_text(&up.header["chunk_size"])
            ))
        })?;
    let mut parts: Vec<(u64, String)> = up
        .header
        .iter()
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()))
        .filter_map(|(k, v)| Some((k.parse::<u64>().ok()?, header_text(v))))
        .collect();
    parts.sort();
    let want = f.size.div_ceil(chunk);
    if parts.len() as u64 != want
        || parts
            .iter()
            .enumerate()
            .any(|(i, (n, _))| *n != i as u64 + 1)
    {
        return Err(Error::input(format!(
            "{what}: the Hub offered {} part URLs for {} bytes in chunks of {chunk}; expected {want}",
            parts.len(),
            f.size
        )));
    }
    let Source::File(path) = &f.source else {
        return Err(Error::input(format!(
            "{what}: a generated file cannot go as a multipart upload"
        )));
    };
    let mut etags = Vec::new();
    for (n, part_url) in &parts {
        let offset = (n - 1) * chunk;
        let len = chunk.min(f.size - offset);
        let reply = s.http.send(
            Method::PUT,
            part_url,
            &[],
            &Payload::File {
                path: path.clone(),
                offset,
                len,
                bars,
            },
            false,
            &format!("{what} (part {n} of {want})"),
        )?;
        if !reply.ok() {
            return Err(s.fail(&format!("{what} (part {n} of {want})"), &reply));
        }
        let etag = reply.header("etag").unwrap_or("").to_string();
        if etag.is_empty() {
            return Err(Error::input(format!(
                "{what}: part {n} was stored but the server returned no ETag"
            )));
        }
        etags.push(serde_json::json!({ "partNumber": n, "etag": etag }));
    }
    let body = serde_json::json!({ "oid": f.sha256, "parts": etags });
    let data = serde_json::to_vec(&body).expect("serialises");
    let reply = s.http.send(
        Method::POST,
        &up.href,
        &[("Accept".to_string(), LFS_MEDIA_TYPE.to_string())],
        &Payload::Bytes {
            data: &data,
            content_type: LFS_MEDIA_TYPE,
        },
        false,
        &format!("{what} (completing the multipart upload)"),
    )?;
    if !reply.ok() {
        return Err(s.fail(&format!("{what} (completing the multipart upload)"), &reply));
    }
    Ok(())
}

fn verify_object(s: &mut Session, f: &LocalFile, v: &LfsAction) -> Result<()> {
    let what = format!("verifying {}", f.path);
    let mut headers = lfs_headers(v);
    headers.push(("Accept".to_string(), LFS_MEDIA_TYPE.to_string()));
    let body = serde_json::json!({ "oid": f.sha256, "size": f.size });
    let data = serde_json::to_vec(&body).expect("serialises");
    let reply = s.http.send(
        Method::POST,
        &v.href,
        &headers,
        &Payload::Bytes {
            data: &data,
            content_type: LFS_MEDIA_TYPE,
        },
        true,
        &what,
    )?;
    if !reply.ok() {
        return Err(s.fail(&what, &reply));
    }
    Ok(())
}

/// Refuse to commit when a file changed on disk since it was hashed (its size or modification
/// time moved): the commit would name bytes that were not sent.
fn check_unchanged(files: &[LocalFile], which: &[usize]) -> Result<()> {
    for &i in which {
        let f = &files[i];
        if let Source::File(p) = &f.source {
            let m = std::fs::metadata(p).with_path(p)?;
            if m.len() != f.size || m.modified().ok() != f.modified {
                return Err(Error::in_file(
                    p,
                    "changed during the upload; nothing was committed, run the upload again",
                ));
            }
        }
    }
    Ok(())
}

impl UploadSummary {
    /// The human report.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let head = if self.dry_run {
            "upload plan (dry run, nothing sent)"
        } else {
            "upload"
        };
        let _ = writeln!(
            s,
            "{head}: {} -> {} (revision {})",
            self.dir.display(),
            self.url,
            self.revision
        );
        let width = self
            .files
            .iter()
            .map(|f| f.path.len())
            .max()
            .unwrap_or(4)
            .max(4);
        for f in &self.files {
            let how = match (self.dry_run, f.action) {
                (true, _) if f.large => "large file (LFS/Xet)",
                (true, _) => "inline",
                (_, Action::Planned) => "planned",
                (_, Action::Unchanged) => "unchanged",
                (_, Action::Inline) => "sent inline",
                (_, Action::Lfs) => "sent via Git LFS",
                (_, Action::Xet) => "sent via Xet",
                (_, Action::Ignored) => "ignored by the Hub",
            };
            let _ = writeln!(
                s,
                "  {:<width$}  {:>11}  {how}{}",
                f.path,
                card::human_bytes(f.bytes),
                if f.generated {
                    " (generated model card)"
                } else {
                    ""
                }
            );
        }
        let large = self.files.iter().filter(|f| f.large).count();
        let _ = writeln!(
            s,
            "  {} files, {}, {large} as large files",
            self.files.len(),
            card::human_bytes(self.total_bytes)
        );
        if let Some(v) = &self.verified_against {
            let _ = writeln!(s, "  verified against {v}: passed");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        if self.dry_run {
            let _ = writeln!(
                s,
                "token: {}",
                match &self.token_source {
                    Some(src) => format!("found ({src})"),
                    None => no_token_message().replace("no Hugging Face token: ", "none found: "),
                }
            );
            let _ = writeln!(
                s,
                "dry run: validated and planned; files the Hub already holds will not be sent"
            );
            return s;
        }
        if self.repo_created == Some(true) {
            let _ = writeln!(s, "created the repository {}", self.url);
        }
        if self.nothing_changed {
            let _ = writeln!(
                s,
                "nothing changed: the Hub already holds all {} files with the same content; no commit made",
                self.files.len()
            );
        } else {
            let _ = writeln!(
                s,
                "sent {} of {} files ({}) in one commit{}",
                self.sent_files,
                self.files.len(),
                card::human_bytes(self.sent_bytes),
                self.large_file_transfer
                    .as_deref()
                    .map(|t| format!(", large files via {t}"))
                    .unwrap_or_default()
            );
            if let Some(c) = &self.commit {
                if let Some(u) = &c.pull_request_url {
                    let _ = writeln!(s, "pull request: {u}");
                }
                if let Some(u) = &c.url {
                    let _ = writeln!(s, "commit: {u}");
                }
            }
        }
        let _ = writeln!(
            s,
            "{} requests, {} sent{}, {:.2} s",
            self.traffic.requests,
            card::human_bytes(self.traffic.bytes_sent),
            if self.traffic.retries > 0 {
                format!(", {} retried", self.traffic.retries)
            } else {
                String::new()
            },
            self.seconds
        );
        s
    }
}

#[cfg(test)]
mod tests {
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
        let got = |e| resolve_token_from(e).map(|(t, src)| (t.secret().to_string(), src));
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
