//! `l3kit upload` against a mock Hugging Face Hub: a small HTTP/1.1 server on 127.0.0.1 (a free
//! port) that implements what the client calls — repository creation, paths-info, preupload,
//! the Git LFS batch API with basic and multipart transfers and verify, the NDJSON commit, and
//! the Xet write-token endpoint — records every request, and serves errors, dropped
//! connections, endless bodies and rewritten answers (a hostile server that echoes the token
//! into every field) on demand. Nothing leaves the machine; the server stops when the test ends
//! (or after 60 s at the latest), and the client's retries are bounded in count and time.

mod common;

use base64::Engine as _;
use l3kit::checkpoint::dialect::Dialect;
use l3kit::formats::dtype::TableDtype;
use l3kit::hub::{upload, RetryPolicy, Token, UploadOptions};
use l3kit::pack::{pack, PackOptions};
use l3kit::util::progress::Ui;
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TOKEN: &str = "hf_mockSECRETtoken0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// The mock Hub.

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug)]
enum Stored {
    Regular(Vec<u8>),
    Lfs { oid: String, size: u64 },
}

#[derive(Default)]
struct Repo {
    branches: BTreeMap<String, BTreeMap<String, Stored>>,
    prs: Vec<BTreeMap<String, Stored>>,
}

#[derive(Clone, Copy, Debug)]
enum FaultKind {
    Status(u16),
    /// Read the request, then close the connection without an answer.
    Drop,
    /// Answer `status` with a body of `len` spaces (valid JSON whitespace, so a reader that
    /// parses as it goes keeps reading), streamed until the client hangs up; with a
    /// Content-Length, or chunked.
    Huge {
        status: u16,
        len: u64,
        chunked: bool,
    },
}

/// Changes the mock's normal answer to a matching request (the state has been updated as usual).
type RewriteFn = Box<dyn FnMut(Answer) -> Answer + Send>;

struct Rewrite {
    method: &'static str,
    path_contains: &'static str,
    times: u32,
    f: RewriteFn,
}

struct Fault {
    method: &'static str,
    path_contains: &'static str,
    kind: FaultKind,
    times: u32,
}

struct Config {
    token: String,
    /// The transfer the LFS batch endpoint picks: "basic" or "xet".
    transfer: &'static str,
    /// Objects larger than this go as multipart uploads with parts of this size.
    multipart_chunk: Option<usize>,
    /// Error answers quote the Authorization header they got (a careless server).
    echo_auth: bool,
}

struct State {
    cfg: Config,
    base: String,
    repos: BTreeMap<String, Repo>,
    lfs: HashMap<String, Vec<u8>>,
    parts: HashMap<(String, u64), Vec<u8>>,
    requests: Vec<Recorded>,
    faults: Vec<Fault>,
    rewrites: Vec<Rewrite>,
    commits: u64,
}

