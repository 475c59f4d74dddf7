//! The original HTTP key service's environment names, accepted as fallbacks so that its
//! `.env` starts the KMS: `DATABASE_URL` (SQLAlchemy style), `SECRET_KEY` (its HS256
//! secret), `ALGORITHM` and `ACCESS_TOKEN_EXPIRE_MINUTES`. A `KMS_*` name (or flag)
//! always wins. They are read here, never written back to the environment.

use zeroize::Zeroizing;

use super::{ConfigError, JwtSecret};
use crate::{
    crypto::{kdf, sealing::MasterKey},
    domain::token::{MIN_HS256_SECRET_BYTES, SigningAlgorithm},
};

/// HKDF `info` for the master key derived from `SECRET_KEY`. Fixed forever: changing
/// it would make every secret sealed under the derived key unreadable.
pub const MASTER_KEY_INFO: &[u8] = b"kms/v1 master key from legacy SECRET_KEY";
/// The longest `ACCESS_TOKEN_EXPIRE_MINUTES`: one year, as KMS_ACCESS_TOKEN_TTL_SECONDS.
const MAX_EXPIRE_MINUTES: i64 = 525_600;

/// The legacy variables as found; empty counts as unset. `Debug` hides SECRET_KEY.
#[derive(Clone, Default)]
pub struct LegacyEnv {
    pub database_url: Option<String>,
    pub secret_key: Option<Zeroizing<String>>,
    pub algorithm: Option<String>,
    pub access_token_expire_minutes: Option<String>,
}

impl std::fmt::Debug for LegacyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyEnv")
            .field("database_url", &self.database_url.is_some())
            .field("secret_key", &self.secret_key.is_some())
            .field("algorithm", &self.algorithm)
            .field(
                "access_token_expire_minutes",
                &self.access_token_expire_minutes,
            )
            .finish()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Says once that a legacy name is in use, by name only.
fn used(legacy: &str, instead_of: &str) {
    tracing::info!(
        variable = legacy,
        instead_of,
        "using the original service's environment variable"
    );
}

impl LegacyEnv {
    /// From the process environment, which `.env` has filled by then.
    pub fn from_process() -> Self {
        Self {
            database_url: var("DATABASE_URL"),
            secret_key: var("SECRET_KEY").map(Zeroizing::new),
            algorithm: var("ALGORITHM"),
            access_token_expire_minutes: var("ACCESS_TOKEN_EXPIRE_MINUTES"),
        }
    }

    /// `DATABASE_URL`, translated for sqlx, when KMS_DATABASE_URL is not set.
    pub fn database_url(&self) -> Option<String> {
        let url = self.database_url.as_deref()?;
        used("DATABASE_URL", "KMS_DATABASE_URL");
        Some(translate_database_url(url))
    }

    /// `SECRET_KEY` as the HS256 secret, when KMS_JWT_SECRET(_FILE) is not set.
    pub fn jwt_secret(&self) -> Result<Option<JwtSecret>, ConfigError> {
        let Some(secret) = self.secret_key.as_ref() else {
            return Ok(None);
        };
        used("SECRET_KEY", "KMS_JWT_SECRET");
        check_secret_key(secret)?;
        Ok(Some(JwtSecret::legacy(secret.as_bytes().to_vec())))
    }

    /// The master key derived from `SECRET_KEY`, when KMS_MASTER_KEY(_FILE) is not set:
    /// the original deployment has no master key, and its `.env` must still start.
    pub fn master_key(&self) -> Result<Option<MasterKey>, ConfigError> {
        let Some(secret) = self.secret_key.as_ref() else {
            return Ok(None);
        };
        check_secret_key(secret)?;
        let key = derive_master_key(secret.as_bytes())?;
        tracing::warn!(
            "no KMS_MASTER_KEY: API key secrets are sealed under a key derived from SECRET_KEY, so whoever holds SECRET_KEY (a gateway that verifies tokens with it, too) can derive it. Set a separate KMS_MASTER_KEY before storing keys: changing SECRET_KEY or the master key later makes the stored secrets unreadable"
        );
        Ok(Some(key))
    }

