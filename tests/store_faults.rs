//! The Store against a misbehaving server: retried statuses, Retry-After, fatal statuses,
//! resets and resume, truncated bodies, stalls, slow trickles and the size limit. Every
//! test checks the final status, the reason (collector and index), the file's content and
//! that no temporary file is left.

mod support;

use std::time::{Duration, SystemTime};

use support::{Fixture, Framing, Resource, Step, body, fast_builder, image, sha256_hex};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 500, 502, 503, 504 then 200: READY after exactly 5 requests (the default 5 attempts).
#[tokio::test]
async fn server_errors_are_retried_until_ok() {
    let fx = Fixture::new().await;
    let data = body(40_000, 1);
    fx.server.serve("/f", Resource::new(data.clone()));
    fx.server
        .script("/f", [500, 502, 503, 504].into_iter().map(Step::status));
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/f"), 5);
}

/// 500, 503, 429 (Retry-After: 0), 408 then 200: READY after 5 requests.
#[tokio::test]
async fn mixed_retryable_statuses_then_ok() {
    let fx = Fixture::new().await;
    let data = body(40_000, 2);
    fx.server.serve("/f", Resource::new(data.clone()));
    fx.server.script(
        "/f",
        [
            Step::status(500),
            Step::status(503),
            Step::retry_after(429, "0"),
            Step::status(408),
        ],
    );
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/f"), 5);
}

/// A 429 with `Retry-After: 1` (seconds) makes the store wait about a second before it
/// retries, although its own backoff is a millisecond.
#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let fx = Fixture::new().await;
    let data = body(1000, 3);
    fx.server.serve("/f", Resource::new(data.clone()));
    fx.server.script("/f", [Step::retry_after(429, "1")]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let reqs = fx.server.requests("/f");
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= ms(900),
        "retried after {gap:?}, Retry-After said 1 s"
    );
}

/// A 503 with a `Retry-After` HTTP date an hour ahead is honoured up to the cap (300 ms
/// here): the store waits at least about the cap, and does not wait an hour.
#[tokio::test]
async fn retry_after_http_date_is_capped() {
    let fx = Fixture::with(fast_builder().retry_after_cap(ms(300))).await;
    let data = body(1000, 4);
    fx.server.serve("/f", Resource::new(data.clone()));
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    fx.server.script("/f", [Step::retry_after(503, later)]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let reqs = fx.server.requests("/f");
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= ms(250),
        "retried after {gap:?}; the capped Retry-After is 300 ms"
    );
}

/// A huge `Retry-After` in seconds is capped too.
#[tokio::test]
async fn retry_after_seconds_is_capped() {
    let fx = Fixture::with(fast_builder().retry_after_cap(ms(200))).await;
    let data = body(1000, 5);
    fx.server.serve("/f", Resource::new(data.clone()));
    fx.server.script("/f", [Step::retry_after(429, "86400")]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let reqs = fx.server.requests("/f");
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].at - reqs[0].at >= ms(150));
}

/// 404 fails at once: one request, reason with "HTTP 404", no file.
#[tokio::test]
async fn not_found_fails_at_once() {
    let fx = Fixture::new().await;
    let out = fx.fetch("Image_0", "/nowhere").await;
    out.assert_failed(&fx.root(), |r| r.contains("HTTP 404"));
    assert_eq!(fx.server.hits("/nowhere"), 1);
}

/// Other 4xx (400, 401, 403, 410, 416) fail at once too, each with its status.
#[tokio::test]
async fn other_client_errors_fail_at_once() {
    let fx = Fixture::new().await;
    for code in [400u16, 401, 403, 410] {
        let path = format!("/c{code}");
        fx.server.serve(&path, Resource::new(&b"x"[..]));
        fx.server.script(&path, [Step::status(code)]);
        let out = fx.fetch(&format!("Image_{code}"), &path).await;
        let want = format!("HTTP {code}");
        out.assert_failed(&fx.root(), |r| r.contains(&want));
        assert_eq!(fx.server.hits(&path), 1, "{code}");
    }
}

/// 501 and 505 are server errors that are not retried: FAILED after one request.
#[tokio::test]
async fn not_implemented_fails_at_once() {
    let fx = Fixture::new().await;
    for code in [501u16, 505] {
        let path = format!("/s{code}");
        fx.server.serve(&path, Resource::new(&b"x"[..]));
        fx.server.script(&path, [Step::status(code)]);
        let out = fx.fetch(&format!("Image_{code}"), &path).await;
        let want = format!("HTTP {code}");
        out.assert_failed(&fx.root(), |r| r.contains(&want));
        assert_eq!(fx.server.hits(&path), 1, "{code}");
    }
}

