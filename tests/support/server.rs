//! A hand-written HTTP/1.1 server on `127.0.0.1:0` for the Store tests: named resources,
//! and faults scripted per request and per path (status sequences, resets, short bodies,
//! stalls, wrong ranges, changed content, slow trickle).
//!
//! Every response carries `Connection: close`; each connection is served by its own task.
//! Dropping the [`TestServer`] stops the accept loop and every connection task.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` (the default).
    ContentLength,
    /// `Transfer-Encoding: chunked`, no length announced.
    Chunked,
    /// No length at all: the body ends when the server closes the connection.
    CloseDelimited,
}

/// Send the body in chunks of `chunk` bytes with `delay` between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trickle {
    /// Bytes per write.
    pub chunk: usize,
    /// Pause after each write.
    pub delay: Duration,
}

/// A file the server serves at one path.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Its content.
    pub body: Bytes,
    /// `ETag` header (quoted by the caller, e.g. `"\"v1\""`).
    pub etag: Option<String>,
    /// `Last-Modified` header (an HTTP date).
    pub last_modified: Option<String>,
    /// Whether `Accept-Ranges: bytes` is sent and `Range` requests are honoured.
    pub accept_ranges: bool,
    /// How the body is delimited, unless a step says otherwise.
    pub framing: Framing,
    /// Slow sending for every request, unless a step says otherwise.
    pub trickle: Option<Trickle>,
}

impl Resource {
    /// A resource with no validators, no range support, `Content-Length` framing.
    pub fn new(body: impl Into<Bytes>) -> Resource {
        Resource {
            body: body.into(),
            etag: None,
            last_modified: None,
            accept_ranges: false,
            framing: Framing::ContentLength,
            trickle: None,
        }
    }

    /// Sets the ETag; pass it without quotes, they are added.
    pub fn etag(mut self, tag: &str) -> Resource {
        self.etag = Some(format!("\"{tag}\""));
        self
    }

    /// Sets `Last-Modified`.
    pub fn last_modified(mut self, at: SystemTime) -> Resource {
        self.last_modified = Some(httpdate::fmt_http_date(at));
        self
    }

    /// Turns range support on or off.
    pub fn ranges(mut self, on: bool) -> Resource {
        self.accept_ranges = on;
        self
    }

    /// Sets the body framing.
    pub fn framing(mut self, framing: Framing) -> Resource {
        self.framing = framing;
        self
    }

    /// Sends every response slowly.
    pub fn trickle(mut self, chunk: usize, delay: Duration) -> Resource {
        self.trickle = Some(Trickle { chunk, delay });
        self
    }
}

/// How long a [`Cut::Reset`] waits after its last byte before resetting the connection.
pub const RESET_GRACE: Duration = Duration::from_millis(100);

/// What happens after some body bytes were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Abort the connection with a TCP RST (zero linger).
    Reset,
    /// Close the connection normally (FIN): a body shorter than announced.
    Close,
    /// Send nothing more, keep the connection open until the client or the server goes.
    Stall,
}

/// How the server answers one request: a scripted fault, or a normal answer with tweaks.
/// Steps are consumed in order, one per request to their path; when the script of a path
/// is empty, requests get a normal answer.
#[derive(Debug, Clone, Default)]
pub struct Step {
    status: Option<u16>,
    retry_after: Option<String>,
    cut: Option<(usize, Cut)>,
    silent: bool,
    ignore_range: bool,
    wrong_range_start: Option<u64>,
    trickle: Option<Trickle>,
    framing: Option<Framing>,
    replace: Option<Resource>,
}

impl Step {
    /// A normal answer.
    pub fn ok() -> Step {
        Step::default()
    }

    /// Answers with this status and a small text body.
    pub fn status(code: u16) -> Step {
        Step {
            status: Some(code),
            ..Step::default()
        }
    }

    /// Answers with this status and a `Retry-After` header (seconds or an HTTP date).
    pub fn retry_after(code: u16, value: impl Into<String>) -> Step {
        Step {
            status: Some(code),
            retry_after: Some(value.into()),
            ..Step::default()
        }
    }

    /// Announces the full body, sends `n` bytes of it, then resets the connection.
    pub fn reset_after(n: usize) -> Step {
        Step {
            cut: Some((n, Cut::Reset)),
            ..Step::default()
        }
    }

    /// Announces the full body, sends `n` bytes of it, then closes the connection.
    pub fn close_after(n: usize) -> Step {
        Step {
            cut: Some((n, Cut::Close)),
            ..Step::default()
        }
    }

    /// Sends `n` body bytes, then nothing more (connection kept open).
    pub fn stall_after(n: usize) -> Step {
        Step {
            cut: Some((n, Cut::Stall)),
            ..Step::default()
        }
    }

    /// Sends the headers, then nothing.
    pub fn stall_headers() -> Step {
        Step::stall_after(0)
    }

    /// Reads the request and never answers.
    pub fn silent() -> Step {
        Step {
            silent: true,
            ..Step::default()
        }
    }