struct Mock {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Mock {
    fn start(cfg: Config) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State {
            cfg,
            base: format!("http://{addr}"),
            repos: BTreeMap::new(),
            lfs: HashMap::new(),
            parts: HashMap::new(),
            requests: Vec::new(),
            faults: Vec::new(),
            rewrites: Vec::new(),
            commits: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !sp.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => serve(conn, &st),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        Mock {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn basic() -> Mock {
        Mock::start(Config {
            token: TOKEN.to_string(),
            transfer: "basic",
            multipart_chunk: None,
            echo_auth: false,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn fail(&self, method: &'static str, path_contains: &'static str, kind: FaultKind, times: u32) {
        self.state.lock().unwrap().faults.push(Fault {
            method,
            path_contains,
            kind,
            times,
        });
    }

    /// Rewrite the next `times` answers to `method` requests whose path contains
    /// `path_contains`.
    fn rewrite(
        &self,
        method: &'static str,
        path_contains: &'static str,
        times: u32,
        f: impl FnMut(Answer) -> Answer + Send + 'static,
    ) {
        self.state.lock().unwrap().rewrites.push(Rewrite {
            method,
            path_contains,
            times,
            f: Box::new(f),
        });
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    /// The files of a branch, LFS objects resolved to their bytes.
    fn files(&self, repo: &str, branch: &str) -> BTreeMap<String, Vec<u8>> {
        let st = self.state.lock().unwrap();
        let tree = &st.repos[repo].branches[branch];
        resolve(&st, tree)
    }

    fn pr_files(&self, repo: &str, pr: usize) -> BTreeMap<String, Vec<u8>> {
        let st = self.state.lock().unwrap();
        resolve(&st, &st.repos[repo].prs[pr])
    }

    fn stored(&self, repo: &str, branch: &str) -> BTreeMap<String, Stored> {
        self.state.lock().unwrap().repos[repo].branches[branch].clone()
    }

    fn commits(&self) -> u64 {
        self.state.lock().unwrap().commits
    }
}

fn resolve(st: &State, tree: &BTreeMap<String, Stored>) -> BTreeMap<String, Vec<u8>> {
    tree.iter()
        .map(|(p, s)| {
            let bytes = match s {
                Stored::Regular(b) => b.clone(),
                Stored::Lfs { oid, .. } => st.lfs[oid].clone(),
            };
            (p.clone(), bytes)
        })
        .collect()
}

fn read_request(conn: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = buf[head_end + 4..].to_vec();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // Read to the terminating chunk, then decode.
        while !body.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = conn.read(&mut tmp).ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&tmp[..n]);
        }
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let i = rest.windows(2).position(|w| w == b"\r\n")?;
            let len =
                usize::from_str_radix(std::str::from_utf8(&rest[..i]).ok()?.trim(), 16).ok()?;
            if len == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + len]);
            rest = &rest[i + 2 + len + 2..];
        }
        body = out;
    } else {
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while body.len() < len {
            let n = conn.read(&mut tmp).ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&tmp[..n]);
        }
        body.truncate(len);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

fn respond(conn: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

fn serve(mut conn: TcpStream, state: &Arc<Mutex<State>>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(req) = read_request(&mut conn) else {
        return;
    };
    let mut st = state.lock().unwrap();
    st.requests.push(req.clone());
    let fault = st
        .faults
        .iter_mut()
        .find(|f| f.times > 0 && f.method == req.method && req.path.contains(f.path_contains))
        .map(|f| {
            f.times -= 1;
            f.kind
        });
    let (status, headers, body) = match fault {
        Some(FaultKind::Drop) => {
            drop(st);
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        Some(FaultKind::Huge {
            status,
            len,
            chunked,
        }) => {
            drop(st);
            stream_huge(&mut conn, status, len, chunked);
            return;
        }
        Some(FaultKind::Status(code)) => (
            code,
            vec![],
            format!("{{\"error\":\"mock fault {code}\"}}").into_bytes(),
        ),
        None => route(&mut st, &req),
    };
    let answer = match st
        .rewrites
        .iter_mut()
        .find(|r| r.times > 0 && r.method == req.method && req.path.contains(r.path_contains))
    {
        Some(r) => {
            r.times -= 1;
            (r.f)((status, headers, body))
        }
        None => (status, headers, body),
    };
    drop(st);
    respond(&mut conn, answer.0, &answer.1, &answer.2);
}

/// Stream `len` bytes of spaces without holding them, until done or the client hangs up.
fn stream_huge(conn: &mut TcpStream, status: u16, len: u64, chunked: bool) {
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\n{framing}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    );
    // A client that stops reading without hanging up must not wedge the mock.
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let block = vec![b' '; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        let ok = if chunked {
            conn.write_all(format!("{n:x}\r\n").as_bytes()).is_ok()
                && conn.write_all(&block[..n]).is_ok()
                && conn.write_all(b"\r\n").is_ok()
        } else {
            conn.write_all(&block[..n]).is_ok()
        };
        if !ok {
            return;
        }
        left -= n as u64;
    }
    if chunked {
        let _ = conn.write_all(b"0\r\n\r\n");
    }
    let _ = conn.flush();
}

type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);

fn json(status: u16, v: serde_json::Value) -> Answer {
    (
        status,
        vec![("Content-Type", "application/json".into())],
        v.to_string().into_bytes(),
    )
}

fn err(status: u16, code: &str, msg: &str) -> Answer {
    let (s, mut h, b) = json(status, serde_json::json!({ "error": msg }));
    if !code.is_empty() {
        h.push(("X-Error-Code", code.to_string()));
    }
    (s, h, b)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn git_blob(b: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex::encode(h.finalize())
}

fn pointer(oid: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n")
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn route(st: &mut State, req: &Recorded) -> Answer {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let hub_api = path.starts_with("/api/") || path.contains(".git/info/lfs");
    if hub_api && req.header("authorization") != Some(&format!("Bearer {}", st.cfg.token)) {
        let got = req.header("authorization").unwrap_or("");
        let msg = if st.cfg.echo_auth {
            format!("Invalid credentials in Authorization header: {got}")
        } else {
            "Invalid credentials in Authorization header".to_string()
        };
        return err(401, "", &msg);
    }
    let body: serde_json::Value =
        serde_json::from_slice(&req.body).unwrap_or(serde_json::Value::Null);
    let base = st.base.clone();
    match (req.method.as_str(), seg.as_slice()) {
        ("POST", ["api", "repos", "create"]) => {
            let id = format!(
                "{}/{}",
                body["organization"].as_str().unwrap_or("me"),
                body["name"].as_str().unwrap_or("")
            );
            if st.repos.contains_key(&id) {
                return err(409, "", "You already created this model repo");
            }
            let mut repo = Repo::default();
            let mut main = BTreeMap::new();
            main.insert(
                ".gitattributes".to_string(),
                Stored::Regular(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n".to_vec()),
            );
            repo.branches.insert("main".to_string(), main);
            st.repos.insert(id.clone(), repo);
            json(200, serde_json::json!({ "url": format!("{base}/{id}") }))
        }
        ("POST", ["api", "models", o, n, op, rev]) => {
            let id = format!("{o}/{n}");
            let rev = decode(rev);
            let Some(repo) = st.repos.get(&id) else {
                return err(404, "RepoNotFound", "Repository not found");
            };
            let Some(tree) = repo.branches.get(&rev).cloned() else {
                return err(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
            };
            match *op {
                "paths-info" => {
                    let mut out = Vec::new();
                    for p in body["paths"].as_array().cloned().unwrap_or_default() {
                        let p = p.as_str().unwrap_or("");
                        match tree.get(p) {
                            Some(Stored::Regular(b)) => out.push(serde_json::json!({
                                "type": "file", "oid": git_blob(b), "size": b.len(), "path": p })),
                            Some(Stored::Lfs { oid, size }) => {
                                let ptr = pointer(oid, *size);
                                out.push(serde_json::json!({
                                    "type": "file", "oid": git_blob(ptr.as_bytes()), "size": size, "path": p,
                                    "lfs": { "oid": oid, "size": size, "pointerSize": ptr.len() } }))
                            }
                            None => {}
                        }
                    }
                    json(200, serde_json::Value::Array(out))
                }
                "preupload" => {
                    let mut out = Vec::new();
                    for f in body["files"].as_array().cloned().unwrap_or_default() {
                        let p = f["path"].as_str().unwrap_or("");
                        let size = f["size"].as_u64().unwrap_or(0);
                        if base64::engine::general_purpose::STANDARD
                            .decode(f["sample"].as_str().unwrap_or("!"))
                            .is_err()
                        {
                            return err(400, "", "sample is not base64");
                        }
                        let lfs = p.ends_with(".safetensors") || size > 10_000_000;
                        out.push(serde_json::json!({
                            "path": p, "uploadMode": if lfs { "lfs" } else { "regular" }, "shouldIgnore": false }));
                    }
                    json(
                        200,
                        serde_json::json!({ "files": out, "commitOid": "0".repeat(40) }),
                    )
                }
                "commit" => {
                    let mut lines = req.body.split(|&b| b == b'\n').filter(|l| !l.is_empty());
                    let header: serde_json::Value =
                        serde_json::from_slice(lines.next().unwrap_or(b"{}")).unwrap_or_default();
                    if header["key"] != "header" || header["value"]["summary"].as_str().is_none() {
                        return err(400, "", "the first line must be the header");
                    }
                    let mut next = tree.clone();
                    for l in lines {
                        let v: serde_json::Value = serde_json::from_slice(l).unwrap_or_default();
                        let p = v["value"]["path"].as_str().unwrap_or("").to_string();
                        match v["key"].as_str() {
                            Some("file") => {
                                let Ok(bytes) = base64::engine::general_purpose::STANDARD
                                    .decode(v["value"]["content"].as_str().unwrap_or("!"))
                                else {
                                    return err(400, "", "bad base64");
                                };
                                next.insert(p, Stored::Regular(bytes));
                            }
                            Some("lfsFile") => {
                                let oid = v["value"]["oid"].as_str().unwrap_or("").to_string();
                                let size = v["value"]["size"].as_u64().unwrap_or(0);
                                if st.lfs.get(&oid).map(|b| b.len() as u64) != Some(size) {
                                    return err(
                                        422,
                                        "",
                                        &format!("LFS object {oid} was never uploaded"),
                                    );
                                }
                                next.insert(p, Stored::Lfs { oid, size });
                            }
                            _ => return err(400, "", "unknown commit line"),
                        }
                    }
                    st.commits += 1;
                    let commit = format!("{:040x}", st.commits);
                    let repo = st.repos.get_mut(&id).unwrap();
                    if query.contains("create_pr=1") {
                        repo.prs.push(next);
                        let n = repo.prs.len();
                        json(
                            200,
                            serde_json::json!({
                            "success": true, "commitOid": commit,
                            "commitUrl": format!("{base}/{id}/commit/{commit}"),
                            "pullRequestUrl": format!("{base}/{id}/discussions/{n}") }),
                        )
                    } else {
                        repo.branches.insert(rev, next);
                        json(
                            200,
                            serde_json::json!({
                            "success": true, "commitOid": commit,
                            "commitUrl": format!("{base}/{id}/commit/{commit}") }),
                        )
                    }
                }
                _ => err(404, "", "no such endpoint"),
            }
        }
        ("GET", ["api", "models", _, _, "xet-write-token", _]) => {
            err(403, "", "this mock has no Xet storage")
        }
        ("POST", [o, n, ".git", "info", "lfs", "objects", "batch"])
        | ("POST", [o, n, "info", "lfs", "objects", "batch"]) => {
            let _ = (o, n);
            let offered: Vec<&str> = body["transfers"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
                .unwrap_or_default();
            if st.cfg.transfer == "xet" && offered.contains(&"xet") {
                return json(
                    200,
                    serde_json::json!({ "transfer": "xet", "objects": body["objects"] }),
                );
            }
            let mut out = Vec::new();
            for o in body["objects"].as_array().cloned().unwrap_or_default() {
                let oid = o["oid"].as_str().unwrap_or("").to_string();
                let size = o["size"].as_u64().unwrap_or(0);
                if st.lfs.contains_key(&oid) {
                    out.push(serde_json::json!({ "oid": oid, "size": size }));
                    continue;
                }
                let verify = serde_json::json!({ "href": format!("{base}/lfs-verify/{oid}") });
                let upload = match st.cfg.multipart_chunk {
                    Some(c) if size as usize > c => {
                        let mut header = serde_json::Map::new();
                        header.insert("chunk_size".into(), c.to_string().into());
                        for i in 1..=(size as usize).div_ceil(c) {
                            header.insert(
                                format!("{i:05}"),
                                format!("{base}/lfs-part/{oid}/{i}").into(),
                            );
                        }
                        serde_json::json!({ "href": format!("{base}/lfs-complete/{oid}"), "header": header })
                    }
                    _ => {
                        serde_json::json!({ "href": format!("{base}/lfs/{oid}"), "header": { "X-Mock-Upload": "yes" } })
                    }
                };
                out.push(
                    serde_json::json!({ "oid": oid, "size": size, "authenticated": true,
                    "actions": { "upload": upload, "verify": verify } }),
                );
            }
            json(
                200,
                serde_json::json!({ "transfer": "basic", "objects": out }),
            )
        }
        ("PUT", ["lfs", oid]) => {
            if sha256_hex(&req.body) != *oid {
                return err(400, "", "content does not match the oid");
            }
            st.lfs.insert(oid.to_string(), req.body.clone());
            (200, vec![], vec![])
        }
        ("PUT", ["lfs-part", oid, n]) => {
            let n: u64 = n.parse().unwrap_or(0);
            st.parts.insert((oid.to_string(), n), req.body.clone());
            (
                200,
                vec![("ETag", format!("\"etag-{n}-{}\"", req.body.len()))],
                vec![],
            )
        }
        ("POST", ["lfs-complete", oid]) => {
            let mut all = Vec::new();
            for (i, p) in body["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let n = p["partNumber"].as_u64().unwrap_or(0);
                if n != i as u64 + 1 {
                    return err(400, "", "parts out of order");
                }
                let Some(bytes) = st.parts.get(&(oid.to_string(), n)) else {
                    return err(400, "", "missing part");
                };
                if p["etag"].as_str() != Some(&format!("\"etag-{n}-{}\"", bytes.len())) {
                    return err(400, "", "wrong etag");
                }
                all.extend_from_slice(bytes);
            }
            if sha256_hex(&all) != *oid || body["oid"].as_str() != Some(oid) {
                return err(400, "", "assembled content does not match the oid");
            }
            st.lfs.insert(oid.to_string(), all);
            (200, vec![], vec![])
        }
        ("POST", ["lfs-verify", oid]) => match st.lfs.get(*oid) {
            Some(b) if Some(b.len() as u64) == body["size"].as_u64() => {
                json(200, serde_json::json!({}))
            }
            _ => err(404, "", "object not found"),
        },
        _ => err(404, "", "no such endpoint"),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A small packed model (paper dialect, bf16 tables: 2 L3 layers, a few shards of a few KiB).
fn packed_model(root: &Path) -> PathBuf {
    let s = l3kit::synth::small(&root.join("src"), Dialect::Paper, TableDtype::Bf16).unwrap();
    let out = root.join("packed");
    let mut o = PackOptions::new(s.checkpoint, out.clone());
    o.allocation = Some(s.allocation);
    pack(&o, &Ui::quiet()).unwrap();
    out
}

fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn isolated_home() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Run `l3kit` with a clean Hugging Face environment (no ambient token or endpoint).
fn l3kit(args: &[&str], token: Option<&str>, home: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_l3kit"));
    c.args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_ENDPOINT")
        .env_remove("XDG_CACHE_HOME")
        .env("HF_HOME", home)
        .env("HOME", home);
    if let Some(t) = token {
        c.env("HF_TOKEN", t);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn assert_no_token(o: &Output) {
    let (out, err) = text(o);
    assert!(
        !out.contains(TOKEN) && !err.contains(TOKEN),
        "token leaked:\n{out}\n{err}"
    );
    assert!(!out.contains("mockSECRET") && !err.contains("mockSECRET"));
}

fn upload_cli(mock: &Mock, dir: &Path, repo: &str, extra: &[&str], home: &Path) -> Output {
    let url = mock.url();
    let mut args = vec![
        "upload",
        dir.to_str().unwrap(),
        "--repo",
        repo,
        "--endpoint",
        url.as_str(),
        "--retries",
        "2",
    ];
    args.extend_from_slice(extra);
    let o = l3kit(&args, Some(TOKEN), home);
    assert_no_token(&o);
    o
}

fn lib_opts(mock: &Mock, dir: &Path, repo: &str) -> UploadOptions {
    let mut o = UploadOptions::new(dir, repo);
    o.endpoint = Some(mock.url());
    o.token = Token::new(TOKEN);
    o.retry = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
    };
    o.timeout = Duration::from_secs(10);
    o
}

fn body_bytes(reqs: &[Recorded]) -> usize {
    reqs.iter().map(|r| r.body.len()).sum()
}

fn routes(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| {
            let p = r.path.split('?').next().unwrap();
            let kind = if p.ends_with("/repos/create") {
                "create"
            } else if p.contains("/paths-info/") {
                "paths-info"
            } else if p.contains("/preupload/") {
                "preupload"
            } else if p.ends_with("/objects/batch") {
                "lfs-batch"
            } else if p.starts_with("/lfs/") {
                "lfs-put"
            } else if p.starts_with("/lfs-part/") {
                "lfs-part"
            } else if p.starts_with("/lfs-complete/") {
                "lfs-complete"
            } else if p.starts_with("/lfs-verify/") {
                "lfs-verify"
            } else if p.contains("/commit/") {
                "commit"
            } else if p.contains("xet-write-token") {
                "xet-token"
            } else {
                "other"
            };
            format!("{} {kind}", r.method)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn first_upload_sends_every_file_byte_for_byte_and_a_second_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let mock = Mock::basic();

    let o = upload_cli(&mock, &dir, "me/tiny-l3", &["--json"], home.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["repo_created"], true);
    assert_eq!(summary["nothing_changed"], false);
    assert_eq!(summary["large_file_transfer"], "basic");

    // The Hub holds exactly the folder's files, byte for byte, plus the generated card and the
    // .gitattributes a new repository starts with.
    let mut hub = mock.files("me/tiny-l3", "main");
    assert!(hub.remove(".gitattributes").is_some());
    let readme = hub.remove("README.md").expect("a generated model card");
    assert_eq!(hub, dir_files(&dir));
    assert_eq!(
        summary["generated_readme"].as_str().unwrap().as_bytes(),
        readme.as_slice()
    );
    // Shards went through LFS, the rest inline.
    for (path, stored) in mock.stored("me/tiny-l3", "main") {
        let lfs = matches!(stored, Stored::Lfs { .. });
        assert_eq!(lfs, path.ends_with(".safetensors"), "{path}");
    }
    let first = mock.requests();
    let r = routes(&first);
    let shards = hub.keys().filter(|p| p.ends_with(".safetensors")).count();
    assert_eq!(r.iter().filter(|k| *k == "PUT lfs-put").count(), shards);
    assert_eq!(r.iter().filter(|k| *k == "POST lfs-verify").count(), shards);
    assert_eq!(r.iter().filter(|k| *k == "POST commit").count(), 1);
    assert_eq!(
        r[..4],
        [
            "POST create",
            "POST paths-info",
            "POST preupload",
            "POST lfs-batch"
        ]
    );
    // The token goes to the Hub's API, never to the storage URLs.
    for q in &first {
        let api = q.path.starts_with("/api/")
            || q.path.contains(".git/info/lfs")
            || q.path.starts_with("/lfs-verify/");
        assert_eq!(
            q.header("authorization").is_some(),
            api,
            "{} {}",
            q.method,
            q.path
        );
    }
    assert_eq!(
        summary["traffic"]["requests"].as_u64().unwrap() as usize,
        first.len()
    );
    eprintln!(
        "first upload: {} requests, {} body bytes ({:?}); files {} bytes",
        first.len(),
        body_bytes(&first),
        r,
        summary["total_bytes"]
    );

    // Again: nothing to send, no commit, and it says so.
    mock.clear_requests();
    let o = upload_cli(&mock, &dir, "me/tiny-l3", &[], home.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("nothing changed"), "{out}");
    eprintln!("{out}");
    let second = mock.requests();
    assert_eq!(routes(&second), ["POST create", "POST paths-info"]);
    assert_eq!(mock.commits(), 1);
    eprintln!(
        "second upload: {} requests, {} body bytes",
        second.len(),
        body_bytes(&second)
    );

    // One shard changes (repacked as f32): only that file... and the card, whose sizes changed.
    let dir2 = {
        let s = l3kit::synth::small(&root.path().join("src2"), Dialect::Paper, TableDtype::Bf16)
            .unwrap();
        let out = root.path().join("packed-f32");
        let mut o = PackOptions::new(s.checkpoint, out.clone());
        o.allocation = Some(s.allocation);
        o.dtype = Some(TableDtype::F32);
        pack(&o, &Ui::quiet()).unwrap();
        out
    };
    mock.clear_requests();
    let o = upload_cli(&mock, &dir2, "me/tiny-l3", &["--json"], home.path());
    assert!(o.status.success(), "{:?}", text(&o));
    let s: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    let unchanged: Vec<&str> = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["action"] == "unchanged")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    // The dense shard and the tokenizer-free config differ only where the dtype shows, so at
    // least the dense shard (identical tensors) is not sent again.
    assert!(
        unchanged.contains(&"model-00001-of-00003.safetensors"),
        "{unchanged:?}"
    );
    let mut hub = mock.files("me/tiny-l3", "main");
    hub.remove(".gitattributes");
    hub.remove("README.md");
    assert_eq!(hub, dir_files(&dir2));
}

#[test]
fn dry_run_sends_nothing_and_needs_no_token() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    let url = mock.url();
    let o = l3kit(
        &[
            "upload",
            dir.to_str().unwrap(),
            "--repo",
            "me/x",
            "--endpoint",
            &url,
            "--dry-run",
        ],
        None,
        home.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("dry run"), "{out}");
    assert!(
        out.contains("README.md") && out.contains("generated model card"),
        "{out}"
    );
    assert!(out.contains("large file"), "{out}");
    assert!(out.contains("token: none found"), "{out}");
    // JSON plan, with a token present: still nothing sent, and the token is not shown.
    let o = upload_cli(&mock, &dir, "me/x", &["--dry-run", "--json"], home.path());
    assert!(o.status.success());
    let plan: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["token_source"], "HF_TOKEN");
    assert!(plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["action"] == "planned"));
    assert!(mock.requests().is_empty());
}

#[test]
fn failing_validation_sends_nothing() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let shard = dir.join("model-00002-of-00003.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let mock = Mock::basic();
    let o = upload_cli(&mock, &dir, "me/x", &[], home.path());
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let err = text(&o).1;
    assert!(
        err.contains("not uploaded") && err.contains("SHA-256 mismatch"),
        "{err}"
    );
    assert!(mock.requests().is_empty());
    // Not a packed folder at all: also refused before any request.
    let o = upload_cli(&mock, root.path(), "me/x", &[], home.path());
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(mock.requests().is_empty());
}

#[test]
fn bad_arguments_and_missing_token_send_nothing() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    let url = mock.url();
    let d = dir.to_str().unwrap();
    for args in [
        vec!["upload", d, "--repo", "no-slash", "--endpoint", &url],
        vec![
            "upload",
            d,
            "--repo",
            "me/x",
            "--endpoint",
            "ftp://example.org",
        ],
        vec![
            "upload",
            d,
            "--repo",
            "me/x",
            "--endpoint",
            &url,
            "--revision",
            "a b",
        ],
    ] {
        let o = l3kit(&args, Some(TOKEN), home.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {:?}", text(&o));
        assert_no_token(&o);
    }
    let o = l3kit(
        &["upload", d, "--repo", "me/x", "--endpoint", &url],
        None,
        home.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("no Hugging Face token"),
        "{:?}",
        text(&o)
    );
    assert!(mock.requests().is_empty());
}

#[test]
fn token_from_the_token_file() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    std::fs::write(home.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    let url = mock.url();
    let o = l3kit(
        &[
            "upload",
            dir.to_str().unwrap(),
            "--repo",
            "me/x",
            "--endpoint",
            &url,
            "--quiet",
        ],
        None,
        home.path(),
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert_no_token(&o);
    assert_eq!(mock.commits(), 1);
}

#[test]
fn unauthorized_is_a_clear_error_and_never_shows_the_token() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    // A careless server that quotes the credentials it got back in its error message.
    let mock = Mock::start(Config {
        token: "hf_the_right_one".into(),
        transfer: "basic",
        multipart_chunk: None,
        echo_auth: true,
    });
    let o = upload_cli(&mock, &dir, "me/x", &[], home.path());
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(err.contains("401") && err.contains("token"), "{err}");
    assert!(
        err.contains("[token]"),
        "the echoed token is scrubbed: {err}"
    );
    assert_eq!(routes(&mock.requests()), ["POST create"]);

    // The library's error value says the same and carries no token either.
    let mut opts = lib_opts(&mock, &dir, "me/x");
    opts.token = Token::new(TOKEN);
    let e = upload(&opts, &Ui::quiet()).unwrap_err();
    let msg = format!("{e} {e:?}");
    assert!(!msg.contains(TOKEN), "{msg}");
    assert_eq!(e.exit_code(), 2);
    assert!(!format!("{opts:?}").contains(TOKEN));
}

#[test]
fn forbidden_and_missing_revision() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    mock.fail("POST", "/api/repos/create", FaultKind::Status(403), 1);
    let o = upload_cli(&mock, &dir, "someone-else/x", &[], home.path());
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(err.contains("403") && err.contains("write access"), "{err}");

    let o = upload_cli(
        &mock,
        &dir,
        "me/x",
        &["--revision", "no-such-branch"],
        home.path(),
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(
        err.contains("404") && err.contains("no-such-branch") && err.contains("create the branch"),
        "{err}"
    );
    assert_eq!(mock.commits(), 0);
}

#[test]
fn conflict_and_too_large_are_explained() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    mock.fail("POST", "/commit/", FaultKind::Status(409), 1);
    let o = upload_cli(&mock, &dir, "me/x", &[], home.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("409") && text(&o).1.contains("conflict"),
        "{:?}",
        text(&o)
    );
    mock.fail("POST", "/commit/", FaultKind::Status(413), 1);
    let o = upload_cli(&mock, &dir, "me/x", &[], home.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("413") && text(&o).1.contains("too large"),
        "{:?}",
        text(&o)
    );
    // The LFS objects uploaded by the first attempts are not sent a third time.
    mock.clear_requests();
    let o = upload_cli(&mock, &dir, "me/x", &[], home.path());
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(!routes(&mock.requests()).iter().any(|r| r == "PUT lfs-put"));
    assert_eq!(mock.commits(), 1);
}

#[test]
fn server_errors_then_success_are_retried() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    mock.fail("POST", "/commit/", FaultKind::Status(500), 1);
    mock.fail("PUT", "/lfs/", FaultKind::Status(503), 1);
    mock.fail("POST", "/preupload/", FaultKind::Status(502), 1);
    let o = upload_cli(&mock, &dir, "me/x", &["--json"], home.path());
    assert!(o.status.success(), "{:?}", text(&o));
    let s: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(s["traffic"]["retries"], 3);
    let mut hub = mock.files("me/x", "main");
    hub.remove(".gitattributes");
    hub.remove("README.md");
    assert_eq!(hub, dir_files(&dir));
    assert_eq!(mock.commits(), 1);
}

#[test]
fn dropped_connections_are_retried_and_bounded() {
    let root = tempfile::tempdir().unwrap();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    mock.fail("POST", "/paths-info/", FaultKind::Drop, 1);
    mock.fail("PUT", "/lfs/", FaultKind::Drop, 1);
    let s = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet()).unwrap();
    assert_eq!(s.traffic.retries, 2);
    let mut hub = mock.files("me/x", "main");
    hub.remove(".gitattributes");
    hub.remove("README.md");
    assert_eq!(hub, dir_files(&dir));

    // A connection that always drops: a bounded number of attempts, then a clear error.
    let mock = Mock::basic();
    mock.fail("POST", "/api/repos/create", FaultKind::Drop, 100);
    let started = Instant::now();
    let e = upload(&lib_opts(&mock, &dir, "me/y"), &Ui::quiet()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("creating the repository") && msg.contains("4 attempts"),
        "{msg}"
    );
    assert!(!msg.contains(TOKEN));
    assert_eq!(mock.requests().len(), 4);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Nothing listening at all.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut opts = lib_opts(&mock, &dir, "me/z");
    opts.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let e = upload(&opts, &Ui::quiet()).unwrap_err();
    assert!(e.to_string().contains("failed after 4 attempts"), "{e}");
}

#[test]
fn multipart_uploads_reassemble_exactly() {
    let root = tempfile::tempdir().unwrap();
    let dir = packed_model(root.path());
    let mock = Mock::start(Config {
        token: TOKEN.into(),
        transfer: "basic",
        multipart_chunk: Some(3000),
        echo_auth: false,
    });
    mock.fail("PUT", "/lfs-part/", FaultKind::Status(500), 1);
    let s = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet()).unwrap();
    assert_eq!(s.large_file_transfer.as_deref(), Some("multipart"));
    let mut hub = mock.files("me/x", "main");
    hub.remove(".gitattributes");
    hub.remove("README.md");
    assert_eq!(hub, dir_files(&dir));
    let r = routes(&mock.requests());
    assert!(
        r.iter().filter(|k| *k == "PUT lfs-part").count() > 3,
        "{r:?}"
    );
    assert!(r.iter().any(|k| k == "POST lfs-complete"));
}

#[test]
fn create_pr_leaves_the_branch_alone() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    let o = upload_cli(
        &mock,
        &dir,
        "me/x",
        &["--create-pr", "--commit-message", "Add the model"],
        home.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("pull request: "), "{out}");
    eprintln!("{out}");
    assert_eq!(mock.files("me/x", "main").len(), 1); // .gitattributes only
    let mut pr = mock.pr_files("me/x", 0);
    pr.remove(".gitattributes");
    pr.remove("README.md");
    assert_eq!(pr, dir_files(&dir));
    let commit = mock
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/commit/"))
        .unwrap();
    assert!(commit.path.ends_with("?create_pr=1"));
    let header: serde_json::Value =
        serde_json::from_slice(commit.body.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(header["value"]["summary"], "Add the model");
}

#[test]
fn existing_readme_is_uploaded_as_is() {
    let root = tempfile::tempdir().unwrap();
    let dir = packed_model(root.path());
    std::fs::write(dir.join("README.md"), "# my own card\n").unwrap();
    let mock = Mock::basic();
    let s = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet()).unwrap();
    assert!(s.generated_readme.is_none());
    assert_eq!(mock.files("me/x", "main")["README.md"], b"# my own card\n");
}

#[test]
fn xet_is_handed_to_hf_hub() {
    // When the Hub picks Xet, the commit goes through hf-hub, which asks for a Xet write token.
    // The mock has no Xet storage and refuses: the error is clean and carries no token.
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let mock = Mock::start(Config {
        token: TOKEN.into(),
        transfer: "xet",
        multipart_chunk: None,
        echo_auth: false,
    });
    let o = upload_cli(&mock, &dir, "me/x", &[], home.path());
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let err = text(&o).1;
    assert!(
        err.contains("Xet upload through hf-hub") && err.contains("403"),
        "{err}"
    );
    let r = routes(&mock.requests());
    assert!(r.contains(&"GET xet-token".to_string()), "{r:?}");
    assert_eq!(mock.commits(), 0);
    // With --no-xet the Hub is offered Git LFS only, and the upload goes through.
    let o = upload_cli(&mock, &dir, "me/x", &["--no-xet"], home.path());
    // (the mock picks "xet" only when offered; without it, basic)
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(mock.commits(), 1);
}

#[test]
fn model_card_is_deterministic_and_describes_the_model() {
    let root = tempfile::tempdir().unwrap();
    let dir = packed_model(root.path());
    let a = l3kit::hub::card::model_card(&dir, "me/tiny-l3").unwrap();
    let b = l3kit::hub::card::model_card(&dir, "me/tiny-l3").unwrap();
    assert_eq!(a, b);
    assert!(a.starts_with("---\nlibrary_name: l3kit\n"), "{a}");
    for needle in [
        "- l3\n",
        "- large-lookup-layers\n",
        "# tiny-l3",
        "| table dtype | bf16 |",
        "l3kit-packed version 1",
        "## L3 layers",
        "## Allocation",
        "from safetensors import safe_open",
        "l3kit inspect --check tiny-l3",
    ] {
        assert!(a.contains(needle), "missing {needle:?} in\n{a}");
    }
    assert!(!a.contains("license:"));
    eprintln!("{a}");
}

#[test]
fn verify_with_runs_first_and_a_mismatch_sends_nothing() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let s =
        l3kit::synth::small(&root.path().join("src"), Dialect::Paper, TableDtype::Bf16).unwrap();
    let dir = root.path().join("packed");
    let mut o = PackOptions::new(s.checkpoint.clone(), dir.clone());
    o.allocation = Some(s.allocation.clone());
    pack(&o, &Ui::quiet()).unwrap();
    // Another source with the same shapes and allocation but other weights.
    let other = l3kit::synth::synthesize(&l3kit::synth::SynthOptions {
        dialect: Dialect::Paper,
        vocab: 64,
        n_emb: 200,
        k_max: 16,
        d_in: 16,
        d_emb: 8,
        d_up: 32,
        layers: vec![1, 3],
        dtype: TableDtype::Bf16,
        seed: 8,
        out: root.path().join("other"),
        decoder: None,
    })
    .unwrap();
    let mock = Mock::basic();
    let alloc = s.allocation.to_str().unwrap();
    let wrong = other.checkpoint.to_str().unwrap();
    let o = upload_cli(
        &mock,
        &dir,
        "me/x",
        &["--verify-with", wrong, "--allocation", alloc],
        home.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("`verify`"), "{:?}", text(&o));
    assert!(mock.requests().is_empty());

