//! The demo page (`GET /`, `/demo/*` and `/favicon.ico`): a small chat room that uses the official SDK in
//! the browser, served in `--dev` (or with `demo = true`) so that a newcomer sees the
//! product work in two tabs.
//!
//! ```text
//!  start-up: DemoSite::load ── our page (include_str!) + demo_bundle read from disk once
//!  request:  http::route ── DemoSite::answer(path) ── a response built from memory
//! ```
//!
//! Our own files (`demo/web/`) are compiled in; the SDK bundle (`demo/dist/platform.js`,
//! built by `scripts/build-demo.sh`, not committed) is read once at start-up, so no
//! request reads a file on a shard thread. Without the bundle, `/` answers a page that
//! says how to build it.

use std::path::{Path, PathBuf};

use ringcast_protocol::http::{ok_response, with_header};
use ringcast_protocol::ApiError;

const INDEX_HTML: &str = include_str!("../../demo/web/index.html");
const MISSING_HTML: &str = include_str!("../../demo/web/missing.html");
const APP_JS: &str = include_str!("../../demo/web/app.js");
const STYLE_CSS: &str = include_str!("../../demo/web/style.css");
const FAVICON_SVG: &str = include_str!("../../demo/web/favicon.svg");

/// Where `scripts/build-demo.sh` writes the bundle in the source tree this binary was
/// built from (the `demo_bundle` default).
pub fn default_bundle_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/dist/platform.js")
}

/// The demo's files, in memory.
#[derive(Debug)]
pub struct DemoSite {
    /// The SDK bundle, `None` when it could not be read at start-up.
    bundle: Option<Vec<u8>>,
    bundle_path: PathBuf,
}

impl DemoSite {
    /// Reads the bundle at `bundle_path` (once, at start-up); a missing bundle is logged
    /// and the site serves the "how to build it" page at `/`.
    pub fn load(bundle_path: &Path) -> DemoSite {
        let bundle = match std::fs::read(bundle_path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(
                    path = %bundle_path.display(),
                    error = %e,
                    "demo page: the SDK bundle is missing; run scripts/build-demo.sh and restart"
                );
                None
            }
        };
        DemoSite {
            bundle,
            bundle_path: bundle_path.to_owned(),
        }
    }

    /// Whether `path` is one of the demo's routes.
    pub fn handles(path: &str) -> bool {
        path == "/" || path == "/favicon.ico" || path.starts_with("/demo/")
    }

    /// The answer to `GET path` (a path for which [`DemoSite::handles`] is true).
    pub fn answer(&self, path: &str, keep_alive: bool) -> Result<Vec<u8>, (ApiError, String)> {
        let (content_type, body): (&str, &[u8]) = match (path, &self.bundle) {
            ("/", Some(_)) => ("text/html; charset=utf-8", INDEX_HTML.as_bytes()),
            ("/", None) => ("text/html; charset=utf-8", MISSING_HTML.as_bytes()),
            ("/demo/app.js", _) => ("text/javascript; charset=utf-8", APP_JS.as_bytes()),
            ("/demo/style.css", _) => ("text/css; charset=utf-8", STYLE_CSS.as_bytes()),
            // Browsers ask for /favicon.ico whatever the page says.
            ("/demo/favicon.svg" | "/favicon.ico", _) => ("image/svg+xml", FAVICON_SVG.as_bytes()),
            ("/demo/platform.js", Some(bundle)) => ("text/javascript; charset=utf-8", bundle),
            ("/demo/platform.js", None) => {
                let message = format!(
                    "the SDK bundle {} was missing at start-up: run scripts/build-demo.sh and restart",
                    self.bundle_path.display()
                );
                return Err((ApiError::NotFound, message));
            }
            _ => return Err((ApiError::NotFound, "no such demo file".to_owned())),
        };
        let out = ok_response(content_type, body, keep_alive);
        // A rebuilt bundle or a new binary shows at the next load, not after a cache
        // expiry.
        let out = with_header(out, "Cache-Control", "no-cache");
        Ok(with_header(out, "X-Content-Type-Options", "nosniff"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(out: &[u8]) -> &[u8] {
        let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        &out[at..]
    }

    #[test]
    fn serves_the_page_and_the_bundle_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("platform.js");
        std::fs::write(&path, b"export const x = 1;").unwrap();
        let site = DemoSite::load(&path);
        // Read once: a later change on disk does not reach the answers.
        std::fs::write(&path, b"changed").unwrap();
        let out = site.answer("/demo/platform.js", true).unwrap();
        assert_eq!(body(&out), b"export const x = 1;");
        assert!(String::from_utf8_lossy(&out).contains("Content-Type: text/javascript"));
        let page = site.answer("/", true).unwrap();
        assert_eq!(body(&page), INDEX_HTML.as_bytes());
        assert!(String::from_utf8_lossy(&page).contains("Cache-Control: no-cache"));
        assert!(site.answer("/demo/nope.js", true).is_err());
    }

    #[test]
    fn without_the_bundle_the_page_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let site = DemoSite::load(&dir.path().join("absent.js"));
        let page = site.answer("/", false).unwrap();
        assert!(String::from_utf8_lossy(body(&page)).contains("scripts/build-demo.sh"));
        let (error, message) = site.answer("/demo/platform.js", false).unwrap_err();
        assert_eq!(error, ApiError::NotFound);
        assert!(message.contains("scripts/build-demo.sh"));
        // Our own files are compiled in and still served.
        assert!(site.answer("/demo/app.js", false).is_ok());
    }
}
