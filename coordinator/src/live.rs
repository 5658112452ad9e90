//! The live report: while a sweep runs, `bnsweep serve` and `bnsweep run` serve the page of
//! `bnsweep report` over HTTP on a port of their own, with the sweep's progress on top. The page
//! reloads itself every few seconds (no scripts). With a shared token, every request must carry
//! it: `?token=SECRET` in the URL (kept across reloads) or `Authorization: Bearer SECRET`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bnsweep_proto as pb;
use tokio::net::TcpListener;

use crate::report;
use crate::service::Shared;

/// How often the page reloads itself, and how long a built page is reused.
const RELOAD: Duration = Duration::from_secs(3);

struct Live {
    shared: Arc<Shared>,
    token: Option<String>,
    started: Instant,
    /// The last page built, and when: many viewers cost one build per period.
    cache: Mutex<Option<(Instant, String)>>,
}

/// Serves the live report on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(Live {
        shared,
        token,
        started: Instant::now(),
        cache: Mutex::new(None),
    });
    let app = Router::new().route("/", get(page)).with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

async fn page(
    State(live): State<Arc<Live>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = &live.token {
        let bearer = pb::auth::bearer(token);
        let sent_header = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let sent_query = query.get("token").map(|t| t.as_bytes()).unwrap_or_default();
        if !pb::auth::same(sent_header, bearer.as_bytes())
            && !pb::auth::same(sent_query, token.as_bytes())
        {
            return (
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: open this page with ?token=SECRET (the coordinator's --token)",
            )
                .into_response();
        }
    }
    let cached = {
        let cache = live.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RELOAD)
            .map(|(_, page)| page.clone())
    };
    let body = match cached {
        Some(page) => page,
        None => {
            let l = live.clone();
            let built = tokio::task::spawn_blocking(move || build(&l)).await;
            let page = match built {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => format!(
                    "<p>the report cannot be built yet: {}</p>",
                    report::svg::esc(&e.to_string())
                ),
                Err(e) => format!("<p>the report failed: {e}</p>"),
            };
            *live.cache.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now(), page.clone()));
            page
        }
    };
    Html(body).into_response()
}

fn build(live: &Live) -> crate::Result<String> {
    let progress = live.shared.scheduler().progress();
    let line = crate::progress::line(&progress, live.started.elapsed());
    let results = report::data::Results::open(live.shared.results.dir())?;
    let r = report::build(&results)?;
    Ok(report::html_live(&r, &line, RELOAD))
}