    let right = s.checkpoint.to_str().unwrap();
    let o = upload_cli(
        &mock,
        &dir,
        "me/x",
        &["--verify-with", right, "--allocation", alloc, "--json"],
        home.path(),
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let summary: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(summary["verified_against"], right);
    assert_eq!(mock.commits(), 1);
}

#[test]
fn bundled_demo_model_first_and_repeated_upload() {
    // The model `l3kit demo` packs: fixtures/trained as int8 with the allocation it was
    // trained with. The figures printed here are the ones quoted in docs/upload.md.
    let root = tempfile::tempdir().unwrap();
    let trained = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/trained");
    let dir = root.path().join("trained-packed-int8");
    let mut o = PackOptions::new(trained.clone(), dir.clone());
    o.allocation = Some(trained.join("allocation.safetensors"));
    o.dtype = Some(TableDtype::Int8);
    pack(&o, &Ui::quiet()).unwrap();
    let mock = Mock::basic();
    let first = upload(&lib_opts(&mock, &dir, "me/l3-demo"), &Ui::quiet()).unwrap();
    let reqs = mock.requests();
    let mut hub = mock.files("me/l3-demo", "main");
    hub.remove(".gitattributes");
    hub.remove("README.md");
    assert_eq!(hub, dir_files(&dir));
    assert_eq!(first.traffic.requests as usize, reqs.len());
    eprintln!(
        "demo model, first upload: {} files, {} bytes; {} requests ({:?}), {} request-body bytes",
        first.files.len(),
        first.total_bytes,
        reqs.len(),
        routes(&reqs),
        body_bytes(&reqs)
    );
    mock.clear_requests();
    let second = upload(&lib_opts(&mock, &dir, "me/l3-demo"), &Ui::quiet()).unwrap();
    let reqs = mock.requests();
    assert!(second.nothing_changed);
    assert_eq!(routes(&reqs), ["POST create", "POST paths-info"]);
    eprintln!(
        "demo model, repeated upload: {} requests, {} request-body bytes, nothing changed",
        reqs.len(),
        body_bytes(&reqs)
    );
    eprintln!("{}", first.generated_readme.unwrap());
}

// ---------------------------------------------------------------------------------------------
// A hostile server: the token echoed back everywhere, in its common encodings.

/// A token with characters that URL-encoding and base64 alignment change.
const ECHO_TOKEN: &str = "hf_echo+SECRET/tok=en0123456789abcdefXYZ";

fn pct(t: &str, upper: bool) -> String {
    t.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn b64url(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes())
}

/// The token as an echoing server may return it: as is, in an `Authorization: Bearer` echo,
/// URL-encoded, in hex, and base64 of it, of the header and of a Basic credential.
fn echo_of(t: &str) -> String {
    let hex: String = t.bytes().map(|b| format!("{b:02x}")).collect();
    format!(
        "got {t} | Authorization: Bearer {t} | {} | {} | {hex} | {} | {} | {}",
        pct(t, true),
        pct(t, false),
        b64(t),
        b64(&format!("Bearer {t}")),
        b64url(&format!("user:{t}"))
    )
}

/// Fail if `text` holds any run of 16 characters of any encoding of `t`, or a terminal escape.
#[track_caller]
fn assert_no_leak(text: &str, t: &str, context: &str) {
    let hex: String = t.bytes().map(|b| format!("{b:02x}")).collect();
    let forms = [
        t.to_string(),
        pct(t, true),
        pct(t, false),
        hex.clone(),
        hex.to_uppercase(),
        b64(t),
        b64url(t),
        b64(&format!("Bearer {t}")),
        b64url(&format!("user:{t}")),
    ];
    for form in &forms {
        for w in form.as_bytes().windows(16) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(
                !text.contains(w),
                "{context}: the token leaked ({w:?} of {form:?}):\n{text}"
            );
        }
    }
    assert!(
        !text.contains('\x1b'),
        "{context}: a terminal escape from the server reached the output:\n{text:?}"
    );
}

/// `l3kit upload` with a given token, no retries, in a clean Hugging Face environment.
fn upload_with(mock: &Mock, dir: &Path, extra: &[&str], home: &Path, token: &str) -> Output {
    let url = mock.url();
    let mut args = vec![
        "upload",
        dir.to_str().unwrap(),
        "--repo",
        "me/echo",
        "--endpoint",
        url.as_str(),
        "--retries",
        "0",
    ];
    args.extend_from_slice(extra);
    l3kit(&args, Some(token), home)
}

fn json_body(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.2).unwrap()
}

