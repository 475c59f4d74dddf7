//! The fields of a key's policy as the create and update forms send them, read into
//! the domain's types. The domain validates the values; this only parses the text
//! and names the field when it is not a number.

use std::collections::BTreeMap;

use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use super::super::layout::{field, when_or};
use crate::domain::{Error, Result, keys::ApiKeyView, policy::RateLimit};

/// Every field of the create and update forms; empty means "not given". Serialized
/// (without the secret and the service name) as the update form's `shown` field.
#[derive(Deserialize, Serialize, Default, Clone)]
pub struct KeyForm {
    #[serde(default, skip_serializing)]
    pub service_name: String,
    /// Create only: a secret to import.
    #[serde(default, skip_serializing)]
    pub api_key: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub scopes: String,
    #[serde(default)]
    pub metadata: String,
    #[serde(default)]
    pub rate_limit_requests: String,
    #[serde(default)]
    pub rate_limit_window_seconds: String,
    #[serde(default)]
    pub remaining: String,
    #[serde(default)]
    pub ttl_seconds: String,
    #[serde(default)]
    pub enabled: String,
    /// Update only: the form as it was drawn (JSON of `KeyForm::of`), so that only
    /// what the user changed is written, not what changed on the key meanwhile.
    #[serde(default, skip_serializing)]
    pub shown: String,
}

impl KeyForm {
    /// The form filled with a key's current values (the update form).
    pub fn of(key: &ApiKeyView) -> Self {
        Self {
            service_name: key.service_name.clone(),
            api_key: String::new(),
            description: key.description.clone(),
            scopes: key.scopes.join(" "),
            metadata: key
                .metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            rate_limit_requests: key
                .rate_limit
                .map(|l| l.requests.to_string())
                .unwrap_or_default(),
            rate_limit_window_seconds: key
                .rate_limit
                .map(|l| l.window_seconds.to_string())
                .unwrap_or_default(),
            remaining: key.remaining.map(|r| r.to_string()).unwrap_or_default(),
            ttl_seconds: String::new(),
            enabled: key.enabled.to_string(),
            shown: String::new(),
        }
    }

    /// The `shown` field of the update form: this form's values as JSON.
    pub fn shown_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The form the `shown` field describes.
    pub fn from_shown(json: &str) -> Result<Self> {
        serde_json::from_str(json)
            .map_err(|_| Error::invalid("shown", "the form is out of date: reload the page"))
    }

    /// Scopes separated by spaces, commas or lines; sorted, without duplicates.
    pub fn scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = self
            .scopes
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        scopes.sort();
        scopes.dedup();
        scopes
    }

    /// `key=value` per line; blank lines are skipped.
    pub fn metadata(&self) -> Result<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        for line in self.metadata.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| Error::invalid("metadata", "each line must be key=value"))?;
            map.insert(k.trim().to_owned(), v.to_owned());
        }
        Ok(map)
    }

    /// Both parts, or neither (no limit).
    pub fn rate_limit(&self) -> Result<Option<RateLimit>> {
        let requests = number("rate_limit.requests", &self.rate_limit_requests)?;
        let window = number("rate_limit.window_seconds", &self.rate_limit_window_seconds)?;
        match (requests, window) {
            (None, None) => Ok(None),
            (Some(requests), Some(window_seconds)) => Ok(Some(RateLimit {
                requests,
                window_seconds,
            })),
            _ => Err(Error::invalid(
                "rate_limit",
                "give both requests and window_seconds, or neither",
            )),
        }
    }

    /// Empty: unlimited credits.
    pub fn remaining(&self) -> Result<Option<i64>> {
        number("remaining", &self.remaining)
    }

    /// Empty: not given.
    pub fn ttl_seconds(&self) -> Result<Option<i64>> {
        number("ttl_seconds", &self.ttl_seconds)
    }

    pub fn enabled(&self) -> Result<bool> {
        match self.enabled.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(Error::invalid("enabled", "must be true or false")),
        }
    }
}

/// A whole number, or `None` for an empty field.
pub fn number(name: &'static str, text: &str) -> Result<Option<i64>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<i64>()
        .map(Some)
        .map_err(|_| Error::invalid(name, "must be a whole number"))
}

