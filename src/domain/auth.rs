//! The Auth service: registering users, logging in, refreshing and ending logins,
//! introspecting tokens, and the signing keys (JWKS, rotation).

use std::{net::IpAddr, sync::Arc, time::Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::{
    Caller, Error, Result, Roles,
    audit::{self, action, outcome},
    sessions::{AuthFailure, Authenticator},
    signing::SigningKeys,
    throttle::{LoginThrottle, Refusal, retry_after_secs},
    token::{Claims, IssuedToken, TokenAuthority},
    users::{NewUser, RegisteredUser, UserCreator},
    validate,
};
use crate::{
    crypto::{
        digest,
        password::{PasswordHasherPool, Verification},
        random,
    },
    store::{NewRefreshToken, RefreshAudit, RefreshOutcome, Store, StoredUser},
};

const BAD_CREDENTIALS: &str = "incorrect username or password";

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub allow_registration: bool,
    pub password_min_bytes: usize,
    pub refresh_token_ttl_seconds: i64,
    /// How long after Login its refresh chain ends (`KMS_SESSION_MAX_LIFETIME_SECONDS`).
    pub session_max_lifetime_seconds: i64,
}

const LIFETIME_ENDED: &str = "this login reached its maximum lifetime \
     (KMS_SESSION_MAX_LIFETIME_SECONDS) and can no longer be refreshed: log in again";

/// Recognisable by secret scanners, like API keys' `kms_`.
const REFRESH_PREFIX: &str = "kmsr_";

/// What Login and Refresh hand out.
#[derive(Debug)]
pub struct LoginTokens {
    pub access: IssuedToken,
    pub refresh_token: String,
    pub refresh_expires_in: i64,
}

#[derive(Clone)]
pub struct AuthService {
    store: Store,
    hasher: PasswordHasherPool,
    authenticator: Arc<Authenticator>,
    settings: AuthSettings,
    /// The rules of a new user, shared with `kms user create` and the bootstrap admin.
    users: UserCreator,
    /// Asymmetric signing keys (EdDSA, RS256); `None` with the HS256 shared secret.
    signing: Option<SigningKeys>,
    /// Failed-login counters of this process (per replica, see `throttle`).
    throttle: LoginThrottle,
}

impl AuthService {
    /// Every dependency is named here, none set later: `throttle` is the one shared
    /// with `UserAdmin` (a password guessed through ChangePassword and through Login is
    /// the same guessing), and `signing` the keys the `authenticator`'s token
    /// authority was built from.
    pub fn new(
        store: Store,
        hasher: PasswordHasherPool,
        authenticator: Arc<Authenticator>,
        signing: Option<SigningKeys>,
        throttle: LoginThrottle,
        settings: AuthSettings,
    ) -> Self {
        Self {
            users: UserCreator::new(store.clone(), hasher.clone(), settings.password_min_bytes),
            store,
            hasher,
            authenticator,
            settings,
            signing,
            throttle,
        }
    }

    /// How long after Login its refresh chain ends (`KMS_SESSION_MAX_LIFETIME_SECONDS`).
    pub fn session_max_lifetime_seconds(&self) -> i64 {
        self.settings.session_max_lifetime_seconds
    }

    pub fn signing_keys(&self) -> Option<&SigningKeys> {
        self.signing.as_ref()
    }