fn with_json(a: Answer, f: impl FnOnce(&mut serde_json::Value)) -> Answer {
    let mut v = json_body(&a);
    f(&mut v);
    (a.0, a.1, v.to_string().into_bytes())
}

type Setup = fn(&Mock, String);

struct EchoCase {
    name: &'static str,
    /// The mock's transfer and multipart chunk.
    transfer: &'static str,
    multipart: Option<usize>,
    extra: &'static [&'static str],
    setup: Setup,
    /// The upload succeeds despite the echo.
    ok: bool,
    /// The echoed field reaches the output (so `[token]` must be there).
    shown: bool,
}

fn echo_cases() -> Vec<EchoCase> {
    fn case(name: &'static str, setup: Setup) -> EchoCase {
        EchoCase {
            name,
            transfer: "basic",
            multipart: None,
            extra: &[],
            setup,
            ok: false,
            shown: true,
        }
    }
    vec![
        case("create: error header and body", |m, e| {
            m.rewrite("POST", "/repos/create", 100, move |_| {
                (
                    400,
                    vec![("X-Error-Message", e.clone())],
                    serde_json::json!({ "error": e }).to_string().into_bytes(),
                )
            })
        }),
        case("create: an HTML error page with escapes", |m, e| {
            m.rewrite("POST", "/repos/create", 100, move |_| {
                (
                    400,
                    vec![],
                    format!("<html>\x1b[2J{e}\x1b]0;owned\x07</html>").into_bytes(),
                )
            })
        }),
        case("create: an error body past the limit", |m, e| {
            m.rewrite("POST", "/repos/create", 100, move |_| {
                let mut b = format!("{{\"error\": \"{e}").into_bytes();
                b.extend(std::iter::repeat_n(b'x', 40 << 10));
                (500, vec![], b)
            })
        }),
        case("paths-info: a 200 that is not JSON", |m, e| {
            m.rewrite("POST", "/paths-info/", 100, move |_| {
                (200, vec![], format!("<html>{e}</html>").into_bytes())
            })
        }),
        case("paths-info: a field of the wrong type", |m, e| {
            m.rewrite("POST", "/paths-info/", 100, move |_| {
                let v = serde_json::json!([{ "type": "file", "path": "config.json", "size": e }]);
                (200, vec![], v.to_string().into_bytes())
            })
        }),
        case("paths-info: a JSON-escaped echo", |m, e| {
            m.rewrite("POST", "/paths-info/", 100, move |_| {
                let escaped: String = e.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
                (
                    200,
                    vec![],
                    format!("{{\"oops\": \"{escaped}\"}}").into_bytes(),
                )
            })
        }),
        case("preupload: an unknown upload mode", |m, e| {
            m.rewrite("POST", "/preupload/", 100, move |a| {
                with_json(a, |v| {
                    for f in v["files"].as_array_mut().unwrap() {
                        f["uploadMode"] = e.clone().into();
                    }
                })
            })
        }),
        case("preupload: a 200 that is not JSON", |m, e| {
            m.rewrite("POST", "/preupload/", 100, move |_| {
                (200, vec![], e.clone().into_bytes())
            })
        }),
        case("LFS batch: the transfer name", |m, e| {
            m.rewrite("POST", "/objects/batch", 100, move |a| {
                with_json(a, |v| v["transfer"] = e.clone().into())
            })
        }),
        case("LFS batch: an oid l3kit did not ask about", |m, e| {
            m.rewrite("POST", "/objects/batch", 100, move |a| {
                with_json(a, |v| {
                    let o = serde_json::json!({ "oid": e, "size": 1 });
                    v["objects"].as_array_mut().unwrap().push(o);
                })
            })
        }),
        case("LFS batch: an object's error", |m, e| {
            m.rewrite("POST", "/objects/batch", 100, move |a| {
                with_json(a, |v| {
                    v["objects"][0]["error"] = serde_json::json!({ "code": 422, "message": e });
                })
            })
        }),
        case("LFS batch: the multipart chunk_size", |m, e| {
            m.rewrite("POST", "/objects/batch", 100, move |a| {
                with_json(a, |v| {
                    for o in v["objects"].as_array_mut().unwrap() {
                        o["actions"]["upload"]["header"] =
                            serde_json::json!({ "chunk_size": e, "00001": "http://127.0.0.1:1/x" });
                    }
                })
            })
        }),
        case("LFS batch: a storage URL holding the token", |m, e| {
            let _ = e;
            m.rewrite("POST", "/objects/batch", 100, move |a| {
                with_json(a, |v| {
                    for o in v["objects"].as_array_mut().unwrap() {
                        o["actions"]["upload"]["href"] =
                            format!("http://127.0.0.1:1/{}/{ECHO_TOKEN}", pct(ECHO_TOKEN, true))
                                .into();
                    }
                })
            })
        }),
        case("storage PUT: an error body", |m, e| {
            m.rewrite("PUT", "/lfs/", 100, move |_| {
                (
                    403,
                    vec![],
                    format!("<Error><Message>{e}</Message></Error>").into_bytes(),
                )
            })
        }),
        case("verify: an error header", |m, e| {
            m.rewrite("POST", "/lfs-verify/", 100, move |_| {
                (400, vec![("X-Error-Message", e.clone())], vec![])
            })
        }),
        EchoCase {
            multipart: Some(3000),
            ..case("multipart completion: an error body", |m, e| {
                m.rewrite("POST", "/lfs-complete/", 100, move |_| {
                    (
                        400,
                        vec![],
                        serde_json::json!({ "message": e }).to_string().into_bytes(),
                    )
                })
            })
        },
        case("commit: a 200 that is not JSON", |m, e| {
            m.rewrite("POST", "/commit/", 100, move |_| {
                (200, vec![], e.clone().into_bytes())
            })
        }),
        case("commit: an error", |m, e| {
            m.rewrite("POST", "/commit/", 100, move |_| {
                (
                    422,
                    vec![],
                    serde_json::json!({ "error": e }).to_string().into_bytes(),
                )
            })
        }),
        EchoCase {
            ok: true,
            extra: &["--create-pr"],
            ..case("commit: commitOid, commitUrl and pullRequestUrl", |m, e| {
                m.rewrite("POST", "/commit/", 100, move |a| {
                    with_json(a, |v| {
                        v["commitOid"] = e.clone().into();
                        v["commitUrl"] = format!("http://hub/c/{e}").into();
                        v["pullRequestUrl"] = format!("http://hub/pr/{e}").into();
                    })
                })
            })
        },
        EchoCase {
            ok: true,
            ..case(
                "success: echoes in every header and in unused fields",
                |m, e| {
                    for method in ["POST", "PUT"] {
                        let e = e.clone();
                        m.rewrite(method, "", 1000, move |(status, mut headers, body)| {
                            for h in ["X-Error-Message", "X-Echo", "ETag-Echo", "Server"] {
                                headers.push((h, e.clone()));
                            }
                            let body = match serde_json::from_slice::<serde_json::Value>(&body) {
                                Ok(serde_json::Value::Object(mut o)) => {
                                    o.insert("echo".into(), e.clone().into());
                                    if o.contains_key("commitOid") {
                                        o.insert("commitOid".into(), e.clone().into());
                                        o.insert("commitUrl".into(), e.clone().into());
                                    }
                                    serde_json::Value::Object(o).to_string().into_bytes()
                                }
                                _ => body,
                            };
                            (status, headers, body)
                        })
                    }
                },
            )
        },
        EchoCase {
            transfer: "xet",
            ..case("Xet: hf-hub quotes the refusal", |m, e| {
                m.rewrite("GET", "xet-write-token", 100, move |_| {
                    (
                        403,
                        vec![("X-Error-Message", e.clone())],
                        serde_json::json!({ "error": e }).to_string().into_bytes(),
                    )
                })
            })
        },
    ]
}

