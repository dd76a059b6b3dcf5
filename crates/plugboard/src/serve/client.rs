//! The daemon's client, for the CLI: one HTTP/1.1 request per call over the Unix socket,
//! with hyper doing the HTTP.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/plugboard/plugboard.sock";

/// A client of the daemon at one socket.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON, or text for `/metrics`).
    pub body: String,
}

impl Client {
    /// A client for the daemon at `socket`.
    pub fn new(socket: &Path) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Self {
            socket: socket.to_path_buf(),
            runtime,
        })
    }

    /// Sends one request; `body` is sent as JSON.
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        self.runtime.block_on(self.send_async(method, path, body))
    }

    async fn send_async(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the daemon at {} (is `plugboard serve` running?)",
                    self.socket.display()
                )
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon failed")?;
        let conn = tokio::spawn(conn);
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "plugboard");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(bytes))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path} failed"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        let _ = conn.await;
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Sends a request and decodes a 2xx JSON answer; any other answer is an error
    /// carrying the daemon's message.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let answer = self.send(method, path, body)?;
        if !(200..300).contains(&answer.status) {
            let message = serde_json::from_str::<Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(answer.body);
            bail!(
                "the daemon refused {method} {path} ({}): {message}",
                answer.status
            );
        }
        let text = if answer.body.is_empty() {
            "null"
        } else {
            &answer.body
        };
        serde_json::from_str(text).with_context(|| {
            format!("the daemon's answer to {method} {path} is not the JSON expected")
        })
    }
}