    /// Answers a `Range` request with the whole body (200).
    pub fn ignore_range(mut self) -> Step {
        self.ignore_range = true;
        self
    }

    /// Answers a `Range` request with a 206 that starts at `start` instead of the asked
    /// offset (the body matches the announced `Content-Range`).
    pub fn wrong_range_start(mut self, start: u64) -> Step {
        self.wrong_range_start = Some(start);
        self
    }

    /// Sends this response slowly.
    pub fn trickle(mut self, chunk: usize, delay: Duration) -> Step {
        self.trickle = Some(Trickle { chunk, delay });
        self
    }

    /// Delimits this response's body this way.
    pub fn framing(mut self, framing: Framing) -> Step {
        self.framing = Some(framing);
        self
    }

    /// Replaces the resource (content, validators) before answering; the change stays.
    pub fn replace(mut self, resource: Resource) -> Step {
        self.replace = Some(resource);
        self
    }
}

/// A request the server received.
#[derive(Clone)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// When the request head was read.
    pub at: Instant,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &self.headers)
            .finish()
    }
}

/// Per-path state of the server.
#[derive(Default)]
struct PathState {
    resource: Option<Resource>,
    script: VecDeque<Step>,
    requests: Vec<Request>,
    body_bytes_sent: u64,
}

#[derive(Default)]
struct State {
    paths: HashMap<String, PathState>,
}

struct Shared {
    /// All per-path state; a std mutex, never held across an await.
    state: Mutex<State>,
    /// Bumped after every change of `state` that a test may wait for.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn with<R>(&self, path: &str, f: impl FnOnce(&mut PathState) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(state.paths.entry(normalize(path)).or_default())
    }

    fn bump(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }
}

fn normalize(path: &str) -> String {
    let path = path.split('?').next().unwrap_or("");
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// The test server. Binds `127.0.0.1:0`; `Drop` shuts it down.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` on the current runtime.
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        });
        let (shutdown, _) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), shutdown.clone()));
        TestServer {
            addr,
            shared,
            shutdown,
            accept,
        }
    }

    /// The bound address (always on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, normalize(path))
    }

    /// Serves `resource` at `path` (replacing what was there).
    pub fn serve(&self, path: &str, resource: Resource) {
        self.shared.with(path, |p| p.resource = Some(resource));
    }

    /// Appends steps to the script of `path`.
    pub fn script(&self, path: &str, steps: impl IntoIterator<Item = Step>) {
        self.shared.with(path, |p| p.script.extend(steps));
    }

    /// Steps of `path` not consumed yet.
    pub fn script_left(&self, path: &str) -> usize {
        self.shared.with(path, |p| p.script.len())
    }

    /// Number of requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.shared.with(path, |p| p.requests.len())
    }

    /// The requests received for `path`, in order.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.shared.with(path, |p| p.requests.clone())
    }

    /// Body bytes sent for `path`, over all requests.
    pub fn body_bytes_sent(&self, path: &str) -> u64 {
        self.shared.with(path, |p| p.body_bytes_sent)
    }

    /// Waits until at least `n` body bytes were sent for `path`.
    pub async fn wait_bytes_sent(&self, path: &str, n: u64) {
        let mut rx = self.shared.changed.subscribe();
        let _ = rx.wait_for(|_| self.body_bytes_sent(path) >= n).await;
    }

    /// Waits until at least `n` requests were received for `path`.
    pub async fn wait_hits(&self, path: &str, n: usize) {
        let mut rx = self.shared.changed.subscribe();
        let _ = rx.wait_for(|_| self.hits(path) >= n).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Sender<bool>) {
    let mut stop = shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let mut stop = shutdown.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {}
                        _ = serve_connection(stream, shared) => {}
                    }
                });
            }
        }
    }
}

/// Reads a request head (up to the blank line); `None` on EOF, error or garbage.
async fn read_head(stream: &mut TcpStream) -> Option<(String, String, Vec<(String, String)>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            break;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    Some((method, target, headers))
}

/// Waits until the peer closes (or errors); used to hold a stalled connection open.
async fn hold_open(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Whatever",
    }
}

/// Parses `bytes=N-` or `bytes=N-M`; returns the start and the optional inclusive end.
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        e => Some(e.parse().ok()?),
    };
    Some((start, end))
}

