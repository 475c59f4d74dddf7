//! Races and an unreachable database: the answers stay the specified codes.

use std::{sync::Arc, time::Duration};

use kms::proto::kms::v1 as pb;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tonic::Code;

use crate::{
    both_backends,
    common::{Backend, TestServer, authed},
};

both_backends!(
    concurrent_creates_of_one_name_have_one_winner,
    concurrent_rotations_leave_one_current_secret,
    concurrent_registrations_make_one_account,
);

fn create(name: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        service_name: name.into(),
        api_key: None,
        description: String::new(),
        ttl_seconds: 0,
    }
}

async fn concurrent_creates_of_one_name_have_one_winner(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let calls = (0..24).map(|_| {
        let mut keys = server.keys();
        let admin = admin.clone();
        tokio::spawn(async move { keys.create_key(authed(create("race"), &admin)).await })
    });
    let mut ok = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(s.code(), Code::AlreadyExists, "{s:?}"),
        }
    }
    assert_eq!(ok, 1);
    server.stop().await;
}

async fn concurrent_rotations_leave_one_current_secret(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    keys.create_key(authed(create("spin"), &admin))
        .await
        .unwrap();
    let calls = (0..16).map(|i| {
        let mut keys = server.keys();
        let admin = admin.clone();
        // Half with a grace period, half without.
        let grace = if i % 2 == 0 { 0 } else { 600 };
        tokio::spawn(async move {
            keys.rotate_key(authed(
                pb::RotateKeyRequest {
                    service_name: "spin".into(),
                    grace_period_seconds: grace,
                },
                &admin,
            ))
            .await
        })
    });
    let mut returned = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        returned.push(
            call.await
                .unwrap()
                .expect("every rotation succeeds")
                .into_inner()
                .api_key,
        );
    }
    let current = keys
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "spin".into(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    assert!(returned.contains(&current));
    // Exactly one current secret is stored.
    use kms::store::entities::api_key_secret;
    use sea_orm::{ColumnTrait, Database, EntityTrait, PaginatorTrait, QueryFilter};
    let db = Database::connect(server.db_url()).await.unwrap();
    let current_rows = api_key_secret::Entity::find()
        .filter(api_key_secret::Column::RetiresAt.is_null())
        .count(&db)
        .await
        .unwrap();
    assert_eq!(current_rows, 1);
    db.close().await.unwrap();
    server.stop().await;
}

async fn concurrent_registrations_make_one_account(backend: Backend) {
    let server = TestServer::start(backend).await;
    let calls = (0..8).map(|i| {
        let mut auth = server.auth();
        tokio::spawn(async move {
            auth.register(pb::RegisterRequest {
                username: "same".into(),
                password: format!("password-number-{i}"),
                roles: vec![],
            })
            .await
        })
    });
    let mut ok = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(s.code(), Code::AlreadyExists, "{s:?}"),
        }
    }
    assert_eq!(ok, 1);
    server.stop().await;
}

/// A TCP proxy to PostgreSQL that can be cut (every connection dropped, new ones
/// refused) and restored on the same port.
pub struct Proxy {
    port: u16,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the PostgreSQL of `base`: (proxy, the URL through it, upstream).
    pub async fn in_front_of(base: &str) -> (Self, String, String) {
        let url = url_parts::Parts::parse(base);
        let proxy = Self::start(0, url.host_port.clone()).await;
        let proxied = url.with_host_port(&format!("127.0.0.1:{}", proxy.port));
        (proxy, proxied, url.host_port)
    }

    pub async fn start(port: u16, upstream: String) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(Notify::new());
        let stop = cut.clone();
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    () = stop.notified() => break,
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let upstream = upstream.clone();
                        pipes.spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                }
            }
            pipes.abort_all();
        });
        Self { port, cut, task }
    }

    pub async fn cut(self) -> u16 {
        self.cut.notify_one();
        self.task.await.unwrap();
        self.port
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_answers_unavailable_then_recovers() {
    let Some(Backend::Postgres(base)) = Backend::postgres() else {
        eprintln!("KMS_TEST_POSTGRES_URL not set: skipped");
        return;
    };
    let url: url_parts::Parts = url_parts::Parts::parse(&base);
    let proxy = Proxy::start(0, url.host_port.clone()).await;
    let proxied = url.with_host_port(&format!("127.0.0.1:{}", proxy.port));
    let server = TestServer::start(Backend::Postgres(proxied)).await;
    let admin = server.admin_token().await;
    let mut keys = server.keys();
    keys.create_key(authed(create("before"), &admin))
        .await
        .unwrap();

    let port = proxy.cut().await;
    let started = std::time::Instant::now();
    let err = keys
        .get_key(authed(
            pb::GetKeyRequest {
                service_name: "before".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().to_lowercase().contains("select"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed fast enough"
    );
    let err = server
        .auth()
        .login(pb::LoginRequest {
            username: crate::common::ADMIN.into(),
            password: crate::common::ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // ext_authz cannot check an API key either: a gRPC error for Envoy's
    // failure_mode_allow to decide, never an allow or a denial.
    let err = crate::ext_authz::client(server.channel.clone())
        .check(crate::ext_authz::check_request(&[(
            "x-api-key",
            "some-api-key-some-api-key-some-api-key",
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // The database returns on the same address: calls succeed again, no restart.
    let _proxy = Proxy::start(port, url.host_port.clone()).await;
    let mut recovered = false;
    for _ in 0..40 {
        if keys
            .get_key(authed(
                pb::GetKeyRequest {
                    service_name: "before".into(),
                },
                &admin,
            ))
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "the server did not recover after the database returned"
    );
    server.stop().await;
}

/// Just enough URL handling to swap the host:port of a postgres:// URL.
mod url_parts {
    pub struct Parts {
        prefix: String,
        pub host_port: String,
        suffix: String,
    }

    impl Parts {
        pub fn parse(url: &str) -> Self {
            let (scheme, rest) = url.split_once("://").unwrap();
            let (authority, suffix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let (userinfo, host_port) = match authority.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h.to_owned()),
                None => (String::new(), authority.to_owned()),
            };
            let host_port = if host_port.contains(':') {
                host_port
            } else {
                format!("{host_port}:5432")
            };
            Self {
                prefix: format!("{scheme}://{userinfo}"),
                host_port,
                suffix: suffix.to_owned(),
            }
        }

        pub fn with_host_port(&self, host_port: &str) -> String {
            format!("{}{host_port}{}", self.prefix, self.suffix)
        }
    }
}
