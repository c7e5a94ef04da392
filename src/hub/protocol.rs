//! The Hub's HTTP protocol for one upload: repository creation, paths-info, preupload, the commit, and the replies l3kit reads from them.

use super::files::{check_unchanged, LocalFile};
use super::http::{
    strip_query, Http, Payload, Reply, ReplyKind, MAX_ERROR_REPLY_BYTES, QUOTED_CHARS,
};
use super::lfs::{upload_basic, upload_multipart, verify_object};
use super::redact::Remote;
use super::report::{multi_progress, short};
use super::*;
use base64::Engine as _;
use reqwest::{Method, Url};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Paths per preupload / paths-info request and objects per LFS batch request.
pub(crate) const CHUNK: usize = 100;

/// A file the Hub asks to receive inline is refused above this size (it would be held in
/// memory, base64-encoded, inside the commit request).
pub(crate) const MAX_INLINE_BYTES: u64 = 64 << 20;

pub(crate) const LFS_MEDIA_TYPE: &str = "application/vnd.git-lfs+json";

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

pub(crate) struct Session<'a> {
    pub(crate) http: Http,
    pub(crate) endpoint: Url,
    pub(crate) repo: &'a str,
    pub(crate) revision: &'a str,
}

impl Session<'_> {
    pub(crate) fn api(&self, path: &str) -> String {
        format!(
            "{}/api/{path}",
            self.endpoint.as_str().trim_end_matches('/')
        )
    }

    pub(crate) fn rev(&self) -> String {
        utf8_percent_encode(self.revision)
    }

    /// An error for a reply that is not 2xx: the step, the request, the status, the start of
    /// the server's message (redacted) and what to do.
    pub(crate) fn fail(&self, what: &str, reply: &Reply) -> Error {
        let server = reply
            .server_message()
            .map(|m| format!(" ({})", m.excerpt(QUOTED_CHARS)))
            .unwrap_or_default();
        let cut = if reply.truncated() {
            format!(
                " (the answer's body is longer than the {} l3kit reads of an error reply; the \
                 rest was not read)",
                card::human_bytes(MAX_ERROR_REPLY_BYTES)
            )
        } else {
            String::new()
        };
        let mut advice = advice(reply.status, self.repo, self.revision);
        if reply.status == 404 {
            let code = reply.header("x-error-code");
            match code.as_ref().map(Remote::protocol) {
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
            "{what} ({}): the Hub answered {} {}{server}{cut}{sep}{advice}",
            reply.request(),
            reply.status,
            status_text(reply.status)
        ))
    }

    pub(crate) fn post_json(
        &mut self,
        url: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> Result<Reply> {
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
            ReplyKind::Json,
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
pub(crate) fn utf8_percent_encode(s: &str) -> String {
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

// The replies l3kit reads. Every string in them is [`Remote`]: shown only redacted, and used
// raw only through `Remote::protocol`.

#[derive(Deserialize)]
pub(crate) struct RemoteEntry {
    #[serde(rename = "type")]
    pub(crate) kind: Remote,
    pub(crate) path: Remote,
    #[serde(default)]
    pub(crate) oid: Option<Remote>,
    #[serde(default)]
    pub(crate) size: Option<u64>,
    #[serde(default)]
    pub(crate) lfs: Option<RemoteLfs>,
}

#[derive(Deserialize)]
pub(crate) struct RemoteLfs {
    /// The Hub calls the SHA-256 `oid`; some clients' models call it `sha256`.
    #[serde(alias = "sha256")]
    pub(crate) oid: Option<Remote>,
    #[serde(default)]
    pub(crate) size: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct PreuploadReply {
    pub(crate) files: Vec<PreuploadFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PreuploadFile {
    pub(crate) path: Remote,
    pub(crate) upload_mode: Remote,
    #[serde(default)]
    pub(crate) should_ignore: bool,
}

#[derive(Deserialize)]
pub(crate) struct BatchReply {
    #[serde(default)]
    pub(crate) transfer: Option<Remote>,
    #[serde(default)]
    pub(crate) objects: Vec<BatchObject>,
}

#[derive(Deserialize)]
pub(crate) struct BatchObject {
    pub(crate) oid: Remote,
    #[serde(default)]
    pub(crate) size: Option<u64>,
    #[serde(default)]
    pub(crate) actions: Option<BatchActions>,
    #[serde(default)]
    pub(crate) error: Option<BatchError>,
}

#[derive(Deserialize)]
pub(crate) struct BatchActions {
    pub(crate) upload: Option<LfsAction>,
    pub(crate) verify: Option<LfsAction>,
}

#[derive(Deserialize)]
pub(crate) struct LfsAction {
    pub(crate) href: Remote,
    /// Header names and values, in the order of the names (a string value as is, any other
    /// JSON value as its JSON text).
    #[serde(default, deserialize_with = "remote_map")]
    pub(crate) header: Vec<(Remote, Remote)>,
}

impl LfsAction {
    pub(crate) fn header(&self, name: &str) -> Option<&Remote> {
        self.header
            .iter()
            .find(|(k, _)| k.protocol() == name)
            .map(|(_, v)| v)
    }
}

fn remote_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(Remote, Remote)>, D::Error> {
    let m = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (Remote::new(k), Remote::new(v))
        })
        .collect())
}

#[derive(Deserialize)]
pub(crate) struct BatchError {
    #[serde(default)]
    pub(crate) code: Option<i64>,
    #[serde(default)]
    pub(crate) message: Option<Remote>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommitReply {
    #[serde(default)]
    pub(crate) commit_oid: Option<Remote>,
    #[serde(default)]
    pub(crate) commit_url: Option<Remote>,
    #[serde(default)]
    pub(crate) pull_request_url: Option<Remote>,
}

/// Steps 3 to 7; returns each file's action, in `files` order.
pub(crate) fn run(
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
        let entries: Vec<RemoteEntry> = reply.json("reading the repository's files")?;
        for e in entries {
            if e.kind.protocol() == "file" {
                remote.insert(e.path.protocol().to_string(), e);
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
                lfs.oid.as_ref().map(Remote::protocol) == Some(f.sha256.as_str())
                    && lfs.size.or(r.size) == Some(f.size)
            }
            None => {
                r.size.is_none_or(|n| n == f.size)
                    && r.oid.as_ref().map(Remote::protocol) == Some(f.git_blob_id()?.as_str())
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
        let answer: PreuploadReply = reply.json("asking the Hub how to send each file")?;
        for f in answer.files {
            modes.insert(f.path.protocol().to_string(), f);
        }
    }
    let mut lfs_files = Vec::new();
    let mut inline_files = Vec::new();
    for &i in &changed {
        let f = &mut files[i];
        let Some(m) = modes.get(&f.path) else {
            return Err(Error::input(format!(
                "asking the Hub how to send each file (POST {}): the answer does not mention {}; \
                 run again (report it if it persists)",
                strip_query(&url),
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
        f.large = match m.upload_mode.protocol() {
            "lfs" => f.size > 0,
            "regular" => false,
            _ => {
                return Err(Error::input(format!(
                    "asking the Hub how to send each file (POST {}): the Hub wants {} sent as \
                     {:?}, which l3kit does not know (it sends \"lfs\" and \"regular\" files); \
                     check that --endpoint names a Hugging Face Hub",
                    strip_query(&url),
                    f.path,
                    m.upload_mode.to_string()
                )))
            }
        };
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
        let mut work: Vec<BatchObject> = Vec::new();
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
            let what = "negotiating the large-file transfer (LFS batch)";
            let reply = s.http.send(
                Method::POST,
                &url,
                &headers,
                &Payload::Bytes {
                    data: &data,
                    content_type: LFS_MEDIA_TYPE,
                },
                true,
                ReplyKind::Json,
                what,
            )?;
            if !reply.ok() {
                return Err(s.fail(what, &reply));
            }
            let answer: BatchReply = reply.json(what)?;
            let t: &'static str = match answer.transfer.as_ref().map(Remote::protocol) {
                None | Some("basic") => "basic",
                Some("multipart") => "multipart",
                Some("xet") if opts.xet => "xet",
                Some(_) => {
                    return Err(Error::input(format!(
                        "{what} (POST {url}): the Hub chose the transfer {:?}, which l3kit did \
                         not offer (it offered {}); check that --endpoint names a Hugging Face \
                         Hub{}",
                        answer
                            .transfer
                            .as_ref()
                            .map(Remote::to_string)
                            .unwrap_or_default(),
                        transfers.join(", "),
                        if opts.xet { ", or try --no-xet" } else { "" }
                    )))
                }
            };
            transfer = Some(t);
            if t == "xet" {
                break;
            }
            if let Some((missing, _)) = chunk
                .iter()
                .find(|(oid, _)| !answer.objects.iter().any(|o| o.oid.protocol() == oid))
            {
                return Err(Error::input(format!(
                    "{what} (POST {url}): the Hub's answer leaves out object {missing}; run \
                     again (report it if it persists)"
                )));
            }
            for o in answer.objects {
                let Some(size) = chunk
                    .iter()
                    .find(|(oid, _)| oid == o.oid.protocol())
                    .map(|(_, n)| *n)
                else {
                    return Err(Error::input(format!(
                        "{what} (POST {url}): the Hub answered for an object l3kit did not ask \
                         about ({}); check that --endpoint names a Hugging Face Hub",
                        o.oid
                    )));
                };
                if let Some(e) = &o.error {
                    return Err(Error::input(format!(
                        "{what} (POST {url}): the Hub refused object {} ({} bytes): {}{}; run \
                         again, or try --no-xet (report it if it persists)",
                        o.oid,
                        o.size.unwrap_or(size),
                        e.code.map(|c| format!("{c} ")).unwrap_or_default(),
                        e.message
                            .as_ref()
                            .map(|m| m.excerpt(QUOTED_CHARS))
                            .unwrap_or_default()
                    )));
                }
                work.push(o);
            }
        }
        summary.large_file_transfer = transfer.map(str::to_string);
        if transfer == Some("xet") {
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
        for object in &work {
            let idx: Vec<usize> = lfs_files
                .iter()
                .copied()
                .filter(|&i| files[i].sha256 == object.oid.protocol())
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
                if up.header("chunk_size").is_some() {
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
        ReplyKind::Json,
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
    let answer: CommitReply = reply.json("committing").map_err(|e| {
        Error::input(format!(
            "{e}; the commit may have been made all the same: running the upload again sends \
             only what is missing"
        ))
    })?;
    summary.sent_files = to_send.len();
    summary.sent_bytes = send_total;
    summary.commit = Some(CommitReport {
        oid: answer.commit_oid,
        url: answer.commit_url,
        pull_request_url: answer.pull_request_url,
    });
    Ok(actions)
}
