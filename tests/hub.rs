//! `l3kit upload` against a mock Hugging Face Hub: a small HTTP/1.1 server on 127.0.0.1 (a free
//! port) that implements what the client calls — repository creation, paths-info, preupload,
//! the Git LFS batch API with basic and multipart transfers and verify, the NDJSON commit, and
//! the Xet write-token endpoint — records every request, and serves errors or dropped
//! connections on demand. Nothing leaves the machine; the server stops when the test ends (or
//! after 60 s at the latest), and the client's retries are bounded in count and time.

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
        Some(FaultKind::Status(code)) => (
            code,
            vec![],
            format!("{{\"error\":\"mock fault {code}\"}}").into_bytes(),
        ),
        None => route(&mut st, &req),
    };
    drop(st);
    respond(&mut conn, status, &headers, &body);
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
