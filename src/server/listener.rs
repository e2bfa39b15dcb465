//! The accept loop, each connection's limits, and a shutdown that always ends.
//!
//! axum's `serve` runs hyper without a timer, so a connection could hold its slot forever:
//! half-sent headers, an idle keep-alive connection, a body that never comes. Here every
//! connection is served by hyper-util's [`auto::Builder`](hyper_util::server::conn::auto)
//! (HTTP/1 only) with a [`TokioTimer`], which gives:
//!
//! - **a header-read timeout** ([`ConnectionConfig::header_read_timeout`]): hyper starts
//!   this one timer when a connection opens and again each time it goes idle after a
//!   response, so the same bound closes a slow client's half-sent headers *and* an idle
//!   keep-alive connection;
//! - **half-closed clients**: a client that sends its request and then shuts down its
//!   write side (`shutdown(SHUT_WR)`) still gets its answer (hyper's `half_close`; see
//!   [`ConnectionConfig::half_close`] for what it costs);
//! - **at most [`ConnectionConfig::max_connections`]** connections: the loop takes a
//!   permit before it accepts, so further clients wait in the kernel's backlog instead of
//!   costing a task and buffers each.
//!
//! Request bodies are bounded by the JSON extractor (size, and a deadline that grows with
//! the declared length at a minimum rate: see [`ServerConfig`](super::ServerConfig)), and a
//! response whose request body was left unread says `Connection: close`, because hyper
//! cannot reuse such a connection (it closes it after the response).
//!
//! # Shutdown
//!
//! When the shutdown future completes:
//!
//! 1. **Drain.** The engine stops taking requests: new API requests get 503 with
//!    `Retry-After` and `/health` answers 503 `{"status": "shutting_down"}`. The listener
//!    keeps accepting, so that load balancers can see this, and every response now says
//!    `Connection: close`.
//! 2. **Grace.** Requests in flight get [`ConnectionConfig::shutdown_timeout`] to finish.
//!    When it passes, the engine aborts the rest: their streams end with an error event and
//!    non-streamed requests get a 503.
//! 3. **Close.** The listener is closed and every connection is told to close after its
//!    current response (hyper's graceful shutdown, which also ends connections that are idle
//!    or still reading headers). Connections still open after
//!    [`ConnectionConfig::close_timeout`] (a client that stopped reading its stream, say)
//!    are dropped.
//!
//! Then [`serve_connections`] returns, whatever the clients do.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::parse_errors::ExplainParseErrors;
use super::{router, routes, AppState};

/// Limits on connections and how shutdown proceeds. The defaults are what `waypoint serve`
/// uses unless told otherwise.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// How long a connection may take to send a complete request head, counted from when
    /// it opens or goes idle after a response: both a slow client's headers and an idle
    /// keep-alive connection are closed after this. By default 10 s (a client on a slow
    /// link sends a few hundred bytes of headers in far less; an idle client reconnects
    /// cheaply).
    pub header_read_timeout: Duration,
    /// Whether a client that shuts down its write side after sending a request still gets
    /// the answer. By default true. The price: a client that closes its connection looks
    /// the same as one that half-closed it until the server writes, so a non-streamed
    /// request whose client left runs until its answer is written (bounded by its
    /// `max_tokens`) instead of being aborted at once; streams still notice at their next
    /// event.
    pub half_close: bool,
    /// Most connections served at once; more wait in the kernel's backlog until one closes.
    /// By default 512, which leaves room under the usual limit of 1024 open files.
    pub max_connections: usize,
    /// How long requests in flight may take to finish once shutdown begins, before they
    /// are aborted. By default 30 s.
    pub shutdown_timeout: Duration,
    /// After the grace period: how long connections get to deliver their last events and
    /// close before they are dropped. By default 2 s.
    pub close_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            half_close: true,
            max_connections: 512,
            shutdown_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(2),
        }
    }
}

