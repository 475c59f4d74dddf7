//! The console's security properties over plain HTTP, where headers, cookies and
//! forged requests are seen exactly: headers on every page, cookie flags, CSRF,
//! sign-out, roles, and KMS_UI=false.

use crate::{
    common::{ADMIN, ADMIN_PASSWORD, Backend, TestServer},
    http_client::{Http, Reply},
};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const FORM: &str = "application/x-www-form-urlencoded";

/// A browser's worth of state: the session cookie and the page's CSRF token.
pub struct Session {
    pub http: Http,
    pub cookie: String,
    pub csrf: String,
}

fn body(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// `name=value` of the `kms_ui` Set-Cookie.
fn session_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("kms_ui="))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = page.find(marker).expect("a CSRF field") + marker.len();
    page[start..][..page[start..].find('"').unwrap()].to_owned()
}

fn form(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).unwrap()
}

impl Session {
    pub async fn visitor(server: &TestServer) -> Self {
        let http = Http::new(server.http_addr);
        let reply = http.get("/ui/login").send().await;
        assert_eq!(reply.status, 200);
        Self {
            cookie: session_cookie(&reply).unwrap(),
            csrf: csrf_of(&body(&reply)),
            http,
        }
    }

    pub async fn sign_in(server: &TestServer, username: &str, password: &str) -> Self {
        let mut s = Self::visitor(server).await;
        let reply = s
            .post(
                "/ui/login",
                &[("username", username), ("password", password)],
                true,
            )
            .await;
        assert_eq!(reply.status, 303, "{}", body(&reply));
        let reply = s.get("/ui/account").await;
        assert_eq!(reply.status, 200);
        s.csrf = csrf_of(&body(&reply));
        s
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let reply = self
            .http
            .get(path)
            .header("cookie", &self.cookie)
            .send()
            .await;
        if let Some(c) = session_cookie(&reply) {
            self.cookie = c;
        }
        reply
    }

    /// A form POST, with the CSRF token or without.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)], csrf: bool) -> Reply {
        let mut fields = fields.to_vec();
        let token = self.csrf.clone();
        if csrf {
            fields.push(("csrf_token", &token));
        }
        let reply = self
            .http
            .post(path)
            .header("cookie", &self.cookie)
            .raw(FORM, form(&fields))
            .send()
            .await;
        if let Some(c) = session_cookie(&reply) {
            self.cookie = c;
        }
        reply
    }
}

fn location(reply: &Reply) -> &str {
    reply.headers["location"].to_str().unwrap()
}

crate::both_backends!(
    session_cookies_open_only_under_loaded_data_keys,
    forged_cookies_are_a_visitor,
    a_session_too_large_for_a_cookie_is_refused_clearly,
);

/// A user whose roles make the access token too large for a 4 KiB cookie gets a
/// clear error on the sign-in page, not a silent bounce back to it. The API allows
/// at most 32 roles now (they fit); a user of the previous release may have more,
/// so the roles are written to the database directly, as that release could.
async fn a_session_too_large_for_a_cookie_is_refused_clearly(backend: Backend) {
    use kms::{
        domain::audit::{action, event, outcome},
        proto::kms::v1 as pb,
        store::{Store, StoreOptions},
    };
    let server = TestServer::start(backend).await;
    server
        .auth()
        .register(crate::common::authed(
            pb::RegisterRequest {
                username: "many-roles".into(),
                password: "many-roles-password".into(),
                roles: vec!["user".into()],
            },
            &server.admin_token().await,
        ))
        .await
        .unwrap();
    let store = Store::connect(&StoreOptions {
        url: server.db_url().to_owned(),
        max_connections: 2,
    })
    .await
    .unwrap();
    let roles: Vec<String> = (0..100)
        .map(|i| format!("role-{i:03}-{}", "x".repeat(22)))
        .collect();
    let audit = event(
        "operator",
        action::ROLES_SET,
        "many-roles",
        outcome::SUCCESS,
    );
    store
        .set_roles("many-roles", &roles, chrono::Utc::now(), audit)
        .await
        .unwrap();
    let mut s = Session::visitor(&server).await;
    let login = [
        ("username", "many-roles"),
        ("password", "many-roles-password"),
    ];
    let reply = s.post("/ui/login", &login, true).await;
    assert_eq!(reply.status, 500, "{}", body(&reply));
    assert!(
        body(&reply).contains("too large for a browser"),
        "{}",
        body(&reply)
    );
    assert!(session_cookie(&reply).is_some_and(|c| c.len() <= 4096));
}

