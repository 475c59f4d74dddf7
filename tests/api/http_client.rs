//! A small HTTP/1.1 client on hyper for the REST tests: any method, headers, a raw or
//! JSON body, one connection per request.

use std::net::SocketAddr;

use http::{HeaderMap, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub struct Http {
    addr: SocketAddr,
}

pub struct Call {
    addr: SocketAddr,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    pub fn call(&self, method: Method, path: &str) -> Call {
        Call {
            addr: self.addr,
            method,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(&self, path: &str) -> Call {
        self.call(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Call {
        self.call(Method::POST, path)
    }

    pub fn delete(&self, path: &str) -> Call {
        self.call(Method::DELETE, path)
    }

    /// POST /login; the access token, after checking the exact answer shape.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let reply = self
            .post("/login")
            .json(serde_json::json!({"username": username, "password": password}))
            .send()
            .await;
        assert_eq!(reply.status, 200, "login {username}: {reply:?}");
        let body = reply.json();
        let fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields.len(), 2, "{body}");
        assert_eq!(body["token_type"], "bearer");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

impl Call {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn json(self, body: Value) -> Self {
        self.raw("application/json", serde_json::to_vec(&body).unwrap())
    }

    pub fn raw(self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.body(body).header("content-type", content_type)
    }

    /// A body without a content type.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub async fn send(self) -> Reply {
        let response = self.open().await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: body.to_vec(),
        }
    }

    /// The response with its body unread: for streams.
    pub async fn open(self) -> http::Response<hyper::body::Incoming> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(self.method)
            .uri(&self.path)
            .header(header::HOST, self.addr.to_string());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(self.body)))
            .unwrap();
        sender.send_request(request).await.unwrap()
    }
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The `detail` of an error answer, which must be the only field.
    pub fn detail(&self) -> String {
        let body = self.json();
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
        body["detail"].as_str().unwrap().to_owned()
    }

    /// Asserts the status and that `detail` mentions `needle`.
    #[track_caller]
    pub fn expect(&self, status: u16, needle: &str) {
        assert_eq!(
            self.status,
            status,
            "{self:?} {:?}",
            String::from_utf8_lossy(&self.body)
        );
        let detail = self.detail();
        assert!(
            detail.contains(needle),
            "detail {detail:?} should mention {needle:?}"
        );
    }
}