#[test]
fn a_server_echoing_the_token_everywhere_never_gets_it_printed() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let echo = echo_of(ECHO_TOKEN);
    for c in echo_cases() {
        let start = |c: &EchoCase| {
            let m = Mock::start(Config {
                token: ECHO_TOKEN.into(),
                transfer: c.transfer,
                multipart_chunk: c.multipart,
                echo_auth: true,
            });
            (c.setup)(&m, echo.clone());
            m
        };
        // The CLI, human and --json.
        for json in [false, true] {
            let mock = start(&c);
            let mut extra = c.extra.to_vec();
            if json {
                extra.push("--json");
            }
            let o = upload_with(&mock, &dir, &extra, home.path(), ECHO_TOKEN);
            let (out, err) = text(&o);
            let all = format!("{out}\n{err}");
            let what = format!("{} (json: {json})", c.name);
            assert_eq!(
                o.status.code(),
                Some(if c.ok { 0 } else { 2 }),
                "{what}:\n{all}"
            );
            assert_refused_or_ok(&o);
            assert_no_leak(&all, ECHO_TOKEN, &what);
            if c.shown {
                assert!(all.contains("[token]"), "{what}: nothing was shown:\n{all}");
            }
            if json && c.ok {
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                let fields: &[&str] = if c.extra.contains(&"--create-pr") {
                    &["oid", "url", "pull_request_url"]
                } else {
                    &["oid", "url"]
                };
                for f in fields {
                    let s = v["commit"][f].as_str().unwrap();
                    assert!(s.contains("[token]"), "{what}: commit.{f} = {s}");
                }
            }
        }
        // The library: its summary (serialised, Debug, rendered) and its error value carry no
        // token either, without the CLI's last pass.
        let mock = start(&c);
        let mut opts = lib_opts(&mock, &dir, "me/echo");
        opts.token = Token::new(ECHO_TOKEN);
        opts.create_pr = c.extra.contains(&"--create-pr");
        opts.retry.max_retries = 0;
        let shown = match upload(&opts, &Ui::quiet()) {
            Ok(s) => {
                assert!(c.ok, "{}: the library upload succeeded", c.name);
                format!(
                    "{}\n{s:?}\n{}",
                    serde_json::to_string(&s).unwrap(),
                    s.render()
                )
            }
            Err(e) => {
                assert!(!c.ok, "{}: {e}", c.name);
                assert_eq!(e.exit_code(), 2, "{}: {e}", c.name);
                format!("{e}\n{e:?}")
            }
        };
        assert_no_leak(&shown, ECHO_TOKEN, &format!("{} (library)", c.name));
        if c.shown {
            assert!(shown.contains("[token]"), "{}: {shown}", c.name);
        }
    }
}