    /// The public keys that verify tokens (empty with HS256: nothing is public).
    pub fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        self.tokens().jwks()
    }

    /// Admin: sign new tokens with a new key. The old key keeps verifying until every
    /// token it signed has expired. Returns the new `kid`.
    pub async fn rotate_signing_key(&self, caller: &Caller) -> Result<String> {
        super::require_admin(caller)?;
        match &self.signing {
            Some(signing) => signing.rotate(&caller.subject, self.tokens()).await,
            None => Err(Error::FailedPrecondition(
                "tokens are signed with the HS256 shared secret: rotate KMS_JWT_SECRET instead"
                    .into(),
            )),
        }
    }

    pub fn tokens(&self) -> &Arc<TokenAuthority> {
        self.authenticator.tokens()
    }

    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.authenticator
    }

    /// Register: without an admin caller only `["user"]` may be had, and only while
    /// registration is open.
    pub async fn register(&self, caller: Option<&Caller>, new: NewUser) -> Result<RegisteredUser> {
        let by_admin = caller.is_some_and(Caller::is_admin);
        if !by_admin && !self.settings.allow_registration {
            return Err(Error::PermissionDenied(
                "registration is closed: an admin token is required \
                 (KMS_ALLOW_REGISTRATION=true opens it to anyone)",
            ));
        }
        let new = self.users.check(new)?;
        if !by_admin && *new.roles() != Roles::user() {
            return Err(Error::PermissionDenied(
                "roles: only an admin may grant roles other than user",
            ));
        }
        self.users.create(audit::actor(caller), new).await
    }

    /// Login. Unknown user and wrong password give the same error after the same
    /// argon2 work, and count alike against the username and the `client` address.
    /// While either is locked out, the password is not even looked at. Opens a
    /// session: an access token naming it and a refresh token.
    pub async fn login(
        &self,
        username: &str,
        password: Zeroizing<String>,
        client: Option<IpAddr>,
    ) -> Result<LoginTokens> {
        let user = self.check_login(username, password, client).await?;
        let now = Utc::now();
        let chain_end = self.chain_end(now)?;
        let (refresh_token, refresh) = self.new_refresh_token(now)?;
        let refresh = refresh.within(chain_end);
        let refresh_expires_at = refresh.expires_at;
        let session_id = self
            .open_session(username, &user, Some(refresh), now, chain_end)
            .await?;
        let tokens = self.issue(&user, &session_id, (refresh_token, refresh_expires_at), now)?;
        tracing::info!(%username, "login succeeded");
        Ok(tokens)
    }

    /// `login` for a client that cannot refresh (the REST API has no refresh
    /// endpoint): the same checks, throttle and audit rows, and a session its access
    /// token names (so Logout and role changes end it), but no refresh token: one
    /// that is never handed out would only sit in the database.
    pub async fn login_access_only(
        &self,
        username: &str,
        password: Zeroizing<String>,
        client: Option<IpAddr>,
    ) -> Result<IssuedToken> {
        let user = self.check_login(username, password, client).await?;
        let now = Utc::now();
        let session_id = self
            .open_session(username, &user, None, now, self.chain_end(now)?)
            .await?;
        let access = self.access_token(&user, &session_id, now)?;
        tracing::info!(%username, "login succeeded (access token only)");
        Ok(access)
    }

    /// The password check of a login, under the throttle: the user on success; each
    /// refusal audited and counted as `login` documents.
    async fn check_login(
        &self,
        username: &str,
        password: Zeroizing<String>,
        client: Option<IpAddr>,
    ) -> Result<StoredUser> {
        validate::username(username)?;
        if password.is_empty() {
            return Err(Error::invalid("password", "must not be empty"));
        }
        validate::password("password", &password, 1)?;
        let attempt = match self.throttle.admit(username, client).await {
            Ok(attempt) => attempt,
            // Not a failure, and not audited as one: correct logins queue too.
            Err(Refusal::Busy) => return Err(super::throttle::busy()),
            Err(Refusal::Locked(wait)) => {
                tracing::info!(%username, client = ?client, "login throttled");
                audit::append(
                    &self.store,
                    audit::event(
                        audit::ANONYMOUS,
                        action::LOGIN_THROTTLED,
                        username,
                        outcome::DENIED,
                    ),
                )
                .await;
                return Err(Error::Throttled {
                    retry_after_secs: retry_after_secs(wait),
                });
            }
        };
        // A place for the hash first: in a flood, refusals cost no database read.
        let hashing = self.hasher.reserve()?;
        let user = self.store.find_user(username).await?;
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        let outcome = hashing.verify(password.clone(), stored).await?;
        let (Verification::Match { needs_rehash }, Some(user)) = (outcome, user) else {
            attempt.failed(Instant::now());
            tracing::info!(%username, client = ?client, "login failed");
            audit::append(
                &self.store,
                audit::event(audit::ANONYMOUS, action::LOGIN, username, outcome::FAILURE),
            )
            .await;
            return Err(Error::Unauthenticated(BAD_CREDENTIALS));
        };
        attempt.succeeded();
        if needs_rehash {
            self.rehash(user.id, password).await;
        }
        Ok(user)
    }

    /// When a login made at `now` ends, whatever its refreshes
    /// (`KMS_SESSION_MAX_LIFETIME_SECONDS`).
    fn chain_end(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        Ok(now + super::seconds(self.settings.session_max_lifetime_seconds)?)
    }

    /// A new session for `user` ending at `chain_end`, with its first refresh token
    /// when there is one, and the login's audit row, in one transaction. Returns the
    /// session id.
    async fn open_session(
        &self,
        username: &str,
        user: &StoredUser,
        refresh: Option<NewRefreshToken>,
        now: DateTime<Utc>,
        chain_end: DateTime<Utc>,
    ) -> Result<String> {
        let session_id = URL_SAFE_NO_PAD.encode(random::bytes::<16>()?);
        self.store
            .create_session(
                &session_id,
                user.id,
                refresh,
                now,
                chain_end,
                audit::event(username, action::LOGIN, username, outcome::SUCCESS),
            )
            .await?;
        Ok(session_id)
    }

    fn new_refresh_token(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(Zeroizing<String>, NewRefreshToken)> {
        let token = Zeroizing::new(format!("{REFRESH_PREFIX}{}", random::base62(43)?));
        let ttl = super::seconds(self.settings.refresh_token_ttl_seconds)?;
        let stored = NewRefreshToken {
            digest: digest::sha256(token.as_bytes()).to_vec(),
            expires_at: now + ttl,
        };
        Ok((token, stored))
    }

    /// The access token, with the refresh token stored for it and its expiry.
    fn issue(
        &self,
        user: &StoredUser,
        session_id: &str,
        (refresh_token, refresh_expires_at): (Zeroizing<String>, DateTime<Utc>),
        now: DateTime<Utc>,
    ) -> Result<LoginTokens> {
        let access = self.access_token(user, session_id, now)?;
        Ok(LoginTokens {
            access,
            refresh_token: refresh_token.to_string(),
            // Whole seconds left, rounded down: a client never believes a token
            // lives longer than it does.
            refresh_expires_in: (refresh_expires_at - now).num_seconds().max(0),
        })
    }

    fn access_token(
        &self,
        user: &StoredUser,
        session_id: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken> {
        let roles: Roles = user.roles.iter().cloned().collect();
        let access = self.authenticator.tokens().issue(
            &user.username,
            &roles,
            session_id,
            user.token_version,
            now.timestamp(),
        )?;
        Ok(access)
    }

    /// Exchanges a refresh token for new tokens; the presented one is spent. A spent
    /// token presented again revokes its whole login (reuse detection).
    pub async fn refresh(&self, presented: &str) -> Result<LoginTokens> {
        if presented.is_empty() {
            return Err(Error::invalid("refresh_token", "must not be empty"));
        }
        let invalid = Error::Unauthenticated("invalid or expired refresh token");
        if presented.len() > 256 {
            return Err(invalid);
        }
        let now = Utc::now();
        let (refresh_token, successor) = self.new_refresh_token(now)?;
        let digest = digest::sha256(presented.as_bytes());
        match self
            .store
            .exchange_refresh_token(
                &digest,
                successor,
                now,
                super::seconds(self.settings.session_max_lifetime_seconds)?,
                RefreshAudit {
                    exchanged: audit::event("", action::TOKEN_REFRESH, "", outcome::SUCCESS),
                    reused: audit::event("", action::TOKEN_REUSE, "", outcome::DENIED),
                },
            )
            .await?
        {
            RefreshOutcome::Exchanged {
                session_id,
                user,
                refresh_expires_at,
            } => self.issue(&user, &session_id, (refresh_token, refresh_expires_at), now),
            RefreshOutcome::LifetimeEnded => Err(Error::Unauthenticated(LIFETIME_ENDED)),
            RefreshOutcome::Reused {
                session_id,
                username,
            } => {
                self.authenticator.forget_session(&session_id);
                tracing::warn!(%username, "refresh token reused: the login is revoked");
                Err(Error::Unauthenticated(
                    "refresh token already used: the login is revoked, log in again",
                ))
            }
            RefreshOutcome::Invalid => Err(invalid),
        }
    }

    /// Ends the caller's login: its refresh tokens and every access token issued
    /// under it are refused from now on.
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        self.store
            .revoke_session(
                &caller.session_id,
                Utc::now(),
                audit::event(
                    &caller.subject,
                    action::LOGOUT,
                    &caller.subject,
                    outcome::SUCCESS,
                ),
            )
            .await?;
        self.authenticator.forget_session(&caller.session_id);
        tracing::info!(username = %caller.subject, "logged out");
        Ok(())
    }

    /// Upgrades a hash made with older parameters. Best effort: the login succeeds
    /// whether or not this does.
    async fn rehash(&self, user_id: i64, password: Zeroizing<String>) {
        let result = match self.hasher.hash(password).await {
            Ok(hash) => self
                .store
                .set_password_hash(user_id, hash, Utc::now())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => tracing::info!(user_id, "password hash upgraded to current parameters"),
            Err(error) => tracing::warn!(user_id, %error, "password rehash failed"),
        }
    }

    /// Introspection: `None` for every kind of bad token, revoked ones included.
    pub async fn validate_token(&self, token: &str) -> Result<Option<Arc<Claims>>> {
        match self.authenticator.authenticate(token).await {
            Ok(claims) => Ok(Some(claims)),
            Err(AuthFailure::Invalid) => Ok(None),
            Err(AuthFailure::Unavailable) => Err(Error::Unavailable),
        }
    }
}