    /// The signing algorithm the original deployment implies, when KMS_JWT_ALGORITHM is
    /// not set: `ALGORITHM` (HS256 only, since `SECRET_KEY` is a shared secret), or HS256
    /// whenever `SECRET_KEY` is given, as the original service signed with it.
    pub fn jwt_algorithm(&self) -> Result<Option<SigningAlgorithm>, ConfigError> {
        match self.algorithm.as_deref() {
            Some(name) => {
                used("ALGORITHM", "KMS_JWT_ALGORITHM");
                legacy_algorithm(name).map(Some)
            }
            None => Ok(self.secret_key.is_some().then_some(SigningAlgorithm::Hs256)),
        }
    }

    /// `ACCESS_TOKEN_EXPIRE_MINUTES` in seconds, when KMS_ACCESS_TOKEN_TTL_SECONDS is
    /// not set.
    pub fn access_token_ttl_seconds(&self) -> Result<Option<i64>, ConfigError> {
        let Some(text) = self.access_token_expire_minutes.as_deref() else {
            return Ok(None);
        };
        used(
            "ACCESS_TOKEN_EXPIRE_MINUTES",
            "KMS_ACCESS_TOKEN_TTL_SECONDS",
        );
        match text.trim().parse::<i64>() {
            Ok(minutes) if (1..=MAX_EXPIRE_MINUTES).contains(&minutes) => Ok(Some(minutes * 60)),
            _ => Err(ConfigError(format!(
                "ACCESS_TOKEN_EXPIRE_MINUTES must be a whole number of minutes from 1 to {MAX_EXPIRE_MINUTES}"
            ))),
        }
    }
}

/// What the original service's `ALGORITHM` may name. Only HS256: its `SECRET_KEY` is a
/// shared secret, and asymmetric keys are KMS_JWT_ALGORITHM's business.
fn legacy_algorithm(name: &str) -> Result<SigningAlgorithm, ConfigError> {
    if name.trim().eq_ignore_ascii_case("HS256") {
        Ok(SigningAlgorithm::Hs256)
    } else {
        Err(ConfigError(format!(
            "ALGORITHM={name:?} is not supported: the original service's SECRET_KEY can only sign HS256. Remove ALGORITHM, or choose with KMS_JWT_ALGORITHM"
        )))
    }
}

/// An original service's `.env` must start the KMS unchanged, so that moving to it needs
/// no edit of a working deployment's configuration. So a `SECRET_KEY` shorter than
/// KMS_JWT_SECRET's floor is accepted, loudly: it is what the deployment already
/// trusts, and refusing it would only block the move. Empty is refused.
fn check_secret_key(secret: &str) -> Result<(), ConfigError> {
    if secret.is_empty() {
        return Err(ConfigError("SECRET_KEY is empty".into()));
    }
    if secret.len() < MIN_HS256_SECRET_BYTES {
        tracing::warn!(
            "SECRET_KEY is shorter than {MIN_HS256_SECRET_BYTES} bytes: tokens signed with it and the master key derived from it are weak. Set KMS_JWT_SECRET (or move to EdDSA with KMS_JWT_ALGORITHM) and KMS_MASTER_KEY"
        );
    }
    Ok(())
}

/// HKDF-SHA256 of the `SECRET_KEY` bytes as given (no salt, info `MASTER_KEY_INFO`):
/// 32 bytes that are unrelated to the HS256 key although both come from one secret.
fn derive_master_key(secret_key: &[u8]) -> Result<MasterKey, ConfigError> {
    let okm = kdf::hkdf_sha256_32(secret_key, MASTER_KEY_INFO)
        .map_err(|_| ConfigError("the master key could not be derived from SECRET_KEY".into()))?;
    Ok(MasterKey::from_bytes(*okm))
}

