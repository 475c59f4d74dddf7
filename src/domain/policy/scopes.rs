//! Scope syntax and the grant rule: a granted scope ending in `*` grants every scope
//! that starts with what precedes the `*` (`billing:*` grants `billing:read`; `*`
//! grants all).

use crate::domain::{Error, Result};

pub const SCOPE_MAX_LEN: usize = 128;
pub const SCOPES_MAX: usize = 64;

fn scope_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'/' | b'-')
}

/// Why `scope` is not a valid scope, if it is not. `wildcard`: a trailing `*` is allowed.
fn scope_problem(scope: &str, wildcard: bool) -> Option<&'static str> {
    if scope.is_empty() || scope.len() > SCOPE_MAX_LEN {
        return Some("each scope must be 1..128 characters");
    }
    let body = match scope.strip_suffix('*') {
        Some(body) if wildcard => body,
        Some(_) => return Some("a required scope cannot contain '*'"),
        None => scope,
    };
    if body.bytes().all(scope_char) {
        None
    } else if wildcard {
        Some("a scope is made of A-Z a-z 0-9 . _ : / - and may end in '*'")
    } else {
        Some("a scope is made of A-Z a-z 0-9 . _ : / -")
    }
}

/// Checks granted scopes and returns them sorted without duplicates.
pub fn granted(field: &'static str, scopes: Vec<String>) -> Result<Vec<String>> {
    if scopes.len() > SCOPES_MAX {
        return Err(Error::invalid(field, "at most 64 scopes"));
    }
    for scope in &scopes {
        if let Some(problem) = scope_problem(scope, true) {
            return Err(Error::invalid(field, problem));
        }
    }
    let mut scopes = scopes;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// Checks the scopes a verification requires (no `*`).
pub fn required(scopes: &[String]) -> Result<()> {
    if scopes.len() > SCOPES_MAX {
        return Err(Error::invalid("required_scopes", "at most 64 scopes"));
    }
    for scope in scopes {
        if let Some(problem) = scope_problem(scope, false) {
            return Err(Error::invalid("required_scopes", problem));
        }
    }
    Ok(())
}

/// Whether one granted scope grants `wanted`.
pub fn grants(granted: &str, wanted: &str) -> bool {
    match granted.strip_suffix('*') {
        Some(prefix) => wanted.starts_with(prefix),
        None => granted == wanted,
    }
}

/// Whether every required scope is granted by one of `granted`.
pub fn all_granted(granted: &[String], required: &[String]) -> bool {
    required
        .iter()
        .all(|wanted| granted.iter().any(|g| grants(g, wanted)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn the_trailing_star_rule() {
        assert!(grants("billing:*", "billing:read"));
        assert!(grants("billing:*", "billing:"));
        assert!(!grants("billing:*", "billing"));
        assert!(grants("*", "anything/at:all"));
        assert!(grants("a", "a"));
        assert!(!grants("a", "ab"));
        assert!(all_granted(&s(&["a", "b:*"]), &s(&["a", "b:x", "b:y"])));
        assert!(!all_granted(&s(&["a"]), &s(&["a", "b"])));
        assert!(all_granted(&s(&[]), &s(&[])));
    }

    #[test]
    fn syntax() {
        assert_eq!(
            granted("scopes", s(&["b", "a", "b"])).unwrap(),
            s(&["a", "b"])
        );
        assert!(granted("scopes", s(&["*", "x/y.z_w:v-1*"])).is_ok());
        for bad in ["", "a b", "a*b", "**", "é", &"a".repeat(129)] {
            assert!(granted("scopes", s(&[bad])).is_err(), "{bad:?}");
        }
        assert!(granted("scopes", (0..65).map(|i| i.to_string()).collect()).is_err());
        assert!(required(&s(&["a:*"])).is_err());
        assert!(required(&s(&["a:b"])).is_ok());
    }

    proptest! {
        #[test]
        fn a_scope_grants_itself_and_a_star_its_extensions(
            prefix in "[A-Za-z0-9._:/-]{0,20}", rest in "[A-Za-z0-9._:/-]{0,20}"
        ) {
            let wanted = format!("{}{}", prefix, rest);
            prop_assert!(grants(&wanted, &wanted));
            let star = format!("{}*", prefix);
            prop_assert!(grants(&star, &wanted));
        }

        #[test]
        fn without_a_star_only_equality_grants(a in "[a-z:]{1,6}", b in "[a-z:]{1,6}") {
            prop_assert_eq!(grants(&a, &b), a == b);
        }

        #[test]
        fn granted_scopes_come_back_sorted_unique_and_valid(v in proptest::collection::vec("[A-Za-z0-9._:/-]{1,10}\\*?", 0..64)) {
            let out = granted("scopes", v.clone()).unwrap();
            prop_assert!(out.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(v.iter().all(|x| out.contains(x)));
        }

        #[test]
        fn any_forbidden_byte_is_refused(v in "[A-Za-z]{0,5}", c in "[^A-Za-z0-9._:/*-]", w in "[A-Za-z]{0,5}") {
            let scope = format!("{}{}{}", v, c, w);
            prop_assert!(granted("scopes", vec![scope.clone()]).is_err());
            prop_assert!(required(&[scope]).is_err());
        }
    }
}
