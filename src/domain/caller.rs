//! Who is calling, and what roles mean.

use std::collections::BTreeSet;

pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_USER: &str = "user";

/// A role set. Membership is exact: `notadmin` or `admins` is not `admin`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roles(BTreeSet<String>);

impl Roles {
    pub fn user() -> Self {
        Self::from_iter([ROLE_USER.to_owned()])
    }

    pub fn contains(&self, role: &str) -> bool {
        self.0.contains(role)
    }

    pub fn is_admin(&self) -> bool {
        self.contains(ROLE_ADMIN)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

impl FromIterator<String> for Roles {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// The authenticated caller of a request, put into the request extensions by the
/// transport's auth layer after the bearer token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub roles: Roles,
    /// The login the caller's token belongs to (its `sid`).
    pub session_id: String,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.is_admin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Roles {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn admin_is_exact_membership() {
        assert!(roles(&["user", "admin"]).is_admin());
        assert!(!roles(&["notadmin"]).is_admin());
        assert!(!roles(&["admins", "administrator", "ADMIN"]).is_admin());
        assert!(!roles(&[]).is_admin());
    }

    #[test]
    fn roles_are_a_set() {
        assert_eq!(roles(&["b", "a", "b"]).to_vec(), vec!["a", "b"]);
    }
}