async fn simple_response(
    stream: &mut TcpStream,
    code: u16,
    extra: &[(String, String)],
    body: &[u8],
    head_only: bool,
) {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    if !head_only {
        let _ = stream.write_all(body).await;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let Some((method, target, headers)) = read_head(&mut stream).await else {
        return;
    };
    let path = normalize(&target);
    let request = Request {
        method: method.clone(),
        path: path.clone(),
        headers,
        at: Instant::now(),
    };
    let (step, resource) = shared.with(&path, |p| {
        p.requests.push(request.clone());
        let step = p.script.pop_front().unwrap_or_default();
        if let Some(replacement) = &step.replace {
            p.resource = Some(replacement.clone());
        }
        (step, p.resource.clone())
    });
    shared.bump();
    let head_only = method.eq_ignore_ascii_case("HEAD");

    if step.silent {
        hold_open(&mut stream).await;
        return;
    }
    let Some(resource) = resource else {
        simple_response(&mut stream, 404, &[], b"not found\n", head_only).await;
        return;
    };
    if let Some(code) = step.status {
        let extra: Vec<(String, String)> = step
            .retry_after
            .iter()
            .map(|v| ("Retry-After".to_owned(), v.clone()))
            .collect();
        let body = format!("status {code}\n");
        simple_response(&mut stream, code, &extra, body.as_bytes(), head_only).await;
        return;
    }

    let total = resource.body.len() as u64;
    let mut validators = Vec::new();
    if let Some(etag) = &resource.etag {
        validators.push(("ETag".to_owned(), etag.clone()));
    }
    if let Some(lm) = &resource.last_modified {
        validators.push(("Last-Modified".to_owned(), lm.clone()));
    }
    if resource.accept_ranges {
        validators.push(("Accept-Ranges".to_owned(), "bytes".to_owned()));
    }

    // A conditional request whose validator still matches: 304, no body.
    let etag_matches = request
        .header("if-none-match")
        .is_some_and(|v| resource.etag.as_deref() == Some(v.trim()));
    let date_matches = request.header("if-none-match").is_none()
        && request
            .header("if-modified-since")
            .is_some_and(|v| resource.last_modified.as_deref() == Some(v.trim()));
    if etag_matches || date_matches {
        let mut head = "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n".to_owned();
        for (name, value) in &validators {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
        return;
    }

    // Decide between 200, 206 and 416.
    let mut code = 200;
    let mut start = 0u64;
    let mut end = total; // exclusive
    let range = request.header("range").and_then(parse_range);
    if let (true, false, Some((asked, asked_end))) =
        (resource.accept_ranges, step.ignore_range, range)
    {
        let if_range_ok = match request.header("if-range") {
            None => true,
            Some(v) => {
                resource.etag.as_deref() == Some(v) || resource.last_modified.as_deref() == Some(v)
            }
        };
        if if_range_ok {
            if asked >= total {
                let mut extra = validators.clone();
                extra.push(("Content-Range".to_owned(), format!("bytes */{total}")));
                simple_response(&mut stream, 416, &extra, b"", head_only).await;
                return;
            }
            code = 206;
            start = step.wrong_range_start.unwrap_or(asked).min(total);
            end = asked_end.map_or(total, |e| (e + 1).min(total));
            if end <= start {
                end = total;
            }
        }
    }

    let framing = step.framing.unwrap_or(resource.framing);
    let trickle = step.trickle.or(resource.trickle);
    let mut head = format!("HTTP/1.1 {code} {}\r\nConnection: close\r\n", reason(code));
    head.push_str("Content-Type: application/octet-stream\r\n");
    for (name, value) in &validators {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if code == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            end.saturating_sub(1)
        ));
    }
    match framing {
        Framing::ContentLength => {
            head.push_str(&format!("Content-Length: {}\r\n", end - start));
        }
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::CloseDelimited => {}
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    if head_only {
        let _ = stream.shutdown().await;
        return;
    }

    let body = resource.body.slice(start as usize..end as usize);
    let cut_at = step.cut.map(|(n, _)| n.min(body.len()));
    let chunk_size = trickle.map_or(16 * 1024, |t| t.chunk.max(1));
    let mut sent = 0usize;
    loop {
        let limit = cut_at.unwrap_or(body.len());
        if sent >= limit {
            break;
        }
        let n = chunk_size.min(limit - sent);
        let piece = &body[sent..sent + n];
        let ok = match framing {
            Framing::Chunked => {
                let mut framed = format!("{n:x}\r\n").into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                stream.write_all(&framed).await.is_ok()
            }
            _ => stream.write_all(piece).await.is_ok(),
        };
        if !ok || stream.flush().await.is_err() {
            return;
        }
        sent += n;
        shared.with(&path, |p| p.body_bytes_sent += n as u64);
        shared.bump();
        if let Some(t) = trickle {
            tokio::time::sleep(t.delay).await;
        }
    }
    match step.cut {
        Some((_, Cut::Reset)) => {
            // Give the client a moment to read what was sent, so that the bytes before the
            // reset really reach it (an RST may discard data still in flight).
            tokio::time::sleep(RESET_GRACE).await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Some((_, Cut::Close)) => {
            let _ = stream.shutdown().await;
        }
        Some((_, Cut::Stall)) => hold_open(&mut stream).await,
        None => {
            if framing == Framing::Chunked {
                let _ = stream.write_all(b"0\r\n\r\n").await;
            }
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
            // Wait for the client to close, so a late RST never spoils the response.
            let _ = tokio::time::timeout(Duration::from_secs(5), hold_open(&mut stream)).await;
        }
    }
}
