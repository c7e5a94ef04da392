//! Git LFS transfers: one PUT (`basic`) or one PUT per part and a completion call (`multipart`), then `verify`.

use super::files::LocalFile;
use super::http::Payload;
use super::protocol::{header_text, LfsAction, Session, LFS_MEDIA_TYPE};
use super::*;
use indicatif::ProgressBar;
use reqwest::Method;

pub(crate) fn lfs_headers(action: &LfsAction) -> Vec<(String, String)> {
    action
        .header
        .iter()
        .filter(|(k, _)| k.as_str() != "chunk_size" && !k.chars().all(|c| c.is_ascii_digit()))
        .map(|(k, v)| (k.clone(), header_text(v)))
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

pub(crate) fn upload_multipart(
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

pub(crate) fn verify_object(s: &mut Session, f: &LocalFile, v: &LfsAction) -> Result<()> {
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
