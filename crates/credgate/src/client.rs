//! A small client for the admin API, used by `credgate accounts …`.

use bytes::Bytes;
use credgate_crypto::SecretString;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::exit::{Code, Failure};

#[derive(Debug)]
pub struct AdminClient {
    base: String,
    /// Sent as the bearer token; never printed.
    token: Option<SecretString>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    pub fn new(base: String, token: Option<SecretString>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request and returns the JSON answer, or a failure whose exit code
    /// follows the API's error code.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        let payload = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| Failure::new(Code::Failure, format!("bad request to {url}: {e}")))?;
        let call = self.http.request(request);
        let response = tokio::time::timeout(std::time::Duration::from_secs(30), call)
            .await
            .map_err(|_| {
                Failure::new(
                    Code::Unavailable,
                    format!("admin API at {} did not answer in 30 s", self.base),
                )
            })?
            .map_err(|e| {
                Failure::new(
                    Code::Unavailable,
                    format!("cannot reach the admin API at {}: {e}", self.base),
                )
            })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::new(Code::Unavailable, format!("admin API: {e}")))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["message"].as_str().unwrap_or("unexpected answer").to_owned();
        let code = match status {
            StatusCode::UNAUTHORIZED => Code::Unavailable,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::CONFLICT => Code::Conflict,
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY | StatusCode::PAYLOAD_TOO_LARGE => Code::Invalid,
            _ => Code::Failure,
        };
        Err(Failure::new(code, format!("{message} (HTTP {})", status.as_u16())))
    }
}
