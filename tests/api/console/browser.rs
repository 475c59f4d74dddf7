//! Headless Chromium driven over WebDriver: the test starts chromedriver itself on a
//! free port and one browser session on it. Without /usr/bin/chromium or
//! /usr/bin/chromedriver the test fails (never skips): `.ci/run` installs them.

use std::{path::Path, process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    /// Where the pages live: `http://127.0.0.1:PORT`.
    pub base: String,
    _driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start(http_addr: std::net::SocketAddr) -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: the console's browser tests need Debian's chromium and \
                 chromium-driver (apt-get install chromium chromium-driver; .ci/run does it)"
            );
        }
        let profile = tempfile::tempdir().unwrap();
        let (driver, port) = start_driver().await;
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("chromedriver starts a Chromium session");
        Self {
            client,
            base: format!("http://{http_addr}"),
            _driver: driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let input = self.find(css).await;
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }

    /// Clicks what loads a new page (a link, a submit button), and waits until the
    /// page it was on is gone: the next step then sees the new page.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.navigate_by(element).await;
    }

    pub async fn navigate_by(&self, element: Element) {
        let old_page = self.find("html").await;
        element.click().await.unwrap();
        for _ in 0..200 {
            // The old document's element goes stale once the new one has loaded.
            if old_page.tag_name().await.is_err() {
                self.find("body").await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "clicking did not load a new page (still on {})",
            self.path().await
        );
    }

    pub async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Saves a PNG of the page as `docs/console-NAME.png` under KMS_UI_SCREENSHOTS_DIR,
    /// when that is set.
    pub async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("KMS_UI_SCREENSHOTS_DIR") else {
            return;
        };
        let png = self.client.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Path::new(&dir).join(format!("console-{name}.png")), png).unwrap();
    }

    pub async fn close(self) {
        self.client.close().await.unwrap();
    }
}

/// chromedriver on a free port: one is found by binding 127.0.0.1:0, released, and
/// handed to chromedriver; another is tried if something took it meanwhile.
async fn start_driver() -> (Child, u16) {
    for _ in 0..5 {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver runs");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                break; // exited: most likely the port was taken
            }
            if let Ok((200, _)) = kms::http::http_get(addr, "/status").await {
                return (child, port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill().await;
    }
    panic!("chromedriver did not start on any of 5 free ports");
}