/// No crash text, whatever the exit code.
#[track_caller]
fn assert_refused_or_ok(o: &Output) {
    let err = text(o).1;
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!err.contains(bad), "{err}");
    }
}

#[test]
fn errors_name_the_step_the_request_and_what_to_do() {
    let root = tempfile::tempdir().unwrap();
    let dir = packed_model(root.path());
    let mock = Mock::basic();
    mock.rewrite("POST", "/paths-info/", 1, |_| {
        (200, vec![], b"<html>hi</html>".to_vec())
    });
    let e = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("reading the repository's files")
            && e.contains("POST http://")
            && e.contains("/paths-info/main")
            && e.contains("--endpoint"),
        "{e}"
    );
    let mock = Mock::basic();
    mock.rewrite("POST", "/objects/batch", 1, |a| {
        with_json(a, |v| v["transfer"] = "carrier-pigeon".into())
    });
    let e = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("LFS batch")
            && e.contains("carrier-pigeon")
            && e.contains("basic, multipart, xet")
            && e.contains("--no-xet"),
        "{e}"
    );
    // A commit whose answer is garbled may still have happened: say how to make sure.
    let mock = Mock::basic();
    mock.rewrite("POST", "/commit/", 1, |a| (a.0, a.1, b"ok".to_vec()));
    let e = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("committing") && e.contains("running the upload again"),
        "{e}"
    );
    assert!(
        upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet())
            .unwrap()
            .nothing_changed
    );
}

// ---------------------------------------------------------------------------------------------
// Replies are read only up to a limit.

