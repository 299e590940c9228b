//! A small HTTP/1.1 file server on 127.0.0.1 for the demo (and the CLI's tests): `GET` and
//! `HEAD` of the files in one directory, `Content-Length`, keep-alive, `404` for anything
//! else. It counts the requests for each path, so the demo can show how many transfers a
//! file took.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request head accepted (request line and headers).
const MAX_HEAD: usize = 16 * 1024;

/// A running server; it stops (with every connection) when dropped.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    addr: SocketAddr,
    /// Requests per path (`/name`), shared with the connection tasks.
    requests: Arc<Mutex<HashMap<String, u64>>>,
    /// The accept loop; aborting it drops its `JoinSet`, which aborts every connection.
    task: JoinHandle<()>,
}

impl Server {
    /// Serves the files directly under `root` on `127.0.0.1:0`.
    pub async fn start(root: impl Into<PathBuf>) -> io::Result<Server> {
        let root = root.into();
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let counts = requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        connections.spawn(serve(stream, root.clone(), counts.clone()));
                    }
                    // Reap finished connections so the set does not grow.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Server {
            addr,
            requests,
            task,
        })
    }

    /// The URL of the file `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// How many requests asked for the file `name` so far.
    pub fn requests(&self, name: &str) -> u64 {
        self.requests
            .lock()
            .map(|counts| counts.get(&format!("/{name}")).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers the requests of one connection until the client closes it (or asks to).
async fn serve(stream: TcpStream, root: PathBuf, requests: Arc<Mutex<HashMap<String, u64>>>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let Ok(Some(head)) = read_head(&mut read).await else {
            return;
        };
        let Some(request) = Request::parse(&head) else {
            let _ = respond(&mut write, "400 Bad Request", b"bad request\n", true).await;
            return;
        };
        if let Ok(mut counts) = requests.lock() {
            *counts.entry(request.path.clone()).or_default() += 1;
        }
        let answered = match request.method.as_str() {
            "GET" | "HEAD" => send_file(&mut write, &root, &request).await,
            _ => respond(&mut write, "405 Method Not Allowed", b"", request.close).await,
        };
        if answered.is_err() || request.close {
            return;
        }
    }
}

/// The parts of a request the server uses.
struct Request {
    /// `GET`, `HEAD`, ...
    method: String,
    /// The path, e.g. `/boot.img`.
    path: String,
    /// Whether the client asked to close the connection after this answer.
    close: bool,
}

impl Request {
    fn parse(head: &str) -> Option<Request> {
        let mut lines = head.lines();
        let mut parts = lines.next()?.split_whitespace();
        let method = parts.next()?.to_owned();
        let path = parts.next()?.to_owned();
        let version = parts.next()?;
        let mut close = version == "HTTP/1.0";
        for line in lines {
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("connection")
            {
                close = value.trim().eq_ignore_ascii_case("close");
            }
        }
        Some(Request {
            method,
            path,
            close,
        })
    }
}

/// Reads a request head (up to the empty line); `None` when the client closed the
/// connection between requests.
async fn read_head(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let n = read.read_line(&mut head).await?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.len() > MAX_HEAD {
            return Err(io::ErrorKind::InvalidData.into());
        }
        if head.ends_with("\r\n\r\n") || head.ends_with("\n\n") {
            return Ok(Some(head));
        }
    }
}

/// Sends the file the request names, or a 404 when there is no such file.
async fn send_file(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    root: &Path,
    request: &Request,
) -> io::Result<()> {
    let name = request.path.trim_start_matches('/');
    // Only plain names of files directly under the root.
    let valid = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
    let file = if valid {
        tokio::fs::File::open(root.join(name)).await.ok()
    } else {
        None
    };
    let Some(mut file) = file else {
        let body: &[u8] = if request.method == "GET" {
            b"not found\n"
        } else {
            b""
        };
        return respond(write, "404 Not Found", body, request.close).await;
    };
    let len = file.metadata().await?.len();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n{}\r\n",
        if request.close {
            "Connection: close\r\n"
        } else {
            ""
        }
    );
    write.write_all(head.as_bytes()).await?;
    if request.method == "GET" {
        tokio::io::copy(&mut file, write).await?;
    }
    write.flush().await
}

/// Sends a short answer with `body`.
async fn respond(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    status: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(body).await?;
    write.flush().await
}
