//! The Xet path: when the Hub answers the LFS batch negotiation with `xet`, the commit is handed
//! to the `hf-hub` crate (blocking client), which fetches a Xet write token, uploads the large
//! files' chunks to the Xet storage service through `hf-xet` and makes the commit. l3kit keeps
//! the choice of files (only those that differ from the Hub), the endpoint, the token, the
//! retry budget, the progress bars and the error messages (token scrubbed).

use super::http::{RetryPolicy, Token};
use super::redact::Remote;
use super::{Action, LocalFile, Source};
use crate::util::error::{Error, Result};
use hf_hub::progress::{ProgressEvent, ProgressHandler, UploadEvent};
use hf_hub::repository::CommitOperation;
use hf_hub::{HFClientBuilder, HFError};
use indicatif::{MultiProgress, ProgressBar};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub(crate) struct XetCommit<'a> {
    pub endpoint: &'a str,
    pub token: &'a Token,
    pub repo: &'a str,
    pub revision: &'a str,
    pub message: &'a str,
    pub create_pr: bool,
    pub files: &'a [&'a LocalFile],
    pub retry: RetryPolicy,
    pub timeout: Duration,
}

pub(crate) struct XetResult {
    pub commit_oid: Option<Remote>,
    pub commit_url: Option<Remote>,
    pub pull_request_url: Option<Remote>,
    /// For each file: uploaded through Xet (large) or inline.
    pub actions: Vec<Action>,
}

/// Makes a byte bar for a file: (total bytes, name).
type MakeBar = Box<dyn Fn(u64, &str) -> ProgressBar + Send + Sync>;

/// Maps hf-hub's upload events onto l3kit's bars: the overall bar follows `bytes_completed`,
/// and each file in flight gets its own bar until it completes.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    make: MakeBar,
    files: Mutex<HashMap<String, ProgressBar>>,
}

impl ProgressHandler for Bars {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Upload(UploadEvent::Progress {
            bytes_completed,
            files,
            ..
        }) = event
        else {
            return;
        };
        self.overall.set_position(*bytes_completed);
        let Ok(mut bars) = self.files.lock() else {
            return;
        };
        for f in files {
            let bar = bars.entry(f.filename.clone()).or_insert_with(|| {
                self.multi
                    .add((self.make)(f.total_bytes, short_name(&f.filename)))
            });
            bar.set_position(f.bytes_completed);
            if f.status == hf_hub::progress::FileStatus::Complete {
                bar.finish_and_clear();
            }
        }
    }
}

fn short_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

pub(crate) fn commit(
    x: &XetCommit,
    multi: &MultiProgress,
    overall: &ProgressBar,
    make_bar: impl Fn(u64, &str) -> ProgressBar + Send + Sync + 'static,
) -> Result<XetResult> {
    let mut builder = reqwest::Client::builder()
        .user_agent(super::http::user_agent())
        .connect_timeout(x.timeout)
        .read_timeout(x.timeout);
    if reqwest::Url::parse(x.endpoint).is_ok_and(|u| super::http::is_loopback(&u)) {
        builder = builder.no_proxy();
    }
    let http = builder.build().map_err(|e| {
        Error::input(format!(
            "cannot set up the HTTP client: {}",
            Remote::new(e.to_string())
        ))
    })?;
    let client = HFClientBuilder::new()
        .endpoint(x.endpoint)
        .token(x.token.secret())
        .client(http)
        .cache_enabled(false)
        .retry_max_attempts(x.retry.max_retries as usize)
        .retry_base_delay(x.retry.base_delay)
        .build_sync()
        .map_err(|e| {
            Error::input(format!(
                "cannot set up the hf-hub client: {}",
                Remote::new(e.to_string())
            ))
        })?;
    let (owner, name) = x.repo.split_once('/').unwrap_or(("", x.repo));
    let repo = client.model(owner, name);
    let ops: Vec<CommitOperation> = x
        .files
        .iter()
        .map(|f| match &f.source {
            // hf-hub opens the file by its path: the check that it is a regular file inside the
            // folder was made when it was listed, and its size and modification time were
            // checked again just before this hand-over.
            Source::File { path, .. } => CommitOperation::add_file(f.path.clone(), path.clone()),
            Source::Generated(bytes) => CommitOperation::add_bytes(f.path.clone(), bytes.clone()),
        })
        .collect();
    let bars = Bars {
        multi: multi.clone(),
        overall: overall.clone(),
        make: Box::new(make_bar),
        files: Mutex::new(HashMap::new()),
    };
    let info = repo
        .create_commit()
        .operations(ops)
        .commit_message(x.message.to_string())
        .revision(x.revision.to_string())
        .create_pr(x.create_pr)
        .progress(bars)
        .send()
        .map_err(|e| map_error(e, x))?;
    Ok(XetResult {
        commit_oid: info.commit_oid.map(Remote::new),
        commit_url: info.commit_url.map(Remote::new),
        pull_request_url: info.pr_url.map(Remote::new),
        actions: x
            .files
            .iter()
            .map(|f| if f.large { Action::Xet } else { Action::Inline })
            .collect(),
    })
}

/// hf-hub's error as an l3kit error, with the same advice as the LFS path gives for the same
/// status; its text (which quotes the server) is shown redacted.
fn map_error(e: HFError, x: &XetCommit) -> Error {
    let text = Remote::new(e.to_string());
    let status = match &e {
        HFError::AuthRequired { context }
        | HFError::Forbidden { context }
        | HFError::Conflict { context }
        | HFError::Http { context }
        | HFError::RateLimited { context, .. } => Some(context.status.as_u16()),
        HFError::RepoNotFound { .. } | HFError::RevisionNotFound { .. } => Some(404),
        _ => None,
    };
    Error::input(match status {
        Some(code) => {
            let advice = super::protocol::advice(code, x.repo, x.revision);
            format!(
                "Xet upload through hf-hub: the Hub answered {code} {}: {text}{}{advice}",
                super::protocol::status_text(code),
                if advice.is_empty() { "" } else { ": " }
            )
        }
        None => format!("Xet upload through hf-hub: {text}"),
    })
}
