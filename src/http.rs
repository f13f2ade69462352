//! The local HTTP server: `/live.m3u8`, `/seg/<n>.ts`, `/stats`, `/metrics`, for players on
//! this machine and for monitoring, and `/` with `/hls.min.js` for a browser.
//!
//! A thin hyper 1 driver around a pure request → response mapping: the node decides what exists
//! (through [`Catalog`]); this module only maps requests to it, with bounded connections and
//! timeouts.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the HTTP server serves; implemented by the viewer's and broadcaster's nodes.
pub trait Catalog: Send + Sync + 'static {
    /// The page at `/` (the viewer's [`VIEWER_INDEX_HTML`], the broadcaster's dashboard).
    fn index_html(&self) -> &'static str;
    /// The current live playlist, or `None` (404) when nothing is playable.
    fn playlist(&self) -> Option<String>;
    /// The bytes of segment `number`, or `None` (404).
    fn segment(&self, number: u64) -> Option<Bytes>;
    /// The `/stats` body (a JSON object).
    fn stats_json(&self) -> String;
    /// The `/metrics` body in the Prometheus text format ([`crate::metrics::CONTENT_TYPE`]),
    /// or `None` (500) if it could not be written.
    fn metrics_text(&self) -> Option<String>;
    /// The `/history` body (JSON, for the broadcaster's dashboard), or `None` (404).
    fn history_json(&self) -> Option<String>;
}

/// Most connections served at once; later ones wait in the kernel's listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a client may take to send a request's headers, which also ends idle keep-alives.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight connections get to finish once shutdown is asked; then they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Largest request head accepted (players send a few hundred bytes); larger gets 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Per-connection read buffer cap (hyper's minimum is 8 KiB).
const MAX_BUF_BYTES: usize = 32 * 1024;

/// Consecutive failed `accept` calls (with back-off) after which the listener is deemed broken.
const MAX_ACCEPT_FAILURES: u32 = 50;

/// A running server started by [`Server::start`]; [`Server::stop`] ends it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl Server {
    /// Binds `addr` and serves `catalog` there in a task.
    pub async fn start(addr: SocketAddr, catalog: Arc<dyn Catalog>) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr().unwrap_or(addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, catalog, async move {
            let _ = stopped.await;
        }));
        Ok(Server { addr, stop, task })
    }

    /// The address it listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish briefly, and waits for the end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Serves the catalog on `listener` until `shutdown` completes.
///
/// HTTP/1.1 with keep-alive. Routes: `/` (an HTML page), `/hls.min.js` (the page's player), `/live.m3u8`, `/seg/<n>.ts`,
/// `/stats`, `/metrics`, `/history`; `GET` and `HEAD`, `OPTIONS` for CORS preflights, 405 for other methods, 404 for
/// other paths. Every response carries `Access-Control-Allow-Origin: *` so browser players
/// (hls.js) on any origin can use it.
///
/// On shutdown it stops accepting, lets open connections finish their current response for up
/// to [`SHUTDOWN_GRACE`], then drops the rest, and returns once every connection task is gone.
///
/// # Errors
///
/// Only when `accept` keeps failing: per-connection errors are skipped at once, resource
/// errors (e.g. out of file descriptors) are retried with back-off, and after
/// 50 failures in a row (about a minute) the listener is deemed broken and the last error
/// is returned.
pub async fn serve(
    listener: TcpListener,
    catalog: Arc<dyn Catalog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut failures = 0u32;

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connections, so the set's length is the number still open.
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "HTTP connection task failed");
                }
            }
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                match accepted {
                    Ok((stream, _peer)) => {
                        failures = 0;
                        // Responses are written whole; don't let Nagle hold back their tail.
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%error, "HTTP: could not set TCP_NODELAY");
                        }
                        let connection = serve_connection(stream, catalog.clone(), stop_rx.clone());
                        connections.spawn(connection);
                    }
                    Err(error) if is_connection_error(&error) => {
                        tracing::debug!(%error, "HTTP accept: a connection failed early");
                    }
                    Err(error) => {
                        failures += 1;
                        if failures >= MAX_ACCEPT_FAILURES {
                            return Err(error);
                        }
                        tracing::warn!(%error, failures, "HTTP accept failed; backing off");
                        // 20 ms doubling up to 1.28 s: ~1 min of failures before giving up.
                        let back_off = Duration::from_millis(10u64 << failures.min(7));
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(back_off) => {}
                        }
                    }
                }
            }
        }
    }

    drop(listener);
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = connections.len(),
            "HTTP shutdown grace over; dropping connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Errors that concern one incoming connection, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Runs one HTTP/1 connection until the client leaves, a timeout hits, or `stop` turns true.