/// A server that answers 500 forever: FAILED after exactly `max_attempts` requests, the
/// reason naming the last status.
#[tokio::test]
async fn retries_are_exhausted() {
    let fx = Fixture::with(fast_builder().max_attempts(3)).await;
    fx.server.serve("/f", Resource::new(&b"never"[..]));
    fx.server
        .script("/f", std::iter::repeat_n(Step::status(500), 10));
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_failed(&fx.root(), |r| r.contains("500"));
    assert_eq!(fx.server.hits("/f"), 3);
}

/// The default is 5 attempts.
#[tokio::test]
async fn default_is_five_attempts() {
    let fx = Fixture::new().await;
    fx.server.serve("/f", Resource::new(&b"never"[..]));
    fx.server
        .script("/f", std::iter::repeat_n(Step::status(503), 10));
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_failed(&fx.root(), |r| r.contains("503"));
    assert_eq!(fx.server.hits("/f"), 5);
}

/// A reset mid-body on a server with ranges and an ETag: the retry asks `Range: bytes=N-`
/// with `If-Range: <etag>`, gets only the rest, and the file is whole.
#[tokio::test]
async fn reset_mid_body_resumes_with_range_and_etag() {
    let fx = Fixture::new().await;
    let data = body(600_000, 6);
    fx.server
        .serve("/f", Resource::new(data.clone()).etag("v1").ranges(true));
    fx.server.script("/f", [Step::reset_after(200_000)]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let reqs = fx.server.requests("/f");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].header("range"), None);
    let range = reqs[1]
        .header("range")
        .unwrap_or_else(|| panic!("the retry did not resume: {reqs:?}"));
    let offset: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Range {range:?}"));
    assert!(offset > 0 && offset <= 200_000, "{range}");
    assert_eq!(reqs[1].header("if-range"), Some("\"v1\""));
    // Only the rest was sent again.
    assert_eq!(
        fx.server.body_bytes_sent("/f"),
        200_000 + (600_000 - offset)
    );
}

/// A body cut short (FIN) on a server with ranges and only `Last-Modified`: the retry
/// resumes at exactly the received length, `If-Range` carrying the date.
#[tokio::test]
async fn cut_body_resumes_with_last_modified() {
    let fx = Fixture::new().await;
    let data = body(300_000, 7);
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    fx.server.serve(
        "/f",
        Resource::new(data.clone())
            .last_modified(modified)
            .ranges(true),
    );
    fx.server.script("/f", [Step::close_after(100_000)]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let reqs = fx.server.requests("/f");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].header("range"), Some("bytes=100000-"));
    assert_eq!(
        reqs[1].header("if-range"),
        Some(httpdate::fmt_http_date(modified).as_str())
    );
    assert_eq!(fx.server.body_bytes_sent("/f"), 300_000);
}

/// Several cuts in a row each resume where the last one stopped.
#[tokio::test]
async fn repeated_cuts_resume_each_time() {
    let fx = Fixture::new().await;
    let data = body(400_000, 8);
    fx.server
        .serve("/f", Resource::new(data.clone()).etag("e").ranges(true));
    fx.server.script(
        "/f",
        [
            Step::close_after(100_000),
            Step::close_after(100_000),
            Step::close_after(100_000),
        ],
    );
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let ranges: Vec<_> = fx
        .server
        .requests("/f")
        .iter()
        .map(|r| r.header("range").map(str::to_owned))
        .collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=100000-".to_owned()),
            Some("bytes=200000-".to_owned()),
            Some("bytes=300000-".to_owned()),
        ]
    );
}

/// A reset on a server without range support: the retry starts from zero (no `Range`)
/// and the file is whole.
#[tokio::test]
async fn reset_without_ranges_restarts_from_zero() {
    let fx = Fixture::new().await;
    let data = body(400_000, 9);
    fx.server
        .serve("/f", Resource::new(data.clone()).etag("v1"));
    fx.server.script("/f", [Step::reset_after(150_000)]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let reqs = fx.server.requests("/f");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].header("range"), None, "{reqs:?}");
}

/// `Accept-Ranges: bytes` without an ETag or Last-Modified is not enough to resume:
/// restart from zero.
#[tokio::test]
async fn ranges_without_validator_restart_from_zero() {
    let fx = Fixture::new().await;
    let data = body(300_000, 10);
    fx.server
        .serve("/f", Resource::new(data.clone()).ranges(true));
    fx.server.script("/f", [Step::close_after(100_000)]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let reqs = fx.server.requests("/f");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].header("range"), None, "{reqs:?}");
}

