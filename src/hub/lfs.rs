//! Git LFS transfers: one PUT (`basic`) or one PUT per part and a completion call (`multipart`), then `verify`.

use super::files::LocalFile;
use super::http::{Payload, ReplyKind};
use super::protocol::{LfsAction, Session, LFS_MEDIA_TYPE};
use super::redact::Remote;
use super::*;
use indicatif::ProgressBar;
use reqwest::Method;

/// The headers an LFS action asks to be sent with it (the multipart bookkeeping entries, the
/// chunk size and the numbered part URLs, are not headers). They go back to the server that
/// chose them, so they are used raw.
pub(crate) fn lfs_headers(action: &LfsAction) -> Vec<(String, String)> {
    action
        .header
        .iter()
        .filter(|(k, _)| {
            let k = k.protocol();
            k != "chunk_size" && !k.chars().all(|c| c.is_ascii_digit())
        })
        .map(|(k, v)| (k.protocol().to_string(), v.protocol().to_string()))
        .collect()
}

pub(crate) fn upload_basic(
    s: &mut Session,
    f: &LocalFile,
    up: &LfsAction,
    bars: &[ProgressBar],
) -> Result<()> {
    let what = format!("uploading {}", f.path);
    let headers = lfs_headers(up);
    let href = up.href.protocol();
    let reply = match &f.source {
        Source::File { path, file } => s.http.send(
            Method::PUT,
            href,
            &headers,
            &Payload::File {
                path: path.clone(),
                file: file.clone(),
                offset: 0,
                len: f.size,
                bars,
            },
            false,
            ReplyKind::Storage,
            &what,
        )?,
        Source::Generated(b) => s.http.send(
            Method::PUT,
            href,
            &headers,
            &Payload::Bytes {
                data: b,
                content_type: "application/octet-stream",
            },
            false,
            ReplyKind::Storage,
            &what,
        )?,
    };
    if !reply.ok() {
        return Err(s.fail(&what, &reply));
    }
    Ok(())
}

pub(crate) fn upload_multipart(
    s: &mut Session,
    f: &LocalFile,
    up: &LfsAction,
    bars: &[ProgressBar],
) -> Result<()> {
    let what = format!("uploading {}", f.path);
    let chunk_text = up.header("chunk_size").cloned().unwrap_or_default();
    let chunk: u64 = chunk_text
        .protocol()
        .trim()
        .parse()
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| {
            Error::input(format!(
                "{what}: the Hub's multipart chunk_size {:?} is not a positive number; run \
                 again, or report it if it persists",
                chunk_text.to_string()
            ))
        })?;
    let mut parts: Vec<(u64, &Remote)> = up
        .header
        .iter()
        .filter(|(k, _)| {
            let k = k.protocol();
            !k.is_empty() && k.chars().all(|c| c.is_ascii_digit())
        })
        .filter_map(|(k, v)| Some((k.protocol().parse::<u64>().ok()?, v)))
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
            "{what}: the Hub offered {} part URLs for {} bytes in chunks of {chunk}; expected \
             {want} numbered 1 to {want}; run again, or report it if it persists",
            parts.len(),
            f.size
        )));
    }
    let Source::File { path, file } = &f.source else {
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
            part_url.protocol(),
            &[],
            &Payload::File {
                path: path.clone(),
                file: file.clone(),
                offset,
                len,
                bars,
            },
            false,
            ReplyKind::Storage,
            &format!("{what} (part {n} of {want})"),
        )?;
        if !reply.ok() {
            return Err(s.fail(&format!("{what} (part {n} of {want})"), &reply));
        }
        // The ETag goes back to the server that made it, raw.
        let etag = reply.header("etag").unwrap_or_default();
        if etag.is_empty() {
            return Err(Error::input(format!(
                "{what} ({}): part {n} was stored but the server returned no ETag; run again \
                 (report it if it persists)",
                reply.request()
            )));
        }
        etags.push(serde_json::json!({ "partNumber": n, "etag": etag.protocol() }));
    }
    let body = serde_json::json!({ "oid": f.sha256, "parts": etags });
    let data = serde_json::to_vec(&body).expect("serialises");
    let reply = s.http.send(
        Method::POST,
        up.href.protocol(),
        &[("Accept".to_string(), LFS_MEDIA_TYPE.to_string())],
        &Payload::Bytes {
            data: &data,
            content_type: LFS_MEDIA_TYPE,
        },
        false,
        ReplyKind::Json,
        &format!("{what} (completing the multipart upload)"),
    )?;
    if !reply.ok() {
        return Err(s.fail(&format!("{what} (completing the multipart upload)"), &reply));
    }
    Ok(())
}

pub(crate) fn verify_object(s: &mut Session, f: &LocalFile, v: &LfsAction) -> Result<()> {
    let what = format!("verifying {}", f.path);
    let mut headers = lfs_headers(v);
    headers.push(("Accept".to_string(), LFS_MEDIA_TYPE.to_string()));
    let body = serde_json::json!({ "oid": f.sha256, "size": f.size });
    let data = serde_json::to_vec(&body).expect("serialises");
    let reply = s.http.send(
        Method::POST,
        v.href.protocol(),
        &headers,
        &Payload::Bytes {
            data: &data,
            content_type: LFS_MEDIA_TYPE,
        },
        true,
        ReplyKind::Json,
        &what,
    )?;
    if !reply.ok() {
        return Err(s.fail(&what, &reply));
    }
    Ok(())
}