#[test]
fn a_huge_reply_is_refused_within_a_small_memory_budget() {
    // 3 GiB streamed to the repository creation: l3kit reads 16 MiB and stops, under an
    // address-space limit far below the body.
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    for chunked in [false, true] {
        let mock = Mock::basic();
        mock.fail(
            "POST",
            "/repos/create",
            FaultKind::Huge {
                status: 200,
                len: 3 << 30,
                chunked,
            },
            1,
        );
        let url = mock.url();
        let h = home.path().to_str().unwrap();
        let o = common::run_limited(
            [
                "upload",
                dir.to_str().unwrap(),
                "--repo",
                "me/x",
                "--endpoint",
                &url,
                "--retries",
                "0",
            ],
            &[
                ("HF_TOKEN", TOKEN),
                ("HF_TOKEN_PATH", ""),
                ("HF_ENDPOINT", ""),
                ("HF_HOME", h),
                ("HOME", h),
            ],
            &common::Limits::default(),
        );
        common::assert_refused(
            &o,
            2,
            &[
                "creating the repository",
                "16.00 MiB",
                "JSON API replies",
                "--endpoint",
            ],
        );
        assert_no_token(&o);
        assert_eq!(mock.commits(), 0);
    }
}

#[test]
fn every_kind_of_reply_has_its_limit() {
    let root = tempfile::tempdir().unwrap();
    let dir = packed_model(root.path());
    let limit = l3kit::hub::MAX_JSON_REPLY_BYTES;
    // A JSON reply of exactly the limit is read; one byte more is refused.
    let pad = |n: u64| {
        move |a: Answer| {
            let mut b = a.2;
            b.resize(n as usize, b' ');
            (a.0, a.1, b)
        }
    };
    let mock = Mock::basic();
    mock.rewrite("POST", "/paths-info/", 1, pad(limit));
    upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet()).unwrap();
    let mock = Mock::basic();
    mock.rewrite("POST", "/paths-info/", 1, pad(limit + 1));
    let e = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("reading the repository's files") && e.contains("16.00 MiB"),
        "{e}"
    );
    assert_eq!(mock.commits(), 0);

    // The LFS batch and the commit, streamed chunked.
    for (method, path) in [("POST", "/objects/batch"), ("POST", "/commit/")] {
        let mock = Mock::basic();
        mock.fail(
            method,
            path,
            FaultKind::Huge {
                status: 200,
                len: 64 << 20,
                chunked: true,
            },
            1,
        );
        let e = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("JSON API replies"), "{path}: {e}");
    }

    // A storage PUT's answer: only its status matters, 64 KiB at most.
    let mock = Mock::basic();
    mock.rewrite("PUT", "/lfs/", 1, |a| (a.0, a.1, vec![b'x'; 65 << 10]));
    let e = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("uploading model-") && e.contains("64.00 KiB") && e.contains("storage replies"),
        "{e}"
    );
    let mock = Mock::basic();
    mock.rewrite("PUT", "/lfs/", 100, |a| (a.0, a.1, vec![b'x'; 64 << 10]));
    upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet()).unwrap();

    // An error reply: 16 KiB are read and the start quoted; the message says it was cut.
    let mock = Mock::basic();
    mock.fail(
        "POST",
        "/preupload/",
        FaultKind::Huge {
            status: 400,
            len: 1 << 30,
            chunked: false,
        },
        1,
    );
    let started = Instant::now();
    let e = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("asking the Hub how to send each file")
            && e.contains("400")
            && e.contains("longer than the 16.00 KiB"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // A transient status with an endless body is still retried, reading a little each time.
    let mock = Mock::basic();
    mock.fail(
        "POST",
        "/preupload/",
        FaultKind::Huge {
            status: 503,
            len: 1 << 30,
            chunked: true,
        },
        2,
    );
    let s = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet()).unwrap();
    assert_eq!(s.traffic.retries, 2);
}

// ---------------------------------------------------------------------------------------------
// What is sent from the folder: the index's files and the side files, nothing else.