/// The AAD the console seals its session cookie with.
const SESSION_AAD: &[u8] = b"kms web console session v1";

/// `Keyring::open_loaded`, which opens session cookies: a value under a data key this
/// replica has not loaded, or under the master key, is refused without loading or
/// trying the master key, though `open` opens both.
async fn session_cookies_open_only_under_loaded_data_keys(backend: Backend) {
    use kms::{
        domain::keyring::Keyring,
        store::{Store, StoreOptions},
    };
    let server = TestServer::start(backend).await;
    let store = Store::connect(&StoreOptions {
        url: server.db_url().to_owned(),
        max_connections: 2,
    })
    .await
    .unwrap();
    let budget = std::time::Duration::from_secs(5);
    let master = server.config().open_master_key().unwrap();
    let here = Keyring::unlock(store.clone(), master, budget)
        .await
        .unwrap();
    let under_loaded = here.seal(b"session", SESSION_AAD).unwrap();
    assert_eq!(
        *here.open_loaded(&under_loaded.bytes, SESSION_AAD).unwrap(),
        b"session"
    );
    // Another replica rotates: `here` has not loaded the new data key.
    crate::keyring::rotate(&server.channel, &server.admin_token().await).await;
    let master = server.config().open_master_key().unwrap();
    let there = Keyring::unlock(store, master, budget).await.unwrap();
    let under_new = there.seal(b"session", SESSION_AAD).unwrap();
    assert_ne!(under_new.data_key_id, under_loaded.data_key_id);
    // Refused, and not loaded by trying (a load would have opened it).
    assert!(here.open_loaded(&under_new.bytes, SESSION_AAD).is_err());
    assert!(here.open_loaded(&under_new.bytes, SESSION_AAD).is_err());
    // The master key's layout: refused, though the master key would open it.
    let legacy = server
        .config()
        .open_master_key()
        .unwrap()
        .seal(b"session", SESSION_AAD)
        .unwrap();
    assert!(here.open_loaded(&legacy, SESSION_AAD).is_err());
    assert_eq!(*here.open(&legacy, SESSION_AAD).await.unwrap(), b"session");
    // `open` loads the new key; from then on `open_loaded` opens under it too.
    assert!(here.open(&under_new.bytes, SESSION_AAD).await.is_ok());
    assert!(here.open_loaded(&under_new.bytes, SESSION_AAD).is_ok());
    // Junk: refused.
    for junk in [&b""[..], &[2, 0, 0, 0, 99, 1, 2, 3][..], &[9; 64][..]] {
        assert!(here.open_loaded(junk, SESSION_AAD).is_err());
    }
}

/// Fifty forged `kms_ui` cookies (junk, the master key's layout, data key ids the
/// keyring does not have) and a genuine one after them: only the first two are
/// tried, none opens, and the request is a visitor's.
async fn forged_cookies_are_a_visitor(backend: Backend) {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let server = TestServer::start(backend).await;
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(s.get("/ui/account").await.status, 200);
    let mut forged = Vec::new();
    for i in 0..50_u8 {
        let mut sealed = match i % 3 {
            0 => vec![1],                // sealed under the master key
            1 => vec![2, 0, 0, 0x7f, i], // an unknown data key
            _ => vec![i],                // no known layout
        };
        sealed.extend(std::iter::repeat_n(i, 60));
        forged.push(format!("kms_ui={}", URL_SAFE_NO_PAD.encode(&sealed)));
    }
    forged.push(s.cookie.clone());
    let reply = s
        .http
        .get("/ui/account")
        .header("cookie", &forged.join("; "))
        .send()
        .await;
    assert_eq!(reply.status, 303);
    assert_eq!(location(&reply), "/ui/login");
    // The genuine cookie alone still works: nothing above ended the session.
    assert_eq!(s.get("/ui/account").await.status, 200);
}