async fn serve_connection(
    stream: TcpStream,
    catalog: Arc<dyn Catalog>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(catalog.as_ref(), request.method(), request.uri().path());
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_BUF_BYTES);
    let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));

    let result = tokio::select! {
        result = connection.as_mut() => result,
        // The guard `wait_for` returns is not `Send`: drop it inside the block. A dropped
        // sender means `serve` is gone, which is a stop as well.
        () = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
            // Finish the response in progress (if any), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    /// `/`: a page for a person who opened the port in a browser.
    Index,
    /// `/live.m3u8`.
    Playlist,
    /// `/seg/<n>.ts`.
    Segment(u64),
    /// `/stats`.
    Stats,
    /// `/metrics`.
    Metrics,
    /// `/history`.
    History,
    /// `/hls.min.js`: the player the viewer's page loads.
    HlsJs,
}

impl Resource {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/" => Some(Self::Index),
            "/live.m3u8" => Some(Self::Playlist),
            "/stats" => Some(Self::Stats),
            "/metrics" => Some(Self::Metrics),
            "/history" => Some(Self::History),
            "/hls.min.js" => Some(Self::HlsJs),
            _ => {
                let digits = path.strip_prefix("/seg/")?.strip_suffix(".ts")?;
                // `u64::from_str` would also take a leading `+`; only plain digits name a segment.
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse().ok().map(Self::Segment)
            }
        }
    }
}

/// The viewer's watch page at `/`: plays the stream (hls.js, or Safari's own HLS), shows
/// the viewer's `/stats` live and the commands for other players.
pub const VIEWER_INDEX_HTML: &str = include_str!("../assets/watch.html");

/// hls.js 1.5.20 (`dist/hls.light.min.js` from npm, Apache-2.0, see
/// `assets/hls.js-LICENSE`), served at `/hls.min.js` from inside the binary so the page works
/// offline and needs no CDN.
pub const HLS_JS: &[u8] = include_bytes!("../assets/hls.light.min.js");

/// The player script is fixed for a build, so a browser may keep it for a day.
const HLS_JS_CACHE_CONTROL: &str = "public, max-age=86400";

const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";

/// Segment bodies never change under their number, so players and proxies may keep them.
const SEGMENT_CACHE_CONTROL: &str = "public, max-age=3600";