fn skipped(summary: &serde_json::Value) -> BTreeMap<String, String> {
    summary["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["path"].as_str().unwrap().to_string(),
                k["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn only_the_index_files_and_the_side_files_are_sent() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let model_files = dir_files(&dir);
    // Side files that go along.
    std::fs::write(dir.join("LICENSE"), "MIT\n").unwrap();
    std::fs::write(dir.join("meta_000100.json"), "{\"model_config\": {}}\n").unwrap();
    std::fs::write(
        dir.join(".gitattributes"),
        "*.safetensors filter=lfs -text\n",
    )
    .unwrap();
    std::fs::write(dir.join("allocation.safetensors"), b"not checked by upload").unwrap();
    // A link inside the folder to a file inside it is fine.
    std::fs::create_dir(dir.join("extra")).unwrap();
    std::fs::write(dir.join("extra/tok.json"), "{\"tok\": 1}").unwrap();
    std::os::unix::fs::symlink("extra/tok.json", dir.join("vocab.json")).unwrap();
    // What must stay home.
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd.txt")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
    std::fs::write(dir.join("notes.txt"), "my notes").unwrap();
    std::fs::write(dir.join(".env"), format!("HF_TOKEN={TOKEN}\n")).unwrap();
    std::fs::create_dir(dir.join("logs")).unwrap();
    std::fs::write(dir.join("logs/train.log"), "loss 1.0").unwrap();
    common::mkfifo(&dir.join("pipe"));
    std::fs::write(dir.join("readme.md"), "lower-case name").unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(dir.join(odd), "latin-1 name").unwrap();
    std::fs::write(dir.join("evil\x1b[2J.txt"), "a name with a terminal escape").unwrap();
    let before = common::snapshot(&dir);

    let mock = Mock::basic();
    // The dry run lists the same split.
    let o = upload_cli(&mock, &dir, "me/x", &["--dry-run", "--json"], home.path());
    assert!(o.status.success(), "{:?}", text(&o));
    let plan: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    let o = upload_cli(&mock, &dir, "me/x", &["--json"], home.path());
    assert!(o.status.success(), "{:?}", text(&o));
    let summary: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(
        plan["files"].as_array().unwrap().len(),
        summary["files"].as_array().unwrap().len()
    );
    assert_eq!(skipped(&plan), skipped(&summary));

    let mut hub = mock.files("me/x", "main");
    hub.remove("README.md");
    let mut want = model_files.clone();
    want.insert("LICENSE".into(), b"MIT\n".to_vec());
    want.insert(
        "meta_000100.json".into(),
        b"{\"model_config\": {}}\n".to_vec(),
    );
    want.insert(
        ".gitattributes".into(),
        b"*.safetensors filter=lfs -text\n".to_vec(),
    );
    want.insert(
        "allocation.safetensors".into(),
        b"not checked by upload".to_vec(),
    );
    want.insert("vocab.json".into(), b"{\"tok\": 1}".to_vec());
    assert_eq!(
        hub.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert_eq!(hub, want);

    let sk = skipped(&summary);
    let reason = |p: &str| {
        sk.get(p)
            .unwrap_or_else(|| panic!("{p} not listed as skipped: {sk:?}"))
    };
    assert!(reason("passwd.txt").contains("symbolic link"));
    assert!(reason("etc").contains("symbolic link"));
    assert!(reason("notes.txt").contains("not listed by model.safetensors.index.json"));
    assert!(reason(".env").contains("hidden"));
    assert!(reason("logs").contains("folder"));
    assert!(reason("extra").contains("folder"));
    assert!(reason("pipe").contains("FIFO"));
    assert!(reason("readme.md").contains("not listed"));
    assert!(reason("caf\u{fffd}.txt").contains("not UTF-8"));
    assert!(reason("evil\x1b[2J.txt").contains("not listed"));
    assert_eq!(sk.len(), 10, "{sk:?}");
    // The human report says so too.
    mock.clear_requests();
    let o = upload_cli(&mock, &dir, "me/y", &[], home.path());
    let out = text(&o).0;
    assert!(o.status.success(), "{out}");
    assert!(out.contains("not sent (10;"), "{out}");
    assert!(
        out.contains("evil?[2J.txt") && !out.contains('\x1b'),
        "{out:?}"
    );
    assert!(out.contains("passwd.txt  (a symbolic link"), "{out}");
    assert!(out.contains("pipe  (a FIFO"), "{out}");
    // The folder is as it was.
    assert_eq!(common::snapshot(&dir), before);
}

#[test]
fn a_file_to_send_that_leads_out_of_the_folder_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let outside = root.path().join("outside.json");
    std::fs::write(&outside, "{\"secret\": true}").unwrap();
    let shard = "model-00002-of-00003.safetensors";
    // (the file named in the error, make the link, undo it)
    type Case = (&'static str, Box<dyn Fn()>, Box<dyn Fn()>);
    let mut cases: Vec<Case> = Vec::new();
    // A side file linked to a system file, to a file beside the folder, to a device.
    for (name, target) in [
        ("tokenizer.json", PathBuf::from("/etc/passwd")),
        ("README.md", PathBuf::from("../outside.json")),
        ("merges.txt", PathBuf::from("/dev/zero")),
    ] {
        let link = dir.join(name);
        let l2 = link.clone();
        cases.push((
            name,
            Box::new(move || std::os::unix::fs::symlink(&target, &link).unwrap()),
            Box::new(move || std::fs::remove_file(&l2).unwrap()),
        ));
    }
    // A shard the index lists, replaced by a link to an identical copy outside: the check
    // (which follows links) passes, but the bytes would come from outside the folder.
    {
        let (d1, d2) = (dir.clone(), dir.clone());
        let copy = root.path().join("copy.safetensors");
        cases.push((
            shard,
            Box::new(move || {
                std::fs::rename(d1.join(shard), &copy).unwrap();
                std::os::unix::fs::symlink(&copy, d1.join(shard)).unwrap();
            }),
            Box::new(move || {
                let copy = d2.parent().unwrap().join("copy.safetensors");
                std::fs::remove_file(d2.join(shard)).unwrap();
                std::fs::rename(&copy, d2.join(shard)).unwrap();
            }),
        ));
    }
    let mock = Mock::basic();
    for (name, make, undo) in &cases {
        make();
        for dry in [true, false] {
            let extra: &[&str] = if dry { &["--dry-run"] } else { &[] };
            let o = upload_cli(&mock, &dir, "me/x", extra, home.path());
            common::assert_refused(&o, 2, &[name, "outside the folder", "remove the link"]);
        }
        undo();
    }
    assert!(mock.requests().is_empty());
    // Put back, the folder uploads.
    let o = upload_cli(&mock, &dir, "me/x", &[], home.path());
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn a_fifo_among_the_files_to_send_is_an_error_not_a_hang() {
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let h = home.path().to_str().unwrap();
    let mock = Mock::basic();
    let url = mock.url();
    for name in ["README.md", "LICENSE", "meta_000001.json"] {
        let p = dir.join(name);
        common::mkfifo(&p);
        for dry in [true, false] {
            let mut args = vec![
                "upload",
                dir.to_str().unwrap(),
                "--repo",
                "me/x",
                "--endpoint",
                &url,
            ];
            if dry {
                args.push("--dry-run");
            }
            let o = common::run_limited(
                &args,
                &[("HF_TOKEN", TOKEN), ("HF_TOKEN_PATH", ""), ("HF_HOME", h)],
                &common::Limits {
                    time: Duration::from_secs(30),
                    ..Default::default()
                },
            );
            common::assert_refused(&o, 2, &[name, "FIFO"]);
        }
        std::fs::remove_file(&p).unwrap();
    }
    assert!(mock.requests().is_empty());
}

#[test]
fn an_index_naming_a_file_outside_the_folder_is_refused() {
    // Upload takes its list from the index: a key that climbs out must not be followed.
    let root = tempfile::tempdir().unwrap();
    let home = isolated_home();
    let dir = packed_model(root.path());
    let outside = root.path().join("secret.txt");
    std::fs::write(&outside, "secret").unwrap();
    let index_path = dir.join("model.safetensors.index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let sha = sha256_hex(b"secret");
    for key in ["../secret.txt", outside.to_str().unwrap()] {
        let mut i = index.clone();
        i["metadata"]["sha256"][key] = sha.clone().into();
        std::fs::write(&index_path, serde_json::to_vec_pretty(&i).unwrap()).unwrap();
        let mock = Mock::basic();
        let o = upload_cli(&mock, &dir, "me/x", &["--dry-run"], home.path());
        assert_ne!(o.status.code(), Some(0), "{key}: {:?}", text(&o));
        let err = text(&o).1;
        assert!(
            err.contains("model.safetensors.index.json") && err.contains(key),
            "{key}: {err}"
        );
        assert!(!text(&o).0.contains("secret.txt"));
        assert!(mock.requests().is_empty());
    }
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

#[test]
fn a_file_swapped_for_a_link_during_the_upload_is_noticed() {
    // While the Hub is asked how to send each file, README.md is replaced by a link to a file
    // outside the folder with the same size and modification time. The bytes sent are the
    // original ones (read through the handle opened when the files were listed), and the
    // commit is refused because another file took README.md's place.
    let root = tempfile::tempdir().unwrap();
    let dir = packed_model(root.path());
    let readme = dir.join("README.md");
    std::fs::write(&readme, "# my card, 24 bytes long\n").unwrap();
    let outside = root.path().join("stolen.md");
    let len = std::fs::metadata(&readme).unwrap().len();
    std::fs::write(&outside, vec![b's'; len as usize]).unwrap();
    let mtime = std::fs::metadata(&readme).unwrap().modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&outside)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let mock = Mock::basic();
    let (r, o) = (readme.clone(), outside.clone());
    mock.rewrite("POST", "/preupload/", 1, move |a| {
        std::fs::remove_file(&r).unwrap();
        std::os::unix::fs::symlink(&o, &r).unwrap();
        a
    });
    let e = upload(&lib_opts(&mock, &dir, "me/x"), &Ui::quiet()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("README.md") && msg.contains("changed during the upload"),
        "{msg}"
    );
    assert_eq!(mock.commits(), 0);
    for r in mock.requests() {
        let b64 = b"c3Nzc3Nz"; // base64 of "ssssss", as inline files travel
        assert!(
            !r.body.windows(8).any(|w| w == b"ssssssss" || w == b64),
            "the outside file's bytes were sent to {}",
            r.path
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The token file is read with a limit, and never waited on.

#[test]
fn a_token_file_that_is_not_a_small_regular_file_is_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = packed_model(root.path());
    let home = isolated_home();
    let h = home.path().to_str().unwrap();
    let mock = Mock::basic();
    let url = mock.url();
    let fifo = root.path().join("token.fifo");
    common::mkfifo(&fifo);
    let big = root.path().join("big-token");
    std::fs::write(&big, vec![b'a'; 100 << 10]).unwrap();
    let spaced = root.path().join("spaced-token");
    std::fs::write(&spaced, format!("{TOKEN} second-word\n")).unwrap();
    let folder = root.path().join("token-folder");
    std::fs::create_dir(&folder).unwrap();
    let hf_home = root.path().join("hf-home");
    std::fs::create_dir(&hf_home).unwrap();
    common::mkfifo(&hf_home.join("token"));
    // (the environment, what the message must say)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            vec![("HF_TOKEN_PATH", fifo.display().to_string())],
            vec![
                fifo.display().to_string(),
                "FIFO".into(),
                "HF_TOKEN_PATH".into(),
            ],
        ),
        (
            vec![("HF_TOKEN_PATH", "/dev/zero".into())],
            vec!["/dev/zero".into(), "character device".into()],
        ),
        (
            vec![("HF_TOKEN_PATH", big.display().to_string())],
            vec![big.display().to_string(), "65536-byte limit".into()],
        ),
        (
            vec![("HF_TOKEN_PATH", spaced.display().to_string())],
            vec![spaced.display().to_string(), "one word".into()],
        ),
        (
            vec![("HF_TOKEN_PATH", folder.display().to_string())],
            vec![folder.display().to_string(), "directory".into()],
        ),
        (
            vec![
                ("HF_TOKEN_PATH", String::new()),
                ("HF_HOME", hf_home.display().to_string()),
            ],
            vec![
                hf_home.join("token").display().to_string(),
                "FIFO".into(),
                "$HF_HOME/token".into(),
            ],
        ),
        (
            vec![("HF_TOKEN", format!("{TOKEN}\nX-Injected: 1"))],
            vec!["HF_TOKEN".into(), "one word".into()],
        ),
    ];
    for (vars, needles) in cases {
        for dry in [true, false] {
            let mut args = vec![
                "upload",
                dir.to_str().unwrap(),
                "--repo",
                "me/x",
                "--endpoint",
                &url,
            ];
            if dry {
                args.push("--dry-run");
            }
            let mut env: Vec<(&str, &str)> = vec![
                ("HF_TOKEN", ""),
                ("HF_HOME", h),
                ("HOME", h),
                ("HF_ENDPOINT", ""),
            ];
            for (k, v) in &vars {
                env.retain(|(e, _)| e != k);
                env.push((k, v.as_str()));
            }
            let o = common::run_limited(
                &args,
                &env,
                &common::Limits {
                    time: Duration::from_secs(30),
                    ..Default::default()
                },
            );
            let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
            common::assert_refused(&o, 2, &needles);
            assert_no_token(&o);
        }
    }
    assert!(mock.requests().is_empty());
    // A missing token file is no error: the dry run says none was found.
    let o = common::run_limited(
        [
            "upload",
            dir.to_str().unwrap(),
            "--repo",
            "me/x",
            "--dry-run",
            "--endpoint",
            &url,
        ],
        &[
            ("HF_TOKEN", ""),
            ("HF_TOKEN_PATH", root.path().join("nope").to_str().unwrap()),
            ("HOME", h),
        ],
        &common::Limits::default(),
    );
    assert!(common::assert_ok(&o).contains("token: none found"));
}