/// The policy fields of the create and update forms.
pub fn policy_fields(form: &KeyForm, updating: bool) -> Markup {
    let ttl_hint = if updating {
        "Leave empty to keep the expiry; 0: never expires; otherwise expires that many seconds from now."
    } else {
        "0 or empty: never expires."
    };
    html! {
        (field("Description", "description", "text", &form.description, None))
        div.field {
            label for="f-scopes" { "Scopes" }
            input #f-scopes name="scopes" type="text" value=(form.scopes);
            small { "Separated by spaces, e.g. billing:read reports:*" }
        }
        div.field {
            label for="f-metadata" { "Metadata" }
            textarea #f-metadata name="metadata" rows="3" { (form.metadata) }
            small { "One key=value per line. Stored in clear: never put secrets here." }
        }
        fieldset.inline {
            legend { "Rate limit (empty: none)" }
            (field("Requests", "rate_limit_requests", "number", &form.rate_limit_requests, None))
            (field("Per seconds", "rate_limit_window_seconds", "number", &form.rate_limit_window_seconds, None))
        }
        (field("Remaining credits", "remaining", "number", &form.remaining, Some("Empty: unlimited.")))
        (field("Time to live (seconds)", "ttl_seconds", "number", &form.ttl_seconds, Some(ttl_hint)))
    }
}

/// The definition list of a key's fields.
pub fn key_facts(key: &ApiKeyView) -> Markup {
    html! {
        dl.facts {
            dt { "Service name" } dd { code { (key.service_name) } }
            dt { "Key prefix" } dd { code { (key.key_prefix) } }
            dt { "Description" } dd { (key.description) }
            dt { "Status" } dd { (super::keys::badges(key)) }
            dt { "Scopes" } dd {
                @if key.scopes.is_empty() { span.muted { "none" } }
                @for s in &key.scopes { code.scope { (s) } " " }
            }
            dt { "Metadata" } dd {
                @if key.metadata.is_empty() { span.muted { "none" } }
                @for (k, v) in &key.metadata { div { code { (k) } " = " (v) } }
            }
            dt { "Rate limit" } dd {
                @match key.rate_limit {
                    Some(l) => { (l.requests) " requests per " (l.window_seconds) " s" }
                    None => { span.muted { "none" } }
                }
            }
            dt { "Remaining credits" } dd {
                @match key.remaining { Some(r) => { (r) } None => { span.muted { "unlimited" } } }
            }
            dt { "Created" } dd { (when_or(Some(key.created_at), "")) }
            dt { "Updated" } dd { (when_or(Some(key.updated_at), "")) }
            dt { "Expires" } dd { (when_or(key.expires_at, "never")) }
            dt { "Last used" } dd { (when_or(key.last_used_at, "never")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_or_named() {
        let form = KeyForm {
            scopes: "b a, b\nc:*".into(),
            metadata: "team=core\r\n\nowner = x=y\n".into(),
            rate_limit_requests: "10".into(),
            rate_limit_window_seconds: " 60 ".into(),
            remaining: "".into(),
            enabled: "false".into(),
            ..KeyForm::default()
        };
        assert_eq!(form.scopes(), vec!["a", "b", "c:*"]);
        let md = form.metadata().unwrap();
        assert_eq!(md["team"], "core");
        assert_eq!(md["owner"], " x=y");
        assert_eq!(
            form.rate_limit().unwrap(),
            Some(RateLimit {
                requests: 10,
                window_seconds: 60
            })
        );
        assert_eq!(form.remaining().unwrap(), None);
        assert!(!form.enabled().unwrap());
        let bad = KeyForm {
            rate_limit_requests: "10".into(),
            metadata: "novalue".into(),
            remaining: "ten".into(),
            ..KeyForm::default()
        };
        assert!(
            bad.rate_limit()
                .unwrap_err()
                .to_string()
                .starts_with("rate_limit")
        );
        assert!(
            bad.metadata()
                .unwrap_err()
                .to_string()
                .starts_with("metadata")
        );
        assert!(
            bad.remaining()
                .unwrap_err()
                .to_string()
                .starts_with("remaining")
        );
    }
}
