//! The web console at `/ui/` on the HTTP listener: server-rendered pages (maud) over
//! the same domain services as gRPC and the REST API, so every rule, audit row and
//! throttle applies alike. `KMS_UI=false` leaves it out of the router (404).
//!
//! Security: the session is a sealed cookie (`session`), checked and re-issued by one
//! layer (`guard`) that also refuses any state-changing request without the CSRF token
//! (`csrf`); every answer carries a strict Content-Security-Policy (scripts and styles
//! only from `/ui/static/`, no inline script), `no-referrer`, `no-store` and `nosniff`;
//! secrets are only in answers to POSTs, never in URLs.

mod csrf;
mod guard;
mod layout;
mod pages;
mod renew;
mod session;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, HeaderValue, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};

use super::HttpState;
use guard::Visitor;
use layout::Viewer;
use pages::{account, audit, audit_live, error_page, key, keyring, keys, sign_in, users};

/// The console's settings and state.
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// Serve `/ui/` (KMS_UI).
    pub enabled: bool,
    /// The HTTP listener speaks TLS: the cookie is `Secure`.
    pub secure_cookie: bool,
    renewals: renew::Renewals,
}

impl UiSettings {
    pub fn new(enabled: bool, secure_cookie: bool) -> Self {
        Self {
            enabled,
            secure_cookie,
            renewals: renew::Renewals::default(),
        }
    }
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");

pub fn router(state: &HttpState) -> Router<HttpState> {
    if !state.ui.enabled {
        return Router::new();
    }
    let pages = Router::new()
        .route("/ui/", get(sign_in::home))
        .route("/ui/login", get(sign_in::form).post(sign_in::submit))
        .route("/ui/logout", post(sign_in::sign_out))
        .route("/ui/keys", get(keys::list).post(keys::create))
        .route("/ui/keys/new", get(keys::new_form))
        .route("/ui/key", get(key::detail))
        .route("/ui/key/reveal", post(key::reveal))
        .route("/ui/key/rotate", post(key::rotate))
        .route("/ui/key/revoke", post(key::revoke))
        .route("/ui/key/enabled", post(key::set_enabled))
        .route("/ui/key/update", post(key::update))
        .route("/ui/users", get(users::list).post(users::register))
        .route("/ui/user", get(users::detail))
        .route("/ui/user/roles", post(users::set_roles))
        .route("/ui/user/delete", post(users::delete))
        .route("/ui/audit", get(audit::list))
        .route("/ui/audit/live", get(audit_live::page_view))
        .route(audit_live::STREAM_PATH, get(audit_live::stream))
        .route("/ui/keyring", get(keyring::show))
        .route("/ui/keyring/rotate", post(keyring::rotate))
        .route("/ui/keyring/rewrap", post(keyring::rewrap))
        .route("/ui/keyring/signing-key", post(keyring::rotate_signing_key))
        .route("/ui/account", get(account::show))
        .route("/ui/account/password", post(account::change_password))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(middleware::from_fn_with_state(state.clone(), guard::layer));
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/static/app.css",
            get(|| async { asset("text/css", APP_CSS) }),
        )
        .route(
            "/ui/static/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .merge(pages)
        .layer(DefaultBodyLimit::max(state.max_request_bytes))
        .layer(middleware::from_fn(security_headers))
}

async fn not_found(Visitor(session): Visitor) -> Response {
    error_page::not_found(Viewer {
        caller: session.caller.as_ref(),
        csrf: &session.csrf,
    })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// On every answer under `/ui`, pages, assets and errors alike.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    with_security_headers(&mut response);
    response
}

/// Whether `path` is the console's: answers there carry its headers, whatever made them.
pub fn is_console_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// A method a console path does not take (answered by the HTTP router's fallback,
/// outside the console's layers), with the console's security headers all the same.
pub fn method_not_allowed() -> Response {
    let mut response = (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Method not allowed",
    )
        .into_response();
    with_security_headers(&mut response);
    response
}

fn with_security_headers(response: &mut Response) {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
}
