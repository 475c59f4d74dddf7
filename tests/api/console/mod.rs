//! The web console (`/ui/`): the main flow in headless Chromium over WebDriver
//! (`flow`), and its security properties over plain HTTP (`security`).

mod browser;
mod flow;
mod security;
