//! The live report: while a sweep runs, `bnsweep serve` and `bnsweep run` serve the page of
//! `bnsweep report` on a port of their own, with the sweep's progress on top; `bnsweep server`
//! serves a page listing its sweeps with their progress (`/`), each linking to its own live
//! report (`/sweeps/NAME/`). The pages reload
//! itself every few seconds (no scripts). Over HTTPS, with the coordinator's certificate, when
//! it serves TLS. With a shared token, the page asks for it once in a form (POST /login, never
//! in a URL) and sets an HttpOnly cookie holding a session id drawn when the coordinator
//! started (`Secure` over HTTPS); `Authorization: Bearer SECRET` works too, for scripts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bnsweep_proto as pb;
use tokio::net::TcpListener;

use crate::report;
use crate::served::ServedSweep;

/// How often the page reloads itself, and how long a built page is reused.
const RELOAD: Duration = Duration::from_secs(3);

/// The session cookie's name.
const COOKIE: &str = "bnsweep_live";

/// What the pages show: one sweep, or every sweep of a `bnsweep server`.
pub enum Sweeps {
    One(Arc<ServedSweep>),
    Many(Arc<crate::hub::Hub>),
}

struct Live {
    sweeps: Sweeps,
    token: Option<String>,
    /// What the cookie of a logged-in viewer holds: 128 random bits, new at every start.
    session: String,
    /// Served over HTTPS: the cookie is `Secure`.
    tls: bool,
    started: Instant,
    /// The last page built of each sweep, and when: many viewers cost one build per period.
    cache: Mutex<HashMap<String, (Instant, String)>>,
}

/// A certificate chain and its key (PEM), to serve the page over HTTPS.
pub struct Tls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Serves the live report on `listener` until `stop` resolves, over HTTPS with `tls`.
pub async fn serve(
    listener: TcpListener,
    sweeps: Sweeps,
    token: Option<String>,
    tls: Option<Tls>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(Live {
        sweeps,
        token,
        session: format!("{:032x}", rand::random::<u128>()),
        tls: tls.is_some(),
        started: Instant::now(),
        cache: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/", get(root))
        .route("/sweeps/{name}/", get(sweep_page))
        .route("/login", post(login))
        .with_state(state);
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(tls) => serve_tls(listener, app, &tls, stop).await,
    }
}

/// The same app over TLS: each connection's handshake, then HTTP/1.1 on it.
async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: &Tls,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| bad(format!("key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return Ok(()),
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, say: the page waits, it does not end.
                tracing::warn!("live report: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
            let Ok(Ok(stream)) = handshake.await else {
                return; // a failed or stalled handshake (an untrusting or silent client)
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

/// The login page: one password field, posted to /login (no scripts).
fn login_page(status: StatusCode, note: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>bnsweep live report</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>bnsweep live report</h1><p>{}</p>\
         <form method=\"post\" action=\"/login\"><label>Token <input type=\"password\" name=\"token\" autofocus></label> \
         <button type=\"submit\">Open</button></form></body></html>",
        report::svg::esc(note)
    );
    (status, Html(body)).into_response()
}

/// Whether a request comes from a logged-in viewer (its cookie) or carries the token.
fn allowed(live: &Live, headers: &HeaderMap) -> bool {
    let Some(token) = &live.token else {
        return true;
    };
    let bearer = pb::auth::bearer(token);
    let sent_header = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|v| pb::auth::same(v.as_bytes(), live.session.as_bytes()));
    session || pb::auth::same(sent_header, bearer.as_bytes())
}

/// POST /login: the right token sets the session cookie and goes to the page.
async fn login(
    State(live): State<Arc<Live>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let sent = form.get("token").map(|t| t.trim()).unwrap_or_default();
    let right = live
        .token
        .as_ref()
        .is_none_or(|t| pb::auth::same(sent.as_bytes(), t.as_bytes()));
    if !right {
        return login_page(StatusCode::UNAUTHORIZED, "Wrong token: try again.");
    }
    let secure = if live.tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/{secure}",
        live.session
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}

/// `/`: the sweep's live report, or on a server the list of its sweeps.
async fn root(State(live): State<Arc<Live>>, headers: HeaderMap) -> Response {
    if !allowed(&live, &headers) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "This coordinator has a shared token: enter it to see the sweep (once; a cookie keeps you in).",
        );
    }
    match &live.sweeps {
        Sweeps::One(shared) => {
            let shared = shared.clone();
            page(&live, String::new(), shared).await
        }
        Sweeps::Many(hub) => Html(index(hub)).into_response(),
    }
}

/// `/sweeps/NAME/`: one sweep's live report, on a server.
async fn sweep_page(
    State(live): State<Arc<Live>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !allowed(&live, &headers) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "This coordinator has a shared token: enter it to see the sweep (once; a cookie keeps you in).",
        );
    }
    let shared = match &live.sweeps {
        Sweeps::Many(hub) => hub.shared_of(&name),
        Sweeps::One(_) => None,
    };
    match shared {
        Some(shared) => page(&live, name, shared).await,
        None => (
            StatusCode::NOT_FOUND,
            Html(format!(
                "<p>no sweep `{}` here</p>",
                report::svg::esc(&name)
            )),
        )
            .into_response(),
    }
}

/// The list of a server's sweeps, each with its progress and a link to its report.
fn index(hub: &crate::hub::Hub) -> String {
    use std::fmt::Write;
    let mut rows = String::new();
    for s in hub.statuses() {
        let p = crate::progress::of_status(&s);
        let state = crate::progress::state(&s);
        let name = report::svg::esc(&s.sweep);
        let _ = write!(
            rows,
            "<tr><td class=\"l\"><a href=\"/sweeps/{name}/\">{name}</a></td><td class=\"l\">{state}</td><td>{}</td>\
             <td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            s.priority,
            report::svg::esc(&crate::progress::line(&p, Duration::from_secs_f64(s.elapsed_s))),
            report::svg::esc(&s.dir)
        );
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{}\">\
         <title>bnsweep server</title><style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px}}td.l,th.l{{text-align:left}}</style></head>\
         <body><h1>bnsweep server: {} sweep(s)</h1><table><tr><th class=\"l\">sweep</th><th class=\"l\">state</th><th>priority</th>\
         <th class=\"l\">progress</th><th class=\"l\">results</th></tr>{rows}</table></body></html>",
        RELOAD.as_secs().max(1),
        hub.statuses().len()
    )
}

async fn page(live: &Arc<Live>, key: String, shared: Arc<ServedSweep>) -> Response {
    let cached = {
        let cache = live.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&key)
            .filter(|(at, _)| at.elapsed() < RELOAD)
            .map(|(_, page)| page.clone())
    };
    let body = match cached {
        Some(page) => page,
        None => {
            let started = live.started;
            let built = tokio::task::spawn_blocking(move || build(&shared, started)).await;
            let page = match built {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => format!(
                    "<p>the report cannot be built yet: {}</p>",
                    report::svg::esc(&e.to_string())
                ),
                Err(e) => format!("<p>the report failed: {e}</p>"),
            };
            live.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (Instant::now(), page.clone()));
            page
        }
    };
    Html(body).into_response()
}

fn build(shared: &ServedSweep, started: Instant) -> crate::Result<String> {
    let progress = shared.scheduler().progress();
    let line = crate::progress::line(&progress, started.elapsed());
    let results = report::data::Results::open(shared.results.dir())?;
    let r = report::build(&results)?;
    Ok(report::html_live(&r, &line, RELOAD))
}
