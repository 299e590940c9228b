//! Self-tests of the fault-injecting test server in `tests/support/`, driven by a plain
//! reqwest client (so a Store bug is never mistaken for a server bug).

mod support;

use std::time::{Duration, SystemTime};

use support::{Framing, Resource, Step, TestServer, body, sha256_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Sends a raw request and returns everything the server sent until it closed.
async fn raw(server: &TestServer, request: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    out
}

/// The server binds 127.0.0.1 only and serves a resource with its validators.
#[tokio::test]
async fn serves_resource_with_validators() {
    let server = TestServer::start().await;
    assert!(server.addr().ip().is_loopback());
    assert_eq!(server.addr().ip().to_string(), "127.0.0.1");
    let data = body(100_000, 1);
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    server.serve(
        "/a.bin",
        Resource::new(data.clone())
            .etag("v1")
            .last_modified(modified)
            .ranges(true),
    );
    let resp = client().get(server.url("a.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"v1\"");
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    assert_eq!(
        resp.headers()["last-modified"],
        httpdate::fmt_http_date(modified).as_str()
    );
    assert_eq!(resp.headers()["content-length"], "100000");
    let got = resp.bytes().await.unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    assert_eq!(server.hits("/a.bin"), 1);
    assert_eq!(server.body_bytes_sent("/a.bin"), 100_000);
}

/// Unknown paths get a 404, and the request is still counted.
#[tokio::test]
async fn unknown_path_is_404() {
    let server = TestServer::start().await;
    let resp = client().get(server.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(server.hits("/nope"), 1);
}

/// A scripted status sequence is played one step per request, then normal answers.
#[tokio::test]
async fn status_sequence_then_ok() {
    let server = TestServer::start().await;
    server.serve("/f", Resource::new(&b"hello"[..]));
    server.script(
        "/f",
        [
            Step::status(500),
            Step::retry_after(503, "7"),
            Step::retry_after(429, httpdate::fmt_http_date(SystemTime::now())),
            Step::status(408),
            Step::status(501),
        ],
    );
    let c = client();
    let mut codes = Vec::new();
    for _ in 0..6 {
        let resp = c.get(server.url("/f")).send().await.unwrap();
        codes.push(resp.status().as_u16());
        if resp.status() == 503 {
            assert_eq!(resp.headers()["retry-after"], "7");
        }
        if resp.status() == 429 {
            let value = resp.headers()["retry-after"].to_str().unwrap().to_owned();
            assert!(httpdate::parse_http_date(&value).is_ok(), "{value}");
        }
        let _ = resp.bytes().await;
    }
    assert_eq!(codes, [500, 503, 429, 408, 501, 200]);
    assert_eq!(server.hits("/f"), 6);
    assert_eq!(server.script_left("/f"), 0);
}

/// Range requests get a 206 with a correct Content-Range; headers are recorded.
#[tokio::test]
async fn range_request_gets_206() {
    let server = TestServer::start().await;
    let data = body(1000, 2);
    server.serve("/r", Resource::new(data.clone()).etag("e").ranges(true));
    let resp = client()
        .get(server.url("/r"))
        .header("Range", "bytes=100-")
        .header("If-Range", "\"e\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 100-999/1000");
    assert_eq!(resp.bytes().await.unwrap(), &data[100..]);
    let req = &server.requests("/r")[0];
    assert_eq!(req.header("Range"), Some("bytes=100-"));
    assert_eq!(req.header("if-range"), Some("\"e\""));
    assert_eq!(req.method, "GET");
}

/// A stale If-Range, ranges switched off, or a step ignoring the range: a full 200.
#[tokio::test]
async fn range_is_ignored_when_it_must_be() {
    let server = TestServer::start().await;
    let data = body(1000, 3);
    server.serve("/r", Resource::new(data.clone()).etag("e").ranges(true));
    server.serve("/n", Resource::new(data.clone()).etag("e"));
    let c = client();
    let stale = c
        .get(server.url("/r"))
        .header("Range", "bytes=100-")
        .header("If-Range", "\"old\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.bytes().await.unwrap(), &data[..]);
    let off = c
        .get(server.url("/n"))
        .header("Range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);
    assert!(off.headers().get("accept-ranges").is_none());
    assert_eq!(off.bytes().await.unwrap(), &data[..]);
    server.script("/r", [Step::ok().ignore_range()]);
    let ignored = c
        .get(server.url("/r"))
        .header("Range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(ignored.status(), 200);
    assert_eq!(ignored.bytes().await.unwrap(), &data[..]);
}

/// A wrong Content-Range start is announced and its body matches the announcement.
#[tokio::test]
async fn wrong_content_range_start() {
    let server = TestServer::start().await;
    let data = body(1000, 4);
    server.serve("/r", Resource::new(data.clone()).etag("e").ranges(true));
    server.script("/r", [Step::ok().wrong_range_start(0)]);
    let resp = client()
        .get(server.url("/r"))
        .header("Range", "bytes=500-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 0-999/1000");
    assert_eq!(resp.bytes().await.unwrap(), &data[..]);
}

/// A reset or a close after N bytes makes the body fail to read in full.
#[tokio::test]
async fn reset_and_close_mid_body() {
    let server = TestServer::start().await;
    server.serve("/x", Resource::new(body(200_000, 5)));
    server.script("/x", [Step::reset_after(10_000), Step::close_after(20_000)]);
    let c = client();
    for _ in 0..2 {
        let resp = c.get(server.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.bytes().await.is_err(),
            "a cut body must not read in full"
        );
    }
    // The raw view of a close: exactly 20,000 body bytes after the head.
    server.script("/x", [Step::close_after(20_000)]);
    let out = raw(&server, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(String::from_utf8_lossy(&out[..split]).contains("Content-Length: 200000"));
    assert_eq!(out.len() - split, 20_000);
    assert_eq!(server.hits("/x"), 3);
}

/// A stalled response sends headers then nothing, until the client gives up.
#[tokio::test]
async fn stall_after_headers_and_silent() {
    let server = TestServer::start().await;
    server.serve("/s", Resource::new(body(1000, 6)));
    server.script("/s", [Step::stall_headers(), Step::silent()]);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let resp = c.get(server.url("/s")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let err = resp.bytes().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let err = c.get(server.url("/s")).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(server.hits("/s"), 2);
}

/// Chunked and close-delimited bodies arrive whole, without a Content-Length.
#[tokio::test]
async fn chunked_and_close_delimited() {
    let server = TestServer::start().await;
    let data = body(50_000, 7);
    server.serve("/c", Resource::new(data.clone()).framing(Framing::Chunked));
    server.serve(
        "/d",
        Resource::new(data.clone()).framing(Framing::CloseDelimited),
    );
    let c = client();
    for path in ["/c", "/d"] {
        let resp = c.get(server.url(path)).send().await.unwrap();
        assert!(resp.headers().get("content-length").is_none(), "{path}");
        assert_eq!(resp.bytes().await.unwrap(), &data[..], "{path}");
    }
}

/// A trickled body arrives whole; the bytes-sent counter can be awaited.
#[tokio::test]
async fn trickle_and_wait_bytes_sent() {
    let server = TestServer::start().await;
    let data = body(4096, 8);
    server.serve(
        "/t",
        Resource::new(data.clone()).trickle(512, Duration::from_millis(2)),
    );
    let url = server.url("/t");
    let fetch = tokio::spawn(async move { client().get(url).send().await?.bytes().await });
    tokio::time::timeout(Duration::from_secs(20), server.wait_bytes_sent("/t", 1024))
        .await
        .expect("bytes sent");
    assert_eq!(fetch.await.unwrap().unwrap(), &data[..]);
    assert_eq!(server.body_bytes_sent("/t"), 4096);
}

/// A step can replace the content (and ETag) for that request and the following ones.
#[tokio::test]
async fn replace_content_between_requests() {
    let server = TestServer::start().await;
    server.serve("/v", Resource::new(&b"one"[..]).etag("1"));
    server.script(
        "/v",
        [
            Step::ok(),
            Step::ok().replace(Resource::new(&b"two"[..]).etag("2")),
        ],
    );
    let c = client();
    let mut got = Vec::new();
    for _ in 0..3 {
        let resp = c.get(server.url("/v")).send().await.unwrap();
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        got.push((etag, resp.bytes().await.unwrap()));
    }
    assert_eq!(
        got[0],
        ("\"1\"".to_owned(), bytes::Bytes::from_static(b"one"))
    );
    assert_eq!(
        got[1],
        ("\"2\"".to_owned(), bytes::Bytes::from_static(b"two"))
    );
    assert_eq!(
        got[2],
        ("\"2\"".to_owned(), bytes::Bytes::from_static(b"two"))
    );
}

/// Concurrent connections are served in parallel (a stalled one does not block others).
#[tokio::test]
async fn concurrent_connections() {
    let server = TestServer::start().await;
    server.serve("/s", Resource::new(body(10, 9)));
    server.serve("/ok", Resource::new(&b"fine"[..]));
    server.script("/s", [Step::silent()]);
    let stalled = TcpStream::connect(server.addr()).await.unwrap();
    let mut stalled = stalled;
    stalled
        .write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    server.wait_hits("/s", 1).await;
    let c = client();
    let all = futures_util::future::join_all(
        (0..8).map(|_| async { c.get(server.url("/ok")).send().await?.bytes().await }),
    )
    .await;
    for r in all {
        assert_eq!(r.unwrap(), &b"fine"[..]);
    }
    assert_eq!(server.hits("/ok"), 8);
}

/// Dropping the server closes held connections and stops accepting.
#[tokio::test]
async fn drop_shuts_down() {
    let server = TestServer::start().await;
    server.serve("/s", Resource::new(body(10, 10)));
    server.script("/s", [Step::silent()]);
    let addr = server.addr();
    let mut held = TcpStream::connect(addr).await.unwrap();
    held.write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    server.wait_hits("/s", 1).await;
    drop(server);
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), held.read_to_end(&mut buf))
        .await
        .expect("held connection closed on drop");
    assert!(n.map_or(true, |n| n == 0));
    // New connections are refused (or closed at once) after the drop.
    let refused = match TcpStream::connect(addr).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = Vec::new();
            matches!(
                tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
    };
    assert!(refused);
}