/// A server that ignores the `Range` and answers 200 with the whole body: the store
/// starts over from the body it got, and the file is whole (not the head twice).
#[tokio::test]
async fn range_ignored_by_server_gives_whole_file() {
    let fx = Fixture::new().await;
    let data = body(300_000, 11);
    fx.server
        .serve("/f", Resource::new(data.clone()).etag("e").ranges(true));
    fx.server.script(
        "/f",
        [Step::close_after(100_000), Step::ok().ignore_range()],
    );
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(
        fx.server.requests("/f")[1].header("range"),
        Some("bytes=100000-")
    );
}

/// A 206 whose `Content-Range` does not start at the asked offset is not appended: the
/// store restarts from zero and the file is whole.
#[tokio::test]
async fn wrong_content_range_start_restarts_from_zero() {
    let fx = Fixture::new().await;
    let data = body(300_000, 12);
    fx.server
        .serve("/f", Resource::new(data.clone()).etag("e").ranges(true));
    fx.server.script(
        "/f",
        [
            Step::close_after(100_000),
            Step::ok().wrong_range_start(40_000),
        ],
    );
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    let reqs = fx.server.requests("/f");
    assert!(reqs.len() >= 3, "{reqs:?}");
    assert_eq!(reqs[1].header("range"), Some("bytes=100000-"));
    let last = reqs.last().expect("requests");
    assert!(
        matches!(last.header("range"), None | Some("bytes=0-")),
        "the restart must be from zero: {reqs:?}"
    );
}

/// The ETag changed between attempts: the `If-Range` no longer matches, the server sends
/// the new content whole, and the file is the new content, not a splice of old and new.
#[tokio::test]
async fn etag_change_between_attempts_downloads_whole_new_content() {
    let fx = Fixture::new().await;
    let old = body(300_000, 13);
    let new = body(250_000, 14);
    fx.server
        .serve("/f", Resource::new(old).etag("v1").ranges(true));
    fx.server.script(
        "/f",
        [
            Step::close_after(100_000),
            Step::ok().replace(Resource::new(new.clone()).etag("v2").ranges(true)),
        ],
    );
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &new);
    let reqs = fx.server.requests("/f");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].header("range"), Some("bytes=100000-"));
    assert_eq!(reqs[1].header("if-range"), Some("\"v1\""));
}

/// The content changed between attempts and an expected SHA-256 pins the old content:
/// the new content is never READY.
#[tokio::test]
async fn content_change_against_expected_sha_fails() {
    let fx = Fixture::new().await;
    let old = body(200_000, 15);
    let new = body(200_000, 16);
    fx.server
        .serve("/f", Resource::new(old.clone()).etag("v1").ranges(true));
    fx.server.script(
        "/f",
        [
            Step::close_after(50_000),
            Step::ok().replace(Resource::new(new.clone()).etag("v2").ranges(true)),
        ],
    );
    let out = fx
        .fetch_desc(support::image_sha(
            1,
            "Image_0",
            &fx.server.url("/f"),
            &sha256_hex(&old),
        ))
        .await;
    let want = format!(
        "sha256 mismatch for {}: expected {}, got {}",
        fx.server.url("/f"),
        sha256_hex(&old),
        sha256_hex(&new)
    );
    out.assert_failed(&fx.root(), |r| r == want);
}

/// A body shorter than its Content-Length on every attempt is never READY: FAILED after
/// `max_attempts` requests, no file.
#[tokio::test]
async fn truncated_body_every_time_fails() {
    let fx = Fixture::with(fast_builder().max_attempts(3)).await;
    fx.server.serve("/f", Resource::new(body(50_000, 17)));
    fx.server
        .script("/f", std::iter::repeat_n(Step::close_after(10_000), 10));
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_failed(&fx.root(), |r| !r.is_empty());
    assert_eq!(fx.server.hits("/f"), 3);
}

/// Truncated on every attempt even with resume: each attempt gets a little further, but
/// the body is never complete, so it is never READY.
#[tokio::test]
async fn truncated_with_resume_every_time_fails() {
    let fx = Fixture::with(fast_builder().max_attempts(3)).await;
    fx.server
        .serve("/f", Resource::new(body(50_000, 18)).etag("e").ranges(true));
    fx.server
        .script("/f", std::iter::repeat_n(Step::close_after(5_000), 10));
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_failed(&fx.root(), |r| !r.is_empty());
    assert_eq!(fx.server.hits("/f"), 3);
}

