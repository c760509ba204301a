//! A minimal stand-in for the Hugging Face Hub's file endpoint on 127.0.0.1, enough for
//! `hf-hub`'s sync client: `GET /{org}/{name}/resolve/{revision}/{file}` with `Range` support,
//! the `etag` and `x-repo-commit` headers, and 404 for unknown files. Requests are logged so a
//! test can assert what was (not) downloaded. Bounded: it serves at most `max_requests`.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub struct HubServer {
    pub endpoint: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Serves `files` (name → bytes) of repo `repo_id` at revision `main`.
pub fn serve(repo_id: &str, files: HashMap<String, Vec<u8>>, max_requests: usize) -> HubServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let prefix = format!("/{repo_id}/resolve/main/");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut range: Option<(usize, Option<usize>)> = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse().unwrap(), b.parse().ok()));
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            log2.lock().unwrap().push(path.clone());
            let body = path.strip_prefix(&prefix).and_then(|f| files.get(f));
            let response = match body {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
                Some(bytes) => {
                    let (start, end) = match range {
                        Some((a, b)) => (
                            a.min(bytes.len()),
                            b.map(|b| b + 1).unwrap_or(bytes.len()).min(bytes.len()),
                        ),
                        None => (0, bytes.len()),
                    };
                    let etag = format!("{:016x}", fnv(bytes));
                    let mut head = format!(
                        "HTTP/1.1 {}\r\netag: \"{etag}\"\r\nx-repo-commit: {COMMIT}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        if range.is_some() { "206 Partial Content" } else { "200 OK" },
                        end - start
                    );
                    if range.is_some() {
                        head += &format!(
                            "Content-Range: bytes {start}-{}/{}\r\n",
                            end.saturating_sub(1),
                            bytes.len()
                        );
                    }
                    let mut r = (head + "\r\n").into_bytes();
                    r.extend_from_slice(&bytes[start..end]);
                    r
                }
            };
            let _ = stream.write_all(&response);
            let _ = stream.flush();
        }
    });
    HubServer { endpoint, log }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}