/// Where the server is in its life, shared by the accept loop, every request and the
/// shutdown sequence.
#[derive(Debug, Default)]
struct Lifecycle {
    /// Set when shutdown begins.
    draining: AtomicBool,
    /// Requests whose response has not been fully sent (or dropped) yet.
    in_flight: AtomicUsize,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
}

impl Lifecycle {
    /// Waits until no request is in flight.
    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a wake-up between the two is not lost.
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one request from its arrival until its response body is done or dropped.
struct InFlight(Arc<Lifecycle>);

impl InFlight {
    fn enter(lifecycle: Arc<Lifecycle>) -> Self {
        lifecycle.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(lifecycle)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Serves the API on `listener` (answering 503 "loading" until `loaded` yields the state)
/// with the connection limits of `config`, until `shutdown` completes and the shutdown
/// sequence of the module docs has run. If `loaded` yields `None` (loading failed), serving
/// stops at once.
pub async fn serve_connections(
    listener: TcpListener,
    loaded: impl Future<Output = Option<AppState>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: ConnectionConfig,
) -> io::Result<()> {
    let address = listener.local_addr()?;
    let app: Arc<OnceLock<(Router, AppState)>> = Arc::new(OnceLock::new());
    let (load_failed, load_failed_rx) = oneshot::channel::<()>();
    let lifecycle = Arc::new(Lifecycle::default());
    let slot = app.clone();
    let stopped_while_loading = lifecycle.clone();
    let publish = async move {
        match loaded.await {
            Some(state) => {
                let model = state.engine.model().name.clone();
                let _ = slot.set((router(state.clone()), state.clone()));
                // Checked after publishing, as the shutdown sets the flag before it looks
                // for the state (both sequentially consistent): one of the two sees the
                // other, so the engine is stopped either way.
                if stopped_while_loading.draining.load(Ordering::SeqCst) {
                    tracing::info!("the model loaded after shutdown began; not serving it");
                    state.ready.store(false, Ordering::Release);
                    state.engine.stop_accepting();
                    return;
                }
                // Only now: whoever waits for this line may send requests at once.
                tracing::info!(%address, %model, "waypoint ready");
            }
            None => {
                let _ = load_failed.send(());
            }
        }
    };
    // A state that is ready already (`serve`) is published before the first connection is
    // accepted, so that no request sees "loading"; otherwise loading goes on beside serving.
    let mut publish = Box::pin(publish);
    if futures::FutureExt::now_or_never(&mut publish).is_none() {
        tokio::spawn(publish);
    }
    let slot = app.clone();
    let front = Router::new()
        .fallback(move |request: Request| {
            let slot = slot.clone();
            async move {
                match slot.get() {
                    Some((router, _)) => match router.clone().oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    None => routes::while_loading(request.uri().path()),
                }
            }
        })
        .layer(axum::middleware::from_fn_with_state(
            lifecycle.clone(),
            track_request,
        ));

    let (stop_accepting, stop_accepting_rx) = oneshot::channel::<()>();
    let (close, close_rx) = watch::channel(false);
    let accepting = tokio::spawn(accept_loop(
        listener,
        front,
        connection_builder(&config),
        config.max_connections,
        close_rx,
        stop_accepting_rx,
    ));

    let load_failed = tokio::select! {
        _ = shutdown => false,
        // Only a failed load completes this; a dropped sender (loaded) must not.
        Ok(()) = load_failed_rx => true,
    };
    lifecycle.draining.store(true, Ordering::SeqCst);
    let state = app.get().map(|(_, state)| state.clone());
    if let Some(state) = &state {
        state.ready.store(false, Ordering::Release);
        state.engine.stop_accepting();
    }
    if !load_failed {
        tracing::info!(
            timeout_s = config.shutdown_timeout.as_secs_f64(),
            "shutting down: draining requests in flight"
        );
        let drained = tokio::time::timeout(config.shutdown_timeout, lifecycle.wait_idle()).await;
        if drained.is_err() {
            let in_flight = lifecycle.in_flight.load(Ordering::Acquire);
            tracing::warn!(
                in_flight,
                "shutdown timeout reached: aborting requests in flight"
            );
            if let Some(state) = &state {
                state.engine.abort_all();
            }
        }
    }
    drop(state);

    let _ = stop_accepting.send(());
    let mut connections = accepting
        .await
        .map_err(|err| io::Error::other(format!("the accept loop failed: {err}")))?;
    let _ = close.send(true);
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(config.close_timeout, all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "dropping connections that did not close in time"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// hyper's read buffer, which bounds a request's line and headers (431 past it). hyper checks
/// the bound between reads and one read may fill up to twice it, so a header block is refused
/// somewhere between 64 and 128 KiB (measured): four to eight times what nginx accepts by
/// default. Without it hyper's buffer grows to about 1 MiB per connection.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// hyper's HTTP/1 connection settings. HTTP/2 is left out: hyper applies no header or idle
/// timeout to it, and the OpenAI API is spoken over HTTP/1.1.
fn connection_builder(config: &ConnectionConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .half_close(config.half_close);
    builder
}

/// Accepts connections (at most `max_connections` open at once) until `stop` fires, and
/// hands back the connections still open.
async fn accept_loop(
    listener: TcpListener,
    service: Router,
    builder: auto::Builder<TokioExecutor>,
    max_connections: usize,
    close: watch::Receiver<bool>,
    mut stop: oneshot::Receiver<()>,
) -> JoinSet<()> {
    let permits = Arc::new(Semaphore::new(max_connections));
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            biased;
            _ = &mut stop => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of file descriptors, say: accepting again at once would spin.
                tracing::error!(error = %err, "accept failed; retrying in a second");
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        connections.spawn(serve_connection(
            stream,
            builder.clone(),
            service.clone(),
            close.clone(),
            permit,
        ));
        // Reap finished connections so the set does not grow with every one ever served.
        while connections.try_join_next().is_some() {}
    }
    connections
}

/// Errors that concern one connection only (the client gave up before we accepted).
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, or until `close` turns true, after which it ends
/// once its current response is sent.
async fn serve_connection(
    stream: TcpStream,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: Router,
    mut close: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    // Tokens are small writes; Nagle's algorithm would hold each one back until the
    // previous one is acknowledged.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let connection = builder.serve_connection(
        TokioIo::new(ExplainParseErrors::new(stream)),
        TowerToHyperService::new(service),
    );
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                // Timeouts, resets and malformed requests: the client's doing.
                tracing::debug!(error = %err, "connection ended with an error");
            }
            return;
        }
        _ = close.wait_for(|&close| close) => {}
    }
    connection.as_mut().graceful_shutdown();
    if let Err(err) = connection.await {
        tracing::debug!(error = %err, "connection ended with an error while closing");
    }
}

/// Counts the request in flight until its response body is done, and marks the response
/// `Connection: close` when the connection will not be reused: during shutdown, or when
/// the handler left the request body unread (hyper then closes the connection, and a client
/// that was not told would send its next request into a closing socket).
async fn track_request(
    State(lifecycle): State<Arc<Lifecycle>>,
    request: Request,
    next: Next,
) -> Response {
    let in_flight = InFlight::enter(lifecycle.clone());
    let has_body = has_body(request.headers());
    let ended = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(EndTracking {
            inner: body,
            ended: ended.clone(),
        })
    });
    let mut response = next.run(request).await;
    let body_unread = has_body && !ended.load(Ordering::Acquire);
    if body_unread || lifecycle.draining.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            // The closure owns the guard, so the request counts until the body is dropped.
            let _in_flight = &in_flight;
            frame
        }))
    })
}

/// Whether the request announces a body (chunked, or a length that is not zero).
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|value| value.to_str().map_or(true, |value| value.trim() != "0"))
}

/// A request body that records whether it was read to its end.
struct EndTracking {
    inner: Body,
    ended: Arc<AtomicBool>,
}

impl HttpBody for EndTracking {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