/// Headers then silence: the idle timeout fails each attempt, and the store gives up
/// after `max_attempts` with a reason that mentions the timeout.
#[tokio::test]
async fn stall_after_headers_times_out() {
    let fx = Fixture::with(fast_builder().idle_timeout(ms(300)).max_attempts(2)).await;
    fx.server.serve("/f", Resource::new(body(10_000, 19)));
    fx.server
        .script("/f", [Step::stall_headers(), Step::stall_headers()]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_failed(&fx.root(), |r| {
        let r = r.to_lowercase();
        r.contains("timeout") || r.contains("timed out") || r.contains("idle")
    });
    assert_eq!(fx.server.hits("/f"), 2);
}

/// A stall mid-body is retried after the idle timeout and the retry completes the file.
#[tokio::test]
async fn stall_mid_body_is_retried() {
    let fx = Fixture::with(fast_builder().idle_timeout(ms(300))).await;
    let data = body(100_000, 20);
    fx.server.serve("/f", Resource::new(data.clone()));
    fx.server.script("/f", [Step::stall_after(30_000)]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/f"), 2);
}

/// No response at all (not even headers): the attempt times out and the retry succeeds.
#[tokio::test]
async fn no_response_at_all_is_retried() {
    let fx = Fixture::with(
        fast_builder()
            .idle_timeout(ms(300))
            .connect_timeout(ms(300)),
    )
    .await;
    let data = body(10_000, 21);
    fx.server.serve("/f", Resource::new(data.clone()));
    fx.server.script("/f", [Step::silent()]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/f"), 2);
}

/// A slow trickle whose gaps stay under the idle timeout is READY in one request.
#[tokio::test]
async fn slow_trickle_within_idle_timeout_is_ready() {
    let fx = Fixture::with(fast_builder().idle_timeout(Duration::from_secs(2))).await;
    let data = body(20_000, 22);
    fx.server
        .serve("/f", Resource::new(data.clone()).trickle(1000, ms(20)));
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/f"), 1);
}

/// Chunked and close-delimited bodies (no Content-Length) are READY.
#[tokio::test]
async fn bodies_without_content_length_are_ready() {
    let fx = Fixture::new().await;
    let data = body(150_000, 23);
    fx.server
        .serve("/c", Resource::new(data.clone()).framing(Framing::Chunked));
    fx.server.serve(
        "/d",
        Resource::new(data.clone()).framing(Framing::CloseDelimited),
    );
    fx.fetch("chunked", "/c")
        .await
        .assert_ready(&fx.root(), &data);
    fx.fetch("closed", "/d")
        .await
        .assert_ready(&fx.root(), &data);
}

/// A Content-Length over `max_size` fails before anything is written: one request, no
/// retry, no file.
#[tokio::test]
async fn max_size_by_content_length_fails_before_writing() {
    let fx = Fixture::with(fast_builder().max_size(Some(10_000))).await;
    fx.server.serve("/f", Resource::new(body(50_000, 24)));
    let out = fx.fetch("Image_0", "/f").await;
    let reason = out.assert_failed(&fx.root(), |r| r.contains("10000") || r.contains("10 000"));
    assert_eq!(fx.server.hits("/f"), 1, "{reason}");
}

/// A body exactly at `max_size` is fine.
#[tokio::test]
async fn body_at_max_size_is_ready() {
    let fx = Fixture::with(fast_builder().max_size(Some(10_000))).await;
    let data = body(10_000, 25);
    fx.server.serve("/f", Resource::new(data.clone()));
    fx.server
        .serve("/c", Resource::new(data.clone()).framing(Framing::Chunked));
    fx.fetch("a", "/f").await.assert_ready(&fx.root(), &data);
    fx.fetch("b", "/c").await.assert_ready(&fx.root(), &data);
}

/// A chunked body that grows past `max_size` fails as soon as it does: the server sends
/// well past the limit and then stalls (idle timeout 60 s), so only a store that stops at
/// the limit answers within the test's 30 s wait. One request, no retry, no file.
#[tokio::test]
async fn max_size_by_growing_chunked_body() {
    let fx = Fixture::with(
        fast_builder()
            .max_size(Some(64 * 1024))
            .idle_timeout(Duration::from_secs(60)),
    )
    .await;
    fx.server.serve(
        "/f",
        Resource::new(body(1 << 20, 26)).framing(Framing::Chunked),
    );
    fx.server.script("/f", [Step::stall_after(200_000)]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_failed(&fx.root(), |r| r.contains("65536") || r.contains("64 KiB"));
    assert_eq!(fx.server.hits("/f"), 1);
}

/// The same with a close-delimited body (no length at all).
#[tokio::test]
async fn max_size_by_growing_close_delimited_body() {
    let fx = Fixture::with(
        fast_builder()
            .max_size(Some(64 * 1024))
            .idle_timeout(Duration::from_secs(60)),
    )
    .await;
    fx.server.serve(
        "/f",
        Resource::new(body(1 << 20, 27)).framing(Framing::CloseDelimited),
    );
    fx.server.script("/f", [Step::stall_after(200_000)]);
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_failed(&fx.root(), |r| r.contains("65536") || r.contains("64 KiB"));
    assert_eq!(fx.server.hits("/f"), 1);
}

/// A `file://` source over `max_size` fails too.
#[tokio::test]
async fn max_size_applies_to_file_scheme() {
    let fx = Fixture::with(fast_builder().max_size(Some(1000))).await;
    let source = fx.dir.path().join("big.img");
    std::fs::write(&source, body(5000, 28)).expect("write");
    let uri = url::Url::from_file_path(&source).expect("url").to_string();
    let out = fx.fetch_desc(image(1, "Image_0", &uri)).await;
    out.assert_failed(&fx.root(), |r| r.contains("1000"));
}

/// A refused connection (nothing listening) is retried and then FAILED, with no file.
#[tokio::test]
async fn connection_refused_is_retried_then_failed() {
    let fx = Fixture::with(fast_builder().max_attempts(3)).await;
    // Bind then drop a listener to get a port with nothing behind it.
    let port = {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        l.local_addr().expect("addr").port()
    };
    let uri = format!("http://127.0.0.1:{port}/f");
    let out = fx.fetch_desc(image(1, "Image_0", &uri)).await;
    out.assert_failed(&fx.root(), |r| !r.is_empty());
}

/// A mixed bag in parallel on a small pool: every artifact ends with the right status
/// and the READY ones with the right content (the pool does not mix up transfers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_parallel_do_not_interfere() {
    let fx = Fixture::with(fast_builder().workers(3).idle_timeout(ms(500))).await;
    let mut expected = Vec::new();
    for i in 0..12u64 {
        let path = format!("/f{i}");
        let data = body(50_000 + i as usize * 1000, 100 + i);
        let res = Resource::new(data.clone())
            .etag(&format!("e{i}"))
            .ranges(i % 2 == 0);
        fx.server.serve(&path, res);
        let ok = match i % 4 {
            0 => {
                fx.server.script(&path, [Step::reset_after(20_000)]);
                true
            }
            1 => {
                fx.server
                    .script(&path, [Step::status(503), Step::stall_after(1000)]);
                true
            }
            2 => {
                fx.server.script(&path, [Step::status(404)]);
                false
            }
            _ => true,
        };
        expected.push((path, data, ok));
    }
    let mut pushed = Vec::new();
    for (i, (path, _, _)) in expected.iter().enumerate() {
        pushed.push(
            fx.push(image(1, &format!("Image_{i}"), &fx.server.url(path)))
                .await,
        );
    }
    // Wait for every transfer first: a `.part` file of a running one is fine meanwhile.
    let mut outcomes = Vec::new();
    for (path, mut statuses) in pushed {
        let changes = statuses.until_terminal(&path).await;
        outcomes.push(support::Outcome {
            record: fx.info(&path).await,
            path,
            changes,
        });
    }
    for (out, (_, data, ok)) in outcomes.iter().zip(&expected) {
        if *ok {
            out.assert_ready(&fx.root(), data);
        } else {
            out.assert_failed(&fx.root(), |r| r.contains("HTTP 404"));
        }
    }
}

/// The checksum file is fetched with the same retries: a 503 on it, then the image
/// verifies and is READY.
#[tokio::test]
async fn checksum_file_fetch_is_retried() {
    let fx = Fixture::new().await;
    let data = body(30_000, 29);
    fx.server.serve("/img", Resource::new(data.clone()));
    fx.server.serve(
        "/img.md5",
        Resource::new(format!("{}  img\n", support::md5_hex(&data)).into_bytes()),
    );
    fx.server
        .script("/img.md5", [Step::status(503), Step::close_after(5)]);
    let out = fx
        .fetch_desc(support::image_checksum(
            1,
            "Image_0",
            &fx.server.url("/img"),
            &fx.server.url("/img.md5"),
            artifact_coordinator::ChecksumType::Md5,
        ))
        .await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/img.md5"), 3);
}
