//! The web console (`/ui/`): the main flow in headless Chromium over WebDriver
//! (`flow`), its security properties over plain HTTP (`security`), the live audit
//! stream (`live`), and the cookie under TLS (`tls`).

mod browser;
mod flow;
mod forms;
mod live;
mod security;
mod tls;