/// Maps a request to its response; pure apart from asking the catalog.
fn respond(catalog: &dyn Catalog, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let Some(resource) = Resource::from_path(path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if method == Method::OPTIONS {
        let mut response = with_body(StatusCode::NO_CONTENT, Bytes::new());
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        headers.remove(header::CONTENT_LENGTH);
        return response;
    }
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        return response;
    }

    // `Err` is a status other than 200 or 404, with its short text.
    let found: Result<Option<(Bytes, &'static str, &'static str)>, _> = match resource {
        Resource::Index => Ok(Some((
            Bytes::from_static(catalog.index_html().as_bytes()),
            "text/html; charset=utf-8",
            "no-cache",
        ))),
        Resource::Playlist => Ok(catalog.playlist().map(|m3u8| {
            (
                Bytes::from(m3u8),
                "application/vnd.apple.mpegurl",
                "no-cache",
            )
        })),
        Resource::Segment(number) => Ok(catalog
            .segment(number)
            .map(|bytes| (bytes, "video/mp2t", SEGMENT_CACHE_CONTROL))),
        Resource::Stats => Ok(Some((
            Bytes::from(catalog.stats_json()),
            "application/json",
            "no-cache",
        ))),
        Resource::HlsJs => Ok(Some((
            Bytes::from_static(HLS_JS),
            "text/javascript; charset=utf-8",
            HLS_JS_CACHE_CONTROL,
        ))),
        Resource::History => Ok(catalog
            .history_json()
            .map(|json| (Bytes::from(json), "application/json", "no-cache"))),
        Resource::Metrics => match catalog.metrics_text() {
            Some(text) => Ok(Some((
                Bytes::from(text),
                crate::metrics::CONTENT_TYPE,
                "no-cache",
            ))),
            None => Err((StatusCode::INTERNAL_SERVER_ERROR, "cannot write metrics\n")),
        },
    };
    let mut response = match found {
        Err((status, why)) => text(status, why),
        Ok(Some((body, content_type, cache_control))) => {
            let mut response = with_body(StatusCode::OK, body);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            );
            response
        }
        Ok(None) => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if head {
        // Same headers, Content-Length included, without the body.
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

/// A short `text/plain` response that no cache keeps (a missing segment may arrive later).
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = with_body(status, Bytes::from_static(body.as_bytes()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A response with `body`, its Content-Length and the CORS header every response carries.
fn with_body(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, length);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources() {
        assert_eq!(Resource::from_path("/"), Some(Resource::Index));
        assert_eq!(Resource::from_path("/live.m3u8"), Some(Resource::Playlist));
        assert_eq!(Resource::from_path("/stats"), Some(Resource::Stats));
        assert_eq!(Resource::from_path("/metrics"), Some(Resource::Metrics));
        assert_eq!(Resource::from_path("/history"), Some(Resource::History));
        assert_eq!(Resource::from_path("/hls.min.js"), Some(Resource::HlsJs));
        assert_eq!(Resource::from_path("/seg/0.ts"), Some(Resource::Segment(0)));
        assert_eq!(
            Resource::from_path("/seg/18446744073709551615.ts"),
            Some(Resource::Segment(u64::MAX))
        );
        for bad in [
            "/seg/.ts",
            "/seg/+1.ts",
            "/seg/-1.ts",
            "/seg/1.5.ts",
            "/seg/abc.ts",
            "/seg/18446744073709551616.ts",
            "/seg/1",
            "/seg/1.ts/",
            "/seg//1.ts",
            "/live.m3u8/",
            "/index.html",
            "",
            "*",
        ] {
            assert_eq!(Resource::from_path(bad), None, "{bad}");
        }
    }

    struct OneSegment;

    impl Catalog for OneSegment {
        fn playlist(&self) -> Option<String> {
            None
        }
        fn segment(&self, number: u64) -> Option<Bytes> {
            (number == 3).then(|| Bytes::from_static(b"three"))
        }
        fn stats_json(&self) -> String {
            "{}".to_owned()
        }
        fn metrics_text(&self) -> Option<String> {
            None
        }
        fn index_html(&self) -> &'static str {
            VIEWER_INDEX_HTML
        }
        fn history_json(&self) -> Option<String> {
            None
        }
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        use hyper::body::Body as _;

        let get = respond(&OneSegment, &Method::GET, "/seg/3.ts");
        let head = respond(&OneSegment, &Method::HEAD, "/seg/3.ts");
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.headers(), head.headers());
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(head.body().size_hint().exact(), Some(0));
        assert_eq!(get.body().size_hint().exact(), Some(5));
    }

    #[test]
    fn the_page_loads_the_bundled_player() {
        let page = respond(&OneSegment, &Method::GET, "/");
        assert!(VIEWER_INDEX_HTML.contains("<script src=\"hls.min.js\">"));
        assert!(page.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let script = respond(&OneSegment, &Method::GET, "/hls.min.js");
        assert_eq!(script.status(), StatusCode::OK);
        assert_eq!(
            script.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            script.headers()[header::CONTENT_LENGTH],
            HLS_JS.len().to_string().as_str()
        );
        // The bundled file is hls.js itself, the release the docs name.
        let head = std::str::from_utf8(&HLS_JS[..HLS_JS.len().min(4096)]).unwrap_or("");
        assert!(String::from_utf8_lossy(HLS_JS).contains("1.5.20"), "{head}");
    }

    #[test]
    fn method_and_presence_decide_the_status() {
        let status = |method: Method, path: &str| respond(&OneSegment, &method, path).status();
        assert_eq!(status(Method::GET, "/seg/4.ts"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::GET, "/live.m3u8"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::GET, "/stats"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/history"), StatusCode::NOT_FOUND);
        assert_eq!(
            status(Method::GET, "/metrics"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(Method::POST, "/stats"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::DELETE, "/seg/3.ts"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(Method::POST, "/nope"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::OPTIONS, "/seg/3.ts"), StatusCode::NO_CONTENT);
    }
}