crate::both_backends!(
    every_answer_carries_the_security_headers,
    posts_without_the_csrf_token_are_refused,
    sign_out_ends_the_session,
    users_without_admin_get_403_on_admin_pages,
    revoke_needs_the_typed_name,
    an_expiring_access_token_is_renewed,
    users_change_their_password,
    two_requests_renewing_at_once_keep_the_session,
);

async fn every_answer_carries_the_security_headers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    let http = Http::new(server.http_addr);
    let visitor = http.get("/ui/login").send().await;
    let mut replies = vec![
        visitor,
        http.get("/ui/static/app.js").send().await,
        http.get("/ui/static/app.css").send().await,
        http.get("/ui/nothing-here").send().await,
    ];
    for path in [
        "/ui/keys",
        "/ui/keys/new",
        "/ui/account",
        "/ui/users",
        "/ui/audit/live",
    ] {
        replies.push(s.get(path).await);
    }
    // A method a console path does not take: 405, with the headers all the same.
    let wrong_method = http.get("/ui/logout").send().await;
    assert_eq!(wrong_method.status, 405, "{wrong_method:?}");
    replies.push(wrong_method);
    for reply in &replies {
        let h = &reply.headers;
        assert_eq!(h["content-security-policy"], CSP, "{reply:?}");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    assert_eq!(replies[3].status, 404);
    assert!(body(&replies[4]).contains("data-testid=\"signed-in-as\""));
    // No inline script anywhere: scripts come from /ui/static/ only.
    assert!(!body(&replies[4]).contains("<script>"));

    // The cookie: HttpOnly, SameSite=Strict, Path=/ui, an idle Max-Age, not Secure
    // without TLS (a unit test covers Secure).
    let set = replies[0].headers["set-cookie"].to_str().unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=900"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");

    // /ui goes to /ui/, which sends a visitor to the sign-in page.
    let reply = http.get("/ui").send().await;
    assert_eq!(reply.status, 308);
    assert_eq!(location(&reply), "/ui/");
    let reply = http.get("/ui/").send().await;
    assert_eq!(location(&reply), "/ui/login");
}

async fn posts_without_the_csrf_token_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    let key = [("service_name", "forged")];
    // Without the token, with a wrong one, or as another content type: 403.
    let reply = s.post("/ui/keys", &key, false).await;
    assert_eq!(reply.status, 403);
    let right = s.csrf.clone();
    s.csrf = format!("{}x", &right[..right.len() - 1]);
    assert_eq!(s.post("/ui/keys", &key, true).await.status, 403);
    s.csrf = right;
    let reply = s
        .http
        .post("/ui/keys")
        .header("cookie", &s.cookie)
        .json(serde_json::json!({"service_name": "forged", "csrf_token": s.csrf}))
        .send()
        .await;
    assert_eq!(reply.status, 403);
    // Sign-in is guarded the same way.
    let mut visitor = Session::visitor(&server).await;
    let login = [("username", ADMIN), ("password", ADMIN_PASSWORD)];
    assert_eq!(visitor.post("/ui/login", &login, false).await.status, 403);
    // Nothing was created; with the token it is.
    let reply = s.get("/ui/keys").await;
    assert!(!body(&reply).contains("forged"));
    let reply = s.post("/ui/keys", &key, true).await;
    assert_eq!(reply.status, 201, "{}", body(&reply));
    assert!(body(&reply).contains("data-testid=\"secret\""));
}

