//! A minimal HTTP client for the tests: one `GET` per connection over HTTP/1.0 (so servers
//! answer without chunked encoding), loopback addresses only, no dependency.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Largest response body read.
pub const RESPONSE_BYTES_MAX: u64 = 64 << 20;

/// `GET http://{addr}{path}`: the status code and the body.
pub fn get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(RESPONSE_BYTES_MAX).read_to_end(&mut raw)?;
    Ok(split_response(&raw))
}

/// Percent-encodes a query-string value (RFC 3986 unreserved characters stay).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends `request` (raw bytes) on a fresh connection to `addr` and reads the answer until the
/// server closes the connection, the head and a `Content-Length` body have arrived, or
/// `timeout` passes: the status code (0 when nothing arrived) and the body.
pub fn exchange(addr: &str, request: &[u8], timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request)?;
    read_response(&mut stream, timeout)
}

/// Reads one HTTP/1 response from `stream` (see [`exchange`]); a body without
/// `Content-Length` is read until the connection closes.
pub fn read_response(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<(u16, String)> {
    let deadline = std::time::Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            // A reset after the answer arrived (the server closed with unread input).
            Err(_) if !raw.is_empty() => break,
            Err(e) => return Err(e),
        }
        if complete_response(&raw) || raw.len() as u64 >= RESPONSE_BYTES_MAX {
            break;
        }
    }
    Ok(split_response(&raw))
}

/// `(status, body)` of a raw HTTP/1 response (status 0 when there is no status line).
fn split_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Whether `raw` holds a whole response head and its `Content-Length` body.
fn complete_response(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

/// `POST {path}` with a JSON body: the status code and the body.
pub fn post(
    addr: &str,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, request.as_bytes(), timeout)
}

/// [`post`] that fails the test unless the answer is 200 with JSON.
pub fn post_json(
    addr: &str,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> serde_json::Value {
    let (status, text) =
        post(addr, path, body, timeout).unwrap_or_else(|e| panic!("POST {path} to {addr}: {e}"));
    assert_eq!(status, 200, "POST {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
}
