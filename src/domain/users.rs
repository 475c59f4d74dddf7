//! Users: creating them (`UserCreator`, the rules every way in shares) and
//! administering them (`UserAdmin`: list, read, set roles, delete, change passwords).
//! Every change that alters what a user may do invalidates the tokens they hold.

use std::{net::IpAddr, sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use zeroize::Zeroizing;

use super::{
    Caller, Error, Result, Roles,
    audit::{self, action, outcome},
    caller::{ROLE_ADMIN, ROLE_USER},
    paging, require_admin,
    sessions::Authenticator,
    throttle::{self, LoginThrottle, Refusal, retry_after_secs},
    validate,
};
use crate::{
    crypto::password::{PasswordHasherPool, Verification},
    store::{AdminGuarded, Store, StoreError, UserRecord},
};

/// The actor of changes made from the command line (`kms user create`) and of the
/// bootstrap admin's creation at server start.
const OPERATOR: &str = "operator";

/// A user to create, as Register, `kms user create` and the bootstrap admin ask.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password: Zeroizing<String>,
    /// Empty: `["user"]`.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredUser {
    pub username: String,
    pub roles: Vec<String>,
}

/// A `NewUser` that passed the rules. Only `UserCreator::check` makes one, so no user
/// reaches the store unchecked.
#[derive(Debug)]
pub struct CheckedUser {
    username: String,
    password: Zeroizing<String>,
    roles: Roles,
}

impl CheckedUser {
    pub fn roles(&self) -> &Roles {
        &self.roles
    }
}

/// Creates users. It needs only the store and the password hasher, so `kms user
/// create` and the bootstrap admin at server start create users without any token
/// machinery, under the same rules as Register (which adds who may ask for what).
#[derive(Clone)]
pub struct UserCreator {
    store: Store,
    hasher: PasswordHasherPool,
    password_min_bytes: usize,
}

impl UserCreator {
    pub fn new(store: Store, hasher: PasswordHasherPool, password_min_bytes: usize) -> Self {
        Self {
            store,
            hasher,
            password_min_bytes,
        }
    }

    /// The username, the password's length and the roles; no roles means `user`.
    pub fn check(&self, new: NewUser) -> Result<CheckedUser> {
        validate::username(&new.username)?;
        validate::password("password", &new.password, self.password_min_bytes)?;
        validate::roles(&new.roles)?;
        let roles = if new.roles.is_empty() {
            Roles::user()
        } else {
            new.roles.into_iter().collect()
        };
        Ok(CheckedUser {
            username: new.username,
            password: new.password,
            roles,
        })
    }