async fn sign_out_ends_the_session(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    let old_cookie = s.cookie.clone();
    assert_eq!(s.get("/ui/keys").await.status, 200);
    let reply = s.post("/ui/logout", &[], true).await;
    assert_eq!(reply.status, 303);
    assert!(location(&reply).starts_with("/ui/login"));
    let cleared = reply.headers["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old cookie, replayed: its login is revoked, so it is no session.
    let reply = Http::new(server.http_addr)
        .get("/ui/keys")
        .header("cookie", &old_cookie)
        .send()
        .await;
    assert_eq!(reply.status, 303);
    assert!(location(&reply).starts_with("/ui/login"));
    // A cookie that is not sealed by the server is no session either.
    let reply = Http::new(server.http_addr)
        .get("/ui/keys")
        .header("cookie", "kms_ui=AAAA")
        .send()
        .await;
    assert_eq!(location(&reply), "/ui/login");
}

async fn users_without_admin_get_403_on_admin_pages(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user_token("alice").await;
    let mut s = Session::sign_in(&server, "alice", "alice-password-123").await;
    let reply = s.get("/ui/").await;
    assert_eq!(location(&reply), "/ui/account");
    let reply = s.get("/ui/account").await;
    assert_eq!(reply.status, 200);
    assert!(body(&reply).contains("alice"));
    for path in [
        "/ui/keys",
        "/ui/keys/new",
        "/ui/key?service_name=x",
        "/ui/users",
        "/ui/audit",
        "/ui/audit/live",
        "/ui/audit/live/events?after=0",
        "/ui/keyring",
    ] {
        let reply = s.get(path).await;
        assert_eq!(reply.status, 403, "{path}");
        assert!(body(&reply).contains("needs the admin role"), "{path}");
    }
    let reply = s.post("/ui/keys", &[("service_name", "mine")], true).await;
    assert_eq!(reply.status, 403);
    // No admin link in the navigation.
    assert!(!body(&s.get("/ui/account").await).contains("href=\"/ui/keys\""));
}

async fn revoke_needs_the_typed_name(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(
        s.post("/ui/keys", &[("service_name", "svc")], true)
            .await
            .status,
        201
    );
    let reply = s
        .post(
            "/ui/key/revoke",
            &[("service_name", "svc"), ("confirm_service_name", "sv")],
            true,
        )
        .await;
    assert_eq!(reply.status, 422);
    assert!(body(&reply).contains("confirm_service_name"));
    assert!(body(&s.get("/ui/keys").await).contains("data-testid=\"key-row\""));
    let reply = s
        .post(
            "/ui/key/revoke",
            &[("service_name", "svc"), ("confirm_service_name", "svc")],
            true,
        )
        .await;
    assert_eq!(reply.status, 303);
    assert!(!body(&s.get("/ui/keys").await).contains("data-testid=\"key-row\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_off_is_404() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.ui = false).await;
    let http = Http::new(server.http_addr);
    for path in ["/ui", "/ui/", "/ui/login", "/ui/static/app.js"] {
        assert_eq!(http.get(path).send().await.status, 404, "{path}");
    }
    // The rest of the listener is unchanged.
    assert_eq!(http.get("/health").send().await.status, 200);
}

async fn an_expiring_access_token_is_renewed(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.access_token_ttl_seconds = 2).await;
    let mut s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    let first = s.cookie.clone();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // The access token in the cookie has expired: Refresh renews it.
    let reply = s.get("/ui/keys").await;
    assert_eq!(reply.status, 200, "{}", body(&reply));
    assert_ne!(s.cookie, first);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(s.get("/ui/keys").await.status, 200);
    // At least the two renewals above; on a slow machine the audit page's own request
    // may come past the 2 s token's half-life and renew once more.
    let reply = s.get("/ui/audit?action=token_refresh").await;
    let renewals = body(&reply).matches("data-testid=\"audit-row\"").count();
    assert!((2..=3).contains(&renewals), "{renewals} renewals");
    // Signing out ends the renewed login as well.
    let renewed = s.cookie.clone();
    assert_eq!(s.post("/ui/logout", &[], true).await.status, 303);
    let reply = Http::new(server.http_addr)
        .get("/ui/keys")
        .header("cookie", &renewed)
        .send()
        .await;
    assert_eq!(reply.status, 303);
}

async fn users_change_their_password(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user_token("bob").await;
    let mut s = Session::sign_in(&server, "bob", "bob-password-123").await;
    let change = |old: &'static str, new: &'static str, again: &'static str| {
        [
            ("old_password", old),
            ("new_password", new),
            ("confirm_password", again),
        ]
    };
    let reply = s
        .post(
            "/ui/account/password",
            &change(
                "bob-password-123",
                "new-password-4567",
                "new-password-45678",
            ),
            true,
        )
        .await;
    assert_eq!(reply.status, 422);
    assert!(body(&reply).contains("confirm_password"));
    let reply = s
        .post(
            "/ui/account/password",
            &change(
                "wrong-password-123",
                "new-password-4567",
                "new-password-4567",
            ),
            true,
        )
        .await;
    assert_eq!(reply.status, 403);
    assert!(body(&reply).contains("old_password"));
    let old_cookie = s.cookie.clone();
    let reply = s
        .post(
            "/ui/account/password",
            &change("bob-password-123", "new-password-4567", "new-password-4567"),
            true,
        )
        .await;
    assert_eq!(reply.status, 303);
    assert_eq!(location(&reply), "/ui/login?done=password");
    // Every token of the user is refused now: the session is over.
    let reply = Http::new(server.http_addr)
        .get("/ui/account")
        .header("cookie", &old_cookie)
        .send()
        .await;
    assert_eq!(reply.status, 303);
    let mut s = Session::sign_in(&server, "bob", "new-password-4567").await;
    assert_eq!(s.get("/ui/account").await.status, 200);
}

/// Two requests with the same cookie whose access token has expired (two tabs): both
/// renew it with the one refresh token, and neither trips reuse detection.
async fn two_requests_renewing_at_once_keep_the_session(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.access_token_ttl_seconds = 2).await;
    let s = Session::sign_in(&server, ADMIN, ADMIN_PASSWORD).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let get = |cookie: String| {
        let http = Http::new(server.http_addr);
        async move { http.get("/ui/keys").header("cookie", &cookie).send().await }
    };
    let (a, b) = tokio::join!(get(s.cookie.clone()), get(s.cookie.clone()));
    assert_eq!((a.status, b.status), (200, 200));
    for reply in [a, b] {
        let cookie = session_cookie(&reply).unwrap();
        assert_eq!(get(cookie).await.status, 200);
    }
}

/// Sign-in goes through the login throttle of Auth.Login: past the allowed failures
/// the page answers 429 with `Retry-After`, the right password included, as gRPC
/// answers RESOURCE_EXHAUSTED with `retry-after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_throttled_like_login() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.login_throttle = kms::domain::throttle::ThrottleSettings {
            max_failures: 2,
            lockout_base: std::time::Duration::from_secs(30),
            ..Default::default()
        };
    })
    .await;
    let mut s = Session::visitor(&server).await;
    let wrong = [("username", ADMIN), ("password", "not-the-password")];
    for _ in 0..2 {
        let reply = s.post("/ui/login", &wrong, true).await;
        assert_eq!(reply.status, 401, "{}", body(&reply));
    }
    let right = [("username", ADMIN), ("password", ADMIN_PASSWORD)];
    let reply = s.post("/ui/login", &right, true).await;
    assert_eq!(reply.status, 429, "{}", body(&reply));
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    assert!(body(&reply).contains("Too many failed sign-ins"));
    server.stop().await;
}
