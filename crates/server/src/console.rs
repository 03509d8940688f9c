//! The web console: three static files compiled into the binary and served on the HTTP port.
//!
//! ```text
//!  browser ── GET / ──────────────────► index.html  ┐
//!          ── GET /console/app.js ────► app.js      ├ this module: no login, no data
//!          ── GET /console/style.css ─► style.css   ┘
//!          ── POST /v1/sql ───────────► the gate, then the query engine (crate::http)
//!          ── GET /metrics ───────────► this node's counters; the page turns two reads into rates
//! ```
//!
//! The page holds no data of its own: everything it shows comes from `POST /v1/sql`
//! (`system.*` tables and the user's queries) with the credential the user types in, so
//! it opens no access path a SQL client does not have. It is plain JavaScript with no build
//! step and nothing fetched from elsewhere, so a cluster on an offline network has its
//! console; `crates/cli/tests/console.rs` drives it in a headless Chromium.
//!
//! Invariants:
//! - The HTML page carries a Content-Security-Policy that allows only these files and
//!   same-origin requests, and no inline script or style: a value a query returns cannot
//!   run even if it reached the page as markup (app.js also inserts data only as text; the
//!   tests below hold both files to that).
//! - Every answer says `Cache-Control: no-cache`: after an upgrade, a browser asks again
//!   rather than run an old script against a new node.
//! - The files are `include_str!`ed: what a node serves is what it was built with.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page. It names its script and style sheet relative to itself, so the console also
/// works behind a reverse proxy that serves the node under a path prefix.
pub const INDEX_HTML: &str = include_str!("console/index.html");
pub const APP_JS: &str = include_str!("console/app.js");
pub const STYLE_CSS: &str = include_str!("console/style.css");

pub const APP_JS_PATH: &str = "/console/app.js";
pub const STYLE_CSS_PATH: &str = "/console/style.css";

/// Scripts and styles from this origin only, requests to this origin only, no framing. The
/// favicon is an empty `data:` URL (so the browser asks for no `/favicon.ico`).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The console's routes (any router state: they need none).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route(APP_JS_PATH, get(app_js))
        .route(STYLE_CSS_PATH, get(style_css))
}

/// The page, whatever the request's `Accept` says (`curl /` gets the HTML too).
async fn index() -> Response {
    let mut r = asset(INDEX_HTML, "text/html; charset=utf-8");
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads exactly the files the router serves (relative to `/`).
    #[test]
    fn the_page_links_the_files_the_router_serves() {
        let script = format!(
            "<script type=\"module\" src=\"{}\"></script>",
            &APP_JS_PATH[1..]
        );
        assert!(INDEX_HTML.contains(&script), "no {script}");
        let style = format!(
            "<link rel=\"stylesheet\" href=\"{}\">",
            &STYLE_CSS_PATH[1..]
        );
        assert!(INDEX_HTML.contains(&style), "no {style}");
    }

    /// What the Content-Security-Policy forbids is not in the files either (it would
    /// silently not run), and app.js has no way to insert markup: data goes in as text.
    #[test]
    fn data_reaches_the_page_as_text_only() {
        for (i, _) in INDEX_HTML.match_indices("<script") {
            let tag = &INDEX_HTML[i..i + INDEX_HTML[i..].find('>').unwrap_or(0)];
            assert!(tag.contains(" src="), "an inline script: {tag}");
        }
        for inline in [
            " style=",
            " onclick=",
            " onload=",
            " onerror=",
            " onsubmit=",
        ] {
            assert!(!INDEX_HTML.contains(inline), "index.html has{inline}");
        }
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "createContextualFragment",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }

    /// The ids and attributes the browser test (crates/cli/tests/console/console_test.py)
    /// finds things by.
    #[test]
    fn the_page_has_the_ids_tests_rely_on() {
        for id in [
            "nodes-table",
            "ingest-rate",
            "query-rate",
            "vshards-table",
            "tables-table",
            "columns-table",
            "sql-input",
            "sql-run",
            "sql-status",
            "sql-error",
            "chart",
            "results-grid",
            "login",
            "login-user",
            "login-password",
            "login-token",
            "login-submit",
            "login-error",
        ] {
            assert!(INDEX_HTML.contains(&format!("id=\"{id}\"")), "no #{id}");
        }
        for attr in ["nodeId", "swim", "vshard", "table", "column", "series"] {
            assert!(
                APP_JS.contains(&format!("{attr}:")),
                "app.js sets no data-{attr}"
            );
        }
    }
}
