//! A logged-in connection: every call carries the stored access token, which is
//! refreshed silently (Auth.Refresh) when it is expired or about to be, and once more
//! when the server answers UNAUTHENTICATED, before the call is tried again.
//!
//! Refresh tokens are single use and presenting a spent one ends the whole login, so
//! two `kms` processes must not both spend the same one: refreshing holds a lock file
//! beside credentials.json, and whoever comes second takes the tokens the first stored.

use std::time::Duration;

use tonic::{
    Code, Request, Response, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use super::{
    ClientOptions,
    connect::{connect, server_key},
    credentials::{CredentialStore, Login},
    error::CliError,
};
use crate::proto::kms::v1::{
    self as pb, audit_client::AuditClient, auth_client::AuthClient, keyring_client::KeyringClient,
    keys_client::KeysClient, users_client::UsersClient,
};

/// A token with less left than this is refreshed before use.
const REFRESH_MARGIN_SECONDS: i64 = 10;
/// The longest a unary call may take.
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds `authorization: Bearer ...` (and a deadline) to every call.
#[derive(Clone)]
pub struct Bearer {
    value: MetadataValue<Ascii>,
    timeout: Option<Duration>,
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// The clients of the services, each sending the token.
pub struct Clients {
    pub auth: AuthClient<Authed>,
    pub keys: KeysClient<Authed>,
    pub users: UsersClient<Authed>,
    pub audit: AuditClient<Authed>,
    pub keyring: KeyringClient<Authed>,
}

pub struct Session {
    pub server: String,
    channel: Channel,
    store: CredentialStore,
    login: Login,
}

pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The stored form of a Login or Refresh answer.
pub fn login_from(username: &str, answer: pb::LoginResponse) -> Login {
    let now = unix_now();
    Login {
        username: username.to_owned(),
        access_token: answer.access_token,
        access_expires_at: now.saturating_add(answer.expires_in),
        refresh_token: answer.refresh_token,
        refresh_expires_at: now.saturating_add(answer.refresh_expires_in),
    }
}

impl Session {
    /// The stored login to the server of `options`, connected and fresh.
    pub async fn open(options: &ClientOptions) -> Result<Self, CliError> {
        let server = server_key(&options.server);
        let store = CredentialStore::new(options.config_dir.clone())?;
        let login = store.load(&server)?.ok_or_else(|| {
            CliError::not_logged_in(&server, &format!("not logged in to {server}"))
        })?;
        let channel = connect(options).await?;
        let mut session = Self {
            server,
            channel,
            store,
            login,
        };
        if session.login.access_expires_at.saturating_sub(unix_now()) < REFRESH_MARGIN_SECONDS {
            session.refresh().await?;
        }
        Ok(session)
    }

    pub fn username(&self) -> &str {
        &self.login.username
    }

    /// A unary call; refreshed and tried again once on UNAUTHENTICATED.
    pub async fn call<T>(
        &mut self,
        f: impl AsyncFnMut(Clients) -> Result<Response<T>, Status>,
    ) -> Result<T, CliError> {
        self.call_with(Some(UNARY_TIMEOUT), f).await
    }

    /// `call` with the deadline given (none for streams).
    pub async fn call_with<T>(
        &mut self,
        timeout: Option<Duration>,
        mut f: impl AsyncFnMut(Clients) -> Result<Response<T>, Status>,
    ) -> Result<T, CliError> {
        match f(self.clients(timeout)?).await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(status) if status.code() == Code::Unauthenticated => {}
            Err(status) => return Err(CliError::status(&status, &self.server)),
        }
        self.refresh().await?;
        f(self.clients(timeout)?)
            .await
            .map(Response::into_inner)
            .map_err(|status| CliError::status(&status, &self.server))
    }

    fn clients(&self, timeout: Option<Duration>) -> Result<Clients, CliError> {
        let value = format!("Bearer {}", self.login.access_token)
            .parse()
            .map_err(|_| {
                CliError::not_logged_in(&self.server, "the stored access token is damaged")
            })?;
        let bearer = Bearer { value, timeout };
        let channel = self.channel.clone();
        Ok(Clients {
            auth: AuthClient::with_interceptor(channel.clone(), bearer.clone()),
            keys: KeysClient::with_interceptor(channel.clone(), bearer.clone()),
            users: UsersClient::with_interceptor(channel.clone(), bearer.clone()),
            audit: AuditClient::with_interceptor(channel.clone(), bearer.clone()),
            keyring: KeyringClient::with_interceptor(channel, bearer),
        })
    }

    /// New tokens for the stored refresh token, unless another `kms` already got them.
    pub(super) async fn refresh(&mut self) -> Result<(), CliError> {
        let locked = self.store.lock()?;
        let now = unix_now();
        let ended = |why: &str| CliError::not_logged_in(&self.server, why);
        let current = locked
            .load(&self.server)?
            .ok_or_else(|| ended(&format!("not logged in to {}", self.server)))?;
        if current.access_token != self.login.access_token
            && current.access_expires_at.saturating_sub(now) >= REFRESH_MARGIN_SECONDS
        {
            self.login = current;
            return Ok(());
        }
        if current.refresh_expires_at <= now {
            locked.remove(&self.server)?;
            return Err(ended(&format!("the login to {} has expired", self.server)));
        }
        let mut request = Request::new(pb::RefreshRequest {
            refresh_token: current.refresh_token.clone(),
        });
        request.set_timeout(UNARY_TIMEOUT);
        match AuthClient::new(self.channel.clone()).refresh(request).await {
            Ok(answer) => {
                let login = login_from(&current.username, answer.into_inner());
                locked.save(&self.server, login.clone())?;
                self.login = login;
                Ok(())
            }
            Err(status) if status.code() == Code::Unauthenticated => {
                locked.remove(&self.server)?;
                Err(ended(&format!(
                    "the login to {} has ended ({})",
                    self.server,
                    status.message()
                )))
            }
            Err(status) => Err(CliError::status(&status, &self.server)),
        }
    }

    /// Forgets the stored login (the server ended it).
    pub fn forget(&self) -> Result<(), CliError> {
        self.store.remove(&self.server).map(|_| ())
    }

    /// Ends the login on the server and forgets it here.
    pub async fn logout(mut self) -> Result<(), CliError> {
        let ended = self
            .call(async |mut c| c.auth.logout(pb::LogoutRequest {}).await)
            .await;
        self.store.remove(&self.server)?;
        match ended {
            Err(e) if e.exit != super::error::EXIT_UNAUTHENTICATED => Err(e),
            _ => Ok(()),
        }
    }
}
