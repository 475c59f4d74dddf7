//! A SoftHSM token for tests of the PKCS#11 master key. Shared by the library's unit
//! tests (`src/crypto/pkcs11.rs` includes this file) and by `tests/api`; each uses a part.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, at `C_Initialize`, and a process initialises a
//! module once: a process cannot switch between two SoftHSM configurations, and this
//! crate forbids the `unsafe` `std::env::set_var`. So each fixture has its own
//! configuration and token directory, handed to subprocesses in their environment
//! ([`SoftHsm::env`]); a test that loads the module itself runs in a child process of
//! its test binary ([`isolated`]).
//!
//! A missing `softhsm2` or `opensc` fails the test with the package to install: never
//! a silent skip.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where Debian's `softhsm2` installs the module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The token [`SoftHsm::standard`] makes, its user PIN and the AES-256 key in it.
pub const TOKEN: &str = "kms-test";
pub const PIN: &str = "1234-test-pin";
pub const KEY: &str = "kms-master";
const SO_PIN: &str = "87654321-so";
/// Set in a child started by [`isolated`]: the child runs the body.
const CHILD_ENV: &str = "KMS_TEST_SOFTHSM_CHILD";

const INSTALL: &str = "install softhsm2 and opensc (Debian/Ubuntu: \
     apt-get install softhsm2 opensc); the PKCS#11 tests need them and never skip";

/// A private SoftHSM configuration and token directory, removed on drop.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl SoftHsm {
    /// An empty SoftHSM (no token yet). Panics, naming the packages, when the module or
    /// the tools are missing.
    pub fn new() -> Self {
        require_tools();
        let dir = tempfile::tempdir().expect("temp dir for SoftHSM");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("SoftHSM token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        Self { dir, conf }
    }

    /// A SoftHSM with token [`TOKEN`] (PIN [`PIN`]) holding the sensitive, private,
    /// non-extractable AES-256 key [`KEY`].
    pub fn standard() -> Self {
        let hsm = Self::new();
        hsm.init_token(TOKEN, PIN);
        hsm.keygen_aes256(TOKEN, PIN, KEY);
        hsm
    }

    /// The `SOFTHSM2_CONF` to give a process that loads the module.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment a subprocess needs to see this SoftHSM.
    pub fn env(&self) -> [(&'static str, &OsStr); 1] {
        [("SOFTHSM2_CONF", self.conf.as_os_str())]
    }

    pub fn module() -> PathBuf {
        PathBuf::from(MODULE)
    }

    /// Initialises a token in the first free slot. The PINs are test values, so the
    /// command line may carry them.
    pub fn init_token(&self, label: &str, pin: &str) {
        self.run(
            Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label])
                .args(["--pin", pin, "--so-pin", SO_PIN]),
        );
    }

    /// An AES-256 key made by the token, as an operator should: `--sensitive` (its value
    /// can never be read) and `--private` (usable only after login); pkcs11-tool's
    /// defaults give neither.
    pub fn keygen_aes256(&self, token: &str, pin: &str, label: &str) {
        self.run(
            self.pkcs11_tool(token, pin)
                .args([
                    "--keygen",
                    "--key-type",
                    "AES:32",
                    "--sensitive",
                    "--private",
                ])
                .args(["--label", label]),
        );
    }

    /// `pkcs11-tool` on this SoftHSM, logged in to `token`; the PIN goes through the
    /// environment (`--pin env:`), not the command line.
    pub fn pkcs11_tool(&self, token: &str, pin: &str) -> Command {
        let mut cmd = Command::new("pkcs11-tool");
        cmd.args(["--module", MODULE, "--token-label", token])
            .args(["--login", "--pin", "env:KMS_TEST_PKCS11_PIN"])
            .env("KMS_TEST_PKCS11_PIN", pin);
        cmd
    }

    /// Runs `cmd` with this SoftHSM's configuration; panics with its output on failure.
    pub fn run(&self, cmd: &mut Command) -> Output {
        let out = cmd
            .envs(self.env())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?} ({e}); {INSTALL}", cmd.get_program()));
        assert!(
            out.status.success(),
            "{:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Runs `body` in a child process of this test binary that sees its own SoftHSM, made
/// by `setup` in the parent. `test` is the test's path inside its binary (e.g.
/// `crypto::pkcs11::tests::round_trip`): the child runs exactly that test, which calls
/// `isolated` again and, being the child, runs `body`. The parent fails when the child
/// fails or did not run exactly one test.
pub fn isolated(test: &str, setup: impl FnOnce(&SoftHsm), body: impl FnOnce()) {
    if std::env::var_os(CHILD_ENV).is_some() {
        body();
        return;
    }
    let hsm = SoftHsm::new();
    setup(&hsm);
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--include-ignored"])
        .args(["--test-threads", "1"])
        .envs(hsm.env())
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the SoftHSM child for {test} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // Shown with --nocapture, or when the parent test fails later.
    print!("{stderr}");
}

/// `module_path!()` without the crate name, joined to a test function's name: the
/// path libtest knows the test by.
pub fn test_path(module_path: &str, name: &str) -> String {
    let inside = module_path.split_once("::").map_or("", |(_, rest)| rest);
    if inside.is_empty() {
        name.to_owned()
    } else {
        format!("{inside}::{name}")
    }
}

fn require_tools() {
    assert!(Path::new(MODULE).exists(), "{MODULE} is missing; {INSTALL}");
    for tool in ["softhsm2-util", "pkcs11-tool"] {
        let found = Command::new(tool).arg("--help").output().is_ok();
        assert!(found, "{tool} is missing; {INSTALL}");
    }
}