/// A SQLAlchemy URL as sqlx reads it. `dialect+driver://` loses the Python driver;
/// SQLite paths follow SQLAlchemy (`sqlite:///relative.db`, `sqlite:////absolute.db`,
/// `sqlite://` in memory) and are created when missing, as SQLAlchemy's were.
/// SQLAlchemy's SQLite query options are for Python's driver, so they are dropped.
/// Anything else passes unchanged, and the store names what it cannot use.
pub fn translate_database_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let dialect = scheme
        .split_once('+')
        .map_or(scheme, |(dialect, _)| dialect);
    if !dialect.eq_ignore_ascii_case("sqlite") {
        return format!("{dialect}://{rest}");
    }
    // After `sqlite://` SQLAlchemy expects `/` and then the path as given: `./kms.db`
    // or, with a fourth slash, `/var/lib/kms.db`.
    let path = rest.split('?').next().unwrap_or_default();
    match path.strip_prefix('/').unwrap_or(path) {
        "" | ":memory:" => "sqlite::memory:".to_owned(),
        path => format!("sqlite://{path}?mode=rwc"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> LegacyEnv {
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        LegacyEnv {
            database_url: get("DATABASE_URL"),
            secret_key: get("SECRET_KEY").map(Zeroizing::new),
            algorithm: get("ALGORITHM"),
            access_token_expire_minutes: get("ACCESS_TOKEN_EXPIRE_MINUTES"),
        }
    }

    #[test]
    fn sqlalchemy_urls_become_sqlx_urls() {
        for (from, to) in [
            ("sqlite:///./kms.db", "sqlite://./kms.db?mode=rwc"),
            ("sqlite:///kms.db", "sqlite://kms.db?mode=rwc"),
            (
                "sqlite:////var/lib/kms/kms.db",
                "sqlite:///var/lib/kms/kms.db?mode=rwc",
            ),
            (
                "sqlite+pysqlite:///data/kms.db?check_same_thread=false",
                "sqlite://data/kms.db?mode=rwc",
            ),
            ("sqlite://", "sqlite::memory:"),
            ("sqlite:///:memory:", "sqlite::memory:"),
            ("postgresql://user:pw@db/kms", "postgresql://user:pw@db/kms"),
            (
                "postgresql+psycopg2://user:pw@db:5432/kms?sslmode=require",
                "postgresql://user:pw@db:5432/kms?sslmode=require",
            ),
            ("postgresql+asyncpg://u@db/kms", "postgresql://u@db/kms"),
            ("postgres://u@db/kms", "postgres://u@db/kms"),
            ("mysql+pymysql://u@db/kms", "mysql://u@db/kms"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(translate_database_url(from), to, "{from}");
        }
    }

    #[test]
    fn translated_sqlite_paths_are_what_sqlx_opens() {
        use sea_orm::sqlx::sqlite::SqliteConnectOptions;
        for (url, path) in [
            ("sqlite:///./kms.db", "./kms.db"),
            ("sqlite:////var/lib/kms.db", "/var/lib/kms.db"),
        ] {
            let opts: SqliteConnectOptions = translate_database_url(url).parse().unwrap();
            assert_eq!(opts.get_filename(), std::path::Path::new(path), "{url}");
        }
    }

    #[test]
    fn secret_key_signs_hs256_and_derives_a_separate_master_key() {
        let secret = "0123456789abcdef0123456789abcdef0123456789abcdef";
        let legacy = env(&[("SECRET_KEY", secret)]);
        assert_eq!(
            legacy.jwt_secret().unwrap().unwrap().expose(),
            secret.as_bytes()
        );
        assert_eq!(
            legacy.jwt_algorithm().unwrap(),
            Some(SigningAlgorithm::Hs256)
        );
        let master = legacy.master_key().unwrap().unwrap();
        assert_ne!(&master.expose()[..], &secret.as_bytes()[..32]);
        // Fixed by the documented rule: the same SECRET_KEY always opens the same data.
        let expected = kdf::hkdf_sha256_32(
            secret.as_bytes(),
            b"kms/v1 master key from legacy SECRET_KEY",
        )
        .unwrap();
        assert_eq!(master.expose(), &*expected);
    }

    #[test]
    fn a_short_secret_key_still_starts_the_kms() {
        let legacy = env(&[("SECRET_KEY", "changeme")]);
        assert_eq!(legacy.jwt_secret().unwrap().unwrap().expose(), b"changeme");
        assert!(legacy.master_key().unwrap().is_some());
        let empty = env(&[("SECRET_KEY", "")]);
        assert!(empty.jwt_secret().is_err());
    }

    #[test]
    fn algorithm_must_be_hs256() {
        assert_eq!(
            env(&[("ALGORITHM", "HS256")]).jwt_algorithm().unwrap(),
            Some(SigningAlgorithm::Hs256)
        );
        assert_eq!(env(&[]).jwt_algorithm().unwrap(), None);
        let err = env(&[("ALGORITHM", "RS256")]).jwt_algorithm().unwrap_err();
        assert!(
            err.0.contains("ALGORITHM") && err.0.contains("HS256"),
            "{err}"
        );
    }

    #[test]
    fn expire_minutes_become_seconds() {
        let ttl = |m: &str| env(&[("ACCESS_TOKEN_EXPIRE_MINUTES", m)]).access_token_ttl_seconds();
        assert_eq!(ttl("30").unwrap(), Some(1800));
        assert_eq!(env(&[]).access_token_ttl_seconds().unwrap(), None);
        for bad in ["0", "-5", "1.5", "thirty", "525601"] {
            assert!(ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_secret_key() {
        let legacy = env(&[("SECRET_KEY", "very-secret-value-0123456789abcdef")]);
        assert!(!format!("{legacy:?}").contains("very-secret"));
    }
}

/// The precedence, through the whole of `ServeArgs::resolve`.
#[cfg(test)]
mod precedence {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command, ServeArgs};

    const SECRET_KEY: &str = "legacy-secret-key-legacy-secret-key-0123";

    /// Serve arguments with every variable this module falls back for left unset,
    /// whatever the test process's environment holds.
    fn bare(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["kms", "serve"];
        argv.extend_from_slice(extra);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not serve");
        };
        let mut args = *args;
        for (flag, field) in [
            ("--database-url", &mut args.database.database_url),
            ("--master-key", &mut args.master_key),
            ("--jwt-secret", &mut args.jwt_secret),
        ] {
            if !extra.contains(&flag) {
                *field = None;
            }
        }
        args.master_key_file = None;
        args.jwt_secret_file = None;
        if !extra.contains(&"--jwt-algorithm") {
            args.jwt_algorithm = None;
        }
        if !extra.contains(&"--access-token-ttl-seconds") {
            args.access_token_ttl_seconds = None;
        }
        args
    }

    fn original_env() -> LegacyEnv {
        LegacyEnv {
            database_url: Some("sqlite:///./kms.db".into()),
            secret_key: Some(Zeroizing::new(SECRET_KEY.into())),
            algorithm: Some("HS256".into()),
            access_token_expire_minutes: Some("30".into()),
        }
    }

    #[test]
    fn the_original_env_alone_configures_the_server() {
        let config = bare(&[]).resolve_with(&original_env()).unwrap();
        assert_eq!(config.database.url, "sqlite://./kms.db?mode=rwc");
        assert_eq!(config.jwt_algorithm, SigningAlgorithm::Hs256);
        assert_eq!(config.jwt_secret.unwrap().expose(), SECRET_KEY.as_bytes());
        assert_eq!(config.access_token_ttl_seconds, 1800);
        let derived = derive_master_key(SECRET_KEY.as_bytes()).unwrap();
        assert_eq!(config.master_key.key().unwrap().expose(), derived.expose());
    }

    #[test]
    fn kms_names_win_over_the_original_ones() {
        let master = STANDARD.encode([5u8; 32]);
        let jwt = "kms-jwt-secret-kms-jwt-secret-kms-jwt";
        let config = bare(&[
            "--database-url",
            "postgres://kms@db/kms",
            "--master-key",
            &master,
            "--jwt-secret",
            jwt,
            "--jwt-algorithm",
            "HS256",
            "--access-token-ttl-seconds",
            "60",
        ])
        .resolve_with(&LegacyEnv {
            // Ignored, so even a value that would be refused does no harm.
            algorithm: Some("RS256".into()),
            ..original_env()
        })
        .unwrap();
        assert_eq!(config.database.url, "postgres://kms@db/kms");
        assert_eq!(config.master_key.key().unwrap().expose(), &[5u8; 32]);
        assert_eq!(config.jwt_secret.unwrap().expose(), jwt.as_bytes());
        assert_eq!(config.access_token_ttl_seconds, 60);
    }

    #[test]
    fn defaults_lose_to_the_original_names_and_apply_without_them() {
        let master = STANDARD.encode([5u8; 32]);
        let config = bare(&["--master-key", &master])
            .resolve_with(&LegacyEnv::default())
            .unwrap();
        assert_eq!(config.database.url, crate::config::DEFAULT_DATABASE_URL);
        assert_eq!(config.jwt_algorithm, SigningAlgorithm::EdDsa);
        assert_eq!(config.access_token_ttl_seconds, 3600);
        assert!(config.jwt_secret.is_none());
    }

    #[test]
    fn a_bad_algorithm_stops_the_start() {
        let err = bare(&[])
            .resolve_with(&LegacyEnv {
                algorithm: Some("RS256".into()),
                ..original_env()
            })
            .unwrap_err();
        assert!(err.0.contains("ALGORITHM"), "{err}");
    }
}