    /// Stores the user, audited as created by `actor`. Usernames are unique without
    /// regard to case: `Alice` is refused while `alice` exists.
    pub async fn create(&self, actor: &str, new: CheckedUser) -> Result<RegisteredUser> {
        let CheckedUser {
            username,
            password,
            roles,
        } = new;
        let hash = self.hasher.hash(password).await?;
        let roles = roles.to_vec();
        match self
            .store
            .create_user(
                &username,
                hash,
                &roles,
                Utc::now(),
                audit::event(actor, action::REGISTER, &username, outcome::SUCCESS),
            )
            .await
        {
            Ok(user) => {
                tracing::info!(username = %user.username, roles = ?user.roles, "user registered");
                Ok(RegisteredUser {
                    username: user.username,
                    roles: user.roles,
                })
            }
            Err(StoreError::Conflict) => Err(Error::AlreadyExists(format!(
                "username: '{username}' is already taken (usernames are unique without regard to case)"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The operator path (`kms user create`): the same rules, no caller, any roles.
    pub async fn create_by_operator(&self, new: NewUser) -> Result<RegisteredUser> {
        let new = self.check(new)?;
        self.create(OPERATOR, new).await
    }

    /// Creates the bootstrap admin unless an admin exists. `Ok(true)` when created;
    /// `AlreadyExists` when a user who is not an admin has the name.
    pub async fn ensure_admin(&self, username: &str, password: Zeroizing<String>) -> Result<bool> {
        if self.store.any_user_has_role(ROLE_ADMIN).await? {
            return Ok(false);
        }
        self.create_by_operator(NewUser {
            username: username.to_owned(),
            password,
            roles: vec![ROLE_ADMIN.to_owned(), ROLE_USER.to_owned()],
        })
        .await?;
        Ok(true)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub username: String,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<UserRecord> for UserView {
    fn from(r: UserRecord) -> Self {
        Self {
            username: r.user.username,
            roles: r.user.roles,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug)]
pub struct PasswordChange {
    /// Empty: the caller.
    pub username: String,
    pub old_password: Zeroizing<String>,
    pub new_password: Zeroizing<String>,
    /// The TCP peer, counted like a login's by the throttle.
    pub client: Option<IpAddr>,
}

#[derive(Clone)]
pub struct UserAdmin {
    store: Store,
    hasher: PasswordHasherPool,
    authenticator: Arc<Authenticator>,
    password_min_bytes: usize,
    /// Login's throttle, shared: a wrong old password is a failed login of that user,
    /// so a stolen access token guesses no faster through ChangePassword.
    throttle: LoginThrottle,
}

fn not_found(username: &str) -> Error {
    Error::NotFound(format!("no user '{username}'"))
}

const LAST_ADMIN: &str = "this is the last admin: grant the role admin to another user first";

impl UserAdmin {
    pub fn new(
        store: Store,
        hasher: PasswordHasherPool,
        authenticator: Arc<Authenticator>,
        password_min_bytes: usize,
        throttle: LoginThrottle,
    ) -> Self {
        Self {
            store,
            hasher,
            authenticator,
            password_min_bytes,
            throttle,
        }
    }

    pub async fn list(
        &self,
        caller: &Caller,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<UserView>, String)> {
        require_admin(caller)?;
        let size = validate::page_size(page_size)?;
        let after = paging::decode(page_token, validate::username)?;
        let rows = self.store.list_users(after.as_deref(), size + 1).await?;
        let (rows, next) = paging::page(rows, size, |r| &r.user.username);
        Ok((rows.into_iter().map(UserView::from).collect(), next))
    }

    pub async fn get(&self, caller: &Caller, username: &str) -> Result<UserView> {
        require_admin(caller)?;
        validate::username(username)?;
        self.store
            .get_user(username)
            .await?
            .map(UserView::from)
            .ok_or_else(|| not_found(username))
    }

    pub async fn set_roles(
        &self,
        caller: &Caller,
        username: &str,
        roles: &[String],
    ) -> Result<UserView> {
        require_admin(caller)?;
        validate::username(username)?;
        if roles.is_empty() {
            return Err(Error::invalid("roles", "must name at least one role"));
        }
        validate::roles(roles)?;
        let roles = roles.iter().cloned().collect::<Roles>().to_vec();
        let record = audit::event(
            &caller.subject,
            action::ROLES_SET,
            username,
            outcome::SUCCESS,
        );
        match self
            .store
            .set_roles(username, &roles, Utc::now(), record)
            .await?
        {
            AdminGuarded::Done(record) => {
                self.authenticator.forget_user(username);
                tracing::info!(%username, ?roles, by = %caller.subject, "roles set");
                Ok(record.into())
            }
            AdminGuarded::NotFound => Err(not_found(username)),
            AdminGuarded::LastAdmin => Err(Error::FailedPrecondition(LAST_ADMIN.into())),
        }
    }

    pub async fn delete(&self, caller: &Caller, username: &str) -> Result<()> {
        require_admin(caller)?;
        validate::username(username)?;
        let record = audit::event(
            &caller.subject,
            action::USER_DELETE,
            username,
            outcome::SUCCESS,
        );
        match self.store.delete_user(username, record).await? {
            AdminGuarded::Done(()) => {
                self.authenticator.forget_user(username);
                tracing::info!(%username, by = %caller.subject, "user deleted");
                Ok(())
            }
            AdminGuarded::NotFound => Err(not_found(username)),
            AdminGuarded::LastAdmin => Err(Error::FailedPrecondition(LAST_ADMIN.into())),
        }
    }

    /// A user changes their own password by proving the old one; an admin may set
    /// anyone's. Either way every token the user held stops working.
    pub async fn change_password(&self, caller: &Caller, change: PasswordChange) -> Result<()> {
        let target = if change.username.is_empty() {
            caller.subject.clone()
        } else {
            validate::username(&change.username)?;
            change.username.clone()
        };
        let own = target == caller.subject;
        if !own {
            require_admin(caller)?;
        }
        validate::password(
            "new_password",
            &change.new_password,
            self.password_min_bytes,
        )?;
        let user = self.store.find_user(&target).await?;
        let user = match (own, user) {
            (_, None) if !own => return Err(not_found(&target)),
            (_, None) => return Err(Error::Unauthenticated("the caller no longer exists")),
            (_, Some(user)) => user,
        };
        if own {
            if change.old_password.is_empty() {
                return Err(Error::invalid("old_password", "must not be empty"));
            }
            validate::password("old_password", &change.old_password, 1)?;
            let attempt = match self.throttle.admit(&target, change.client).await {
                Ok(attempt) => attempt,
                Err(Refusal::Busy) => return Err(throttle::busy()),
                Err(Refusal::Locked(wait)) => {
                    self.deny(caller, &target).await;
                    return Err(Error::Throttled {
                        retry_after_secs: retry_after_secs(wait),
                    });
                }
            };
            let outcome = self
                .hasher
                .verify(change.old_password, Some(user.password_hash.clone()))
                .await?;
            if outcome == Verification::Mismatch {
                attempt.failed(Instant::now());
                self.deny(caller, &target).await;
                return Err(Error::PermissionDenied("old_password: does not match"));
            }
            attempt.succeeded();
        }
        let hash = self.hasher.hash(change.new_password).await?;
        let record = audit::event(
            &caller.subject,
            action::PASSWORD_CHANGE,
            &target,
            outcome::SUCCESS,
        );
        self.store
            .change_password(user.id, hash, Utc::now(), record)
            .await?;
        self.authenticator.forget_user(&target);
        tracing::info!(username = %target, by = %caller.subject, "password changed");
        Ok(())
    }

    async fn deny(&self, caller: &Caller, target: &str) {
        let record = audit::event(
            &caller.subject,
            action::PASSWORD_CHANGE,
            target,
            audit::outcome::DENIED,
        );
        audit::append(&self.store, record).await;
    }
}
