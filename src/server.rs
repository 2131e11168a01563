//! The HTTP listener: connections, TLS, basic auth, limits and graceful shutdown
//! (hyper 1).
//!
//! One task per connection. The listener guards itself: a client has
//! [`HEADER_READ_TIMEOUT`] to finish its TLS handshake and again to send its
//! request head (slowloris), heads are capped in size, and on shutdown the
//! listener is dropped at once while requests in flight get [`DRAIN_TIMEOUT`] to
//! finish. With a [`WebConfigHandle`], each new connection takes the TLS
//! configuration in force when it is accepted (client certificates, with
//! `client_allowed_sans`, are checked in the handshake), and each request the
//! rate limit, users and headers in force when it arrives. As with
//! exporter-toolkit, the rate limit comes first (beyond it the answer is 429,
//! whoever asks), then basic auth, on every path, `/healthz` included. What each
//! path answers lives in [`crate::routes`].
//!
//! At most `--web.max-connections` connections are held: when a new one would go
//! beyond, the oldest idle one (no request in flight) is closed, and if none is
//! idle the new one is. Idle clients can then never take every descriptor from
//! the scrapes and the upstream client. The exporter fits that cap under the
//! process's descriptor limit at start (see `app`). Should `accept` fail all
//! the same (out of descriptors), the oldest idle connection is closed, the
//! loop backs off, and the failure is logged once per [`ACCEPT_LOG_EVERY`].
//!
//! A server listens on one socket or several (`--web.listen-address` given more
//! than once, or the sockets systemd passes with `--web.systemd-socket`), all
//! served alike.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use crate::body::Body;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_io_timeout::TimeoutStream;

use crate::config::ListenAddress;
use crate::routes::Routes;
use crate::signals::RateLimitedLog;
use crate::web_config::{WebConfigHandle, REALM};

/// Time a client has to complete its TLS handshake, and to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted, bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time a response may make no progress before its connection is closed: a
/// client that stops reading a body (or reads nothing at all) is cut off after
/// it, which gives its request slot back and lets go of the body. Ten seconds is
/// Prometheus' default scrape timeout: a scraper that read nothing for that long
/// has given up.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Time requests in flight get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections held at most when not configured (`--web.max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// At most one "accept failed" line per this time; the others are counted in it.
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The pause after a failed `accept`, doubled at each failure in a row up to
/// [`ACCEPT_BACKOFF_MAX`]: a listener out of descriptors stays readable, and
/// accepting again at once would spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Bound listeners; [`Server::local_addr`] is known before serving starts.
pub struct Server {
    /// At least one.
    listeners: Vec<TcpListener>,
    web: Option<WebConfigHandle>,
    header_read_timeout: Duration,
    max_connections: usize,
}

/// The connections being served, oldest first, with how many requests each has
/// in flight and a handle to close it.
#[derive(Default)]
struct Connections {
    held: Mutex<BTreeMap<u64, Held>>,
    next: std::sync::atomic::AtomicU64,
    /// Connections whose task has not ended yet, closed ones included: a
    /// closed connection gives its descriptor back only when its task ends.
    alive: AtomicUsize,
    /// Woken when a connection's task ends.
    released: tokio::sync::Notify,
}

struct Held {
    in_flight: Arc<AtomicUsize>,
    task: tokio::task::AbortHandle,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for one more connection under `max`: closes the oldest idle
    /// one if needed. Returns false when every held connection is busy.
    fn make_room(&self, max: usize) -> bool {
        let mut held = self.lock();
        held.len() < max || close_idle(&mut held)
    }

    /// Closes the oldest idle connection, if any: what `accept` needs when the
    /// process is out of descriptors. Returns whether one was closed.
    fn close_oldest_idle(&self) -> bool {
        close_idle(&mut self.lock())
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Failed `accept`s in a row: the back-off, and the log that says so without
/// flooding.
struct AcceptFailures {
    in_a_row: u32,
    log: RateLimitedLog,
}

impl AcceptFailures {
    fn new() -> Self {
        AcceptFailures {
            in_a_row: 0,
            log: RateLimitedLog::new(ACCEPT_LOG_EVERY),
        }
    }

    /// Records a failure and returns how long to wait before accepting again.
    fn failed(&mut self, err: &std::io::Error, closed_idle: bool) -> Duration {
        self.in_a_row = self.in_a_row.saturating_add(1);
        if let Some(left_out) = self.log.admit() {
            tracing::warn!(
                error = %err,
                closed_idle_connection = closed_idle,
                failures_not_logged = left_out,
                "accept failed; backing off (out of descriptors? raise the hard limit, LimitNOFILE= in systemd, or lower --web.max-connections)"
            );
        }
        let doublings = self.in_a_row.saturating_sub(1).min(7);
        (ACCEPT_BACKOFF_MIN * 2u32.pow(doublings)).min(ACCEPT_BACKOFF_MAX)
    }

    fn succeeded(&mut self) {
        self.in_a_row = 0;
    }
}

/// Binds the first candidate of `address` that can be bound.
async fn bind_one(address: &ListenAddress) -> std::io::Result<TcpListener> {
    let mut last_err = None;
    for candidate in &address.candidates {
        match TcpListener::bind(candidate).await {
            Ok(listener) => return Ok(listener),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no address to bind")))
}

/// Errors of one connection that the client gave up on before it was accepted:
/// they say nothing about the listener, which goes on at once.
fn concerns_one_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
    )
}

/// The next connection on any of `listeners`, taking them in turn from `next`
/// so that a busy one cannot starve the others.
async fn accept_any(listeners: &[TcpListener], next: &mut usize) -> std::io::Result<TcpStream> {
    std::future::poll_fn(|cx| {
        let count = listeners.len();
        for i in 0..count {
            let index = (*next + i) % count;
            if let Poll::Ready(accepted) = listeners[index].poll_accept(cx) {
                *next = (index + 1) % count;
                return Poll::Ready(accepted.map(|(stream, _)| stream));
            }
        }
        Poll::Pending
    })
    .await
}

/// Removes a connection from [`Connections`] when its task ends, however it ends.
struct Registered {
    connections: Arc<Connections>,
    id: u64,
}

impl Registered {
    fn new(connections: &Arc<Connections>, id: u64) -> Self {
        connections.alive.fetch_add(1, Ordering::AcqRel);
        Registered {
            connections: Arc::clone(connections),
            id,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.remove(self.id);
        self.connections.alive.fetch_sub(1, Ordering::AcqRel);
        self.connections.released.notify_one();
    }
}

/// How long the accept loop waits for a closed idle connection to give its
/// descriptor back before it accepts all the same.
const RELEASE_WAIT: Duration = Duration::from_millis(200);

impl Connections {
    /// Before accepting: waits (at most [`RELEASE_WAIT`]) while more connections
    /// are alive than `max`, that is until the one [`Connections::make_room`]
    /// closed for the last new connection has ended and given its descriptor
    /// back, so that `accept` does not find the process out of descriptors.
    /// Nothing is closed here: an idle connection is closed only when a new one
    /// has really arrived, and never the new one itself.
    async fn wait_for_release(&self, max: usize) {
        let waited = tokio::time::sleep(RELEASE_WAIT);
        tokio::pin!(waited);
        while self.alive.load(Ordering::Acquire) > max {
            tokio::select! {
                _ = &mut waited => return,
                _ = self.released.notified() => {}
            }
        }
    }
}

impl Server {
    /// Binds the first address of `address` that can be bound.
    pub async fn bind(address: &ListenAddress) -> std::io::Result<Self> {
        Ok(Self::from_listeners(vec![bind_one(address).await?]))
    }

    /// Binds every address (each to the first of its candidates that can be
    /// bound); an error names the address that failed.
    pub async fn bind_all(addresses: &[ListenAddress]) -> Result<Self, (String, std::io::Error)> {
        let mut listeners = Vec::with_capacity(addresses.len());
        for address in addresses {
            listeners.push(
                bind_one(address)
                    .await
                    .map_err(|err| (address.to_string(), err))?,
            );
        }
        if listeners.is_empty() {
            return Err((String::new(), std::io::Error::other("no address to bind")));
        }
        Ok(Self::from_listeners(listeners))
    }

    /// Serves on the listening TCP sockets systemd passed (`LISTEN_FDS`, for
    /// this process by `LISTEN_PID`), every one of them.
    pub fn from_systemd() -> Result<Self, String> {
        let mut passed = listenfd::ListenFd::from_env();
        let mut listeners = Vec::new();
        for index in 0..passed.len() {
            let listener = passed
                .take_tcp_listener(index)
                .map_err(|err| {
                    format!("socket {index} from systemd is not a listening TCP socket: {err}")
                })?
                .ok_or_else(|| format!("socket {index} from systemd was already taken"))?;
            let listener = listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(listener))
                .map_err(|err| format!("cannot serve on socket {index} from systemd: {err}"))?;
            listeners.push(listener);
        }
        if listeners.is_empty() {
            return Err("systemd passed no socket (LISTEN_FDS is unset, or LISTEN_PID names another process): start the exporter from a .socket unit, or drop the flag and give --web.listen-address".into());
        }
        Ok(Self::from_listeners(listeners))
    }

    fn from_listeners(listeners: Vec<TcpListener>) -> Self {
        Server {
            listeners,
            web: None,
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// How many sockets the server listens on.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Serves with TLS, basic auth and headers as `web` says (`--web.config.file`).
    pub fn with_web_config(mut self, web: WebConfigHandle) -> Self {
        self.web = Some(web);
        self
    }

    /// Holds at most `max` connections (`--web.max-connections`).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Replaces [`HEADER_READ_TIMEOUT`]. Not a flag: the tests use it to watch a
    /// slow client being cut off without waiting ten seconds.
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The address actually bound (useful with port 0); with several, the first.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs()[0]
    }

    /// Every address listened on, in the order given.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|listener| {
                listener
                    .local_addr()
                    .expect("a bound listener has an address")
            })
            .collect()
    }

    /// Whether connections are served over TLS (decided at start).
    pub fn is_tls(&self) -> bool {
        self.web.as_ref().is_some_and(|web| web.current().is_tls())
    }

    /// Serves until `shutdown` completes, then stops accepting and lets requests
    /// in flight finish (at most [`DRAIN_TIMEOUT`]).
    pub async fn serve(self, routes: Arc<Routes>, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        // Tells connections still in their TLS handshake to give up.
        let (closing_tx, closing_rx) = watch::channel(false);
        let handler = Arc::new(Handler {
            routes,
            web: self.web.clone(),
        });
        let connections = Arc::new(Connections::default());
        let mut failures = AcceptFailures::new();
        let mut refusals = RateLimitedLog::new(ACCEPT_LOG_EVERY);
        let mut next = 0;
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = async {
                    connections.wait_for_release(self.max_connections).await;
                    accept_any(&self.listeners, &mut next).await
                } => accepted,
            };
            let stream = match accepted {
                Ok(stream) => {
                    failures.succeeded();
                    stream
                }
                Err(err) if concerns_one_connection(&err) => continue,
                Err(err) => {
                    // Out of descriptors and the like: free one, back off, keep serving.
                    let closed = connections.close_oldest_idle();
                    let pause = failures.failed(&err, closed);
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            if !connections.make_room(self.max_connections) {
                if let Some(left_out) = refusals.admit() {
                    tracing::warn!(
                        max = self.max_connections,
                        refusals_not_logged = left_out,
                        "every connection is busy; refusing a new one (see --web.max-connections)"
                    );
                }
                continue;
            }
            let _ = stream.set_nodelay(true);
            let web = self.web.as_ref().map(WebConfigHandle::current);
            let handler = Arc::clone(&handler);
            let watcher = graceful.watcher();
            let timeout = self.header_read_timeout;
            // TLS is on but no version is allowed (`min_version` above
            // `max_version`): as in exporter-toolkit, no handshake succeeds.
            let tls = match web.as_ref().filter(|web| web.is_tls()) {
                None => None,
                Some(web) => match web.tls().cloned() {
                    Some(tls) => Some(tls),
                    None => {
                        tracing::debug!(
                            "TLS min_version is above max_version; closing the connection"
                        );
                        continue;
                    }
                },
            };
            let id = connections.next.fetch_add(1, Ordering::Relaxed);
            let in_flight = Arc::new(AtomicUsize::new(0));
            let conn = Conn {
                handler,
                in_flight: Arc::clone(&in_flight),
                _registered: Registered::new(&connections, id),
            };
            // Registered under the lock, so the task cannot end and remove
            // itself before it is inserted.
            let mut held = connections.lock();
            let Some(tls) = tls else {
                let task = tokio::spawn(serve_http(stream, conn, timeout, watcher));
                held.insert(
                    id,
                    Held {
                        in_flight,
                        task: task.abort_handle(),
                    },
                );
                continue;
            };
            let mut closing = closing_rx.clone();
            let task = tokio::spawn(async move {
                let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
                let stream = tokio::select! {
                    _ = closing.wait_for(|closing| *closing) => return,
                    done = tokio::time::timeout(timeout, handshake) => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake not done within {timeout:?}; closing");
                            return;
                        }
                    },
                };
                serve_http(stream, conn, timeout, watcher).await;
            });
            held.insert(
                id,
                Held {
                    in_flight,
                    task: task.abort_handle(),
                },
            );
        }
        drop(self.listeners);
        let _ = closing_tx.send(true);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "some requests were still running after {DRAIN_TIMEOUT:?}; closing them"
            );
        }
    }
}

/// What one connection's task holds: the handler, its count of requests in
/// flight (0 means idle, so it may be closed to make room), and its place in
/// [`Connections`], given back when the task ends.
struct Conn {
    handler: Arc<Handler>,
    in_flight: Arc<AtomicUsize>,
    _registered: Registered,
}

/// Counts a request as in flight while it is alive.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves HTTP/1.1 on one connection, plain or TLS.
async fn serve_http<S>(stream: S, conn: Conn, header_read_timeout: Duration, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        handler,
        in_flight,
        _registered,
    } = conn;
    let service = service_fn(move |req| {
        let handler = Arc::clone(&handler);
        in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(Arc::clone(&in_flight));
        async move {
            let _guard = guard;
            Ok::<_, Infallible>(handler.handle(req).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(send_timeout(stream)), service);
    if let Err(err) = watcher.watch(conn).await {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// `stream`, whose writes fail once one has made no progress for
/// [`SEND_TIMEOUT`], so that hyper closes the connection. Reads are untouched
/// (hyper's header read timeout covers a slow request).
fn send_timeout<S: AsyncRead + AsyncWrite>(stream: S) -> Pin<Box<TimeoutStream<S>>> {
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(SEND_TIMEOUT));
    Box::pin(stream)
}

/// Basic auth and configured headers around [`Routes`].
struct Handler {
    routes: Arc<Routes>,
    web: Option<WebConfigHandle>,
}

impl Handler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let web = self.web.as_ref().map(WebConfigHandle::current);
        let limit = web.as_deref().and_then(|web| web.rate_limit());
        let auth = web.as_deref().and_then(|web| web.basic_auth());
        let mut resp = if limit.is_some_and(|limit| !limit.allow()) {
            too_many_requests()
        } else {
            match auth {
                Some(auth) if !auth.verify(req.headers().get(AUTHORIZATION)).await => {
                    unauthorized()
                }
                _ => self.routes.handle(req).await,
            }
        };
        if let Some(web) = &web {
            for (name, value) in web.headers() {
                resp.headers_mut().insert(name.clone(), value.clone());
            }
        }
        resp
    }
}

/// Closes the oldest idle connection of `held` (the first in id order whose
/// requests are all answered), if any. Returns whether one was closed.
fn close_idle(held: &mut BTreeMap<u64, Held>) -> bool {
    let idle = held
        .iter()
        .find(|(_, h)| h.in_flight.load(Ordering::Acquire) == 0)
        .map(|(id, _)| *id);
    match idle.and_then(|id| held.remove(&id)) {
        Some(oldest) => {
            oldest.task.abort();
            true
        }
        None => false,
    }
}

fn too_many_requests() -> Response<Body> {
    crate::routes::text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n")
}

fn unauthorized() -> Response<Body> {
    let mut resp = crate::routes::text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_str(&format!("Basic realm=\"{REALM}\""))
            .expect("the realm is a valid header value"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_accepts_back_off_up_to_a_second_and_start_again_after_a_success() {
        let mut failures = AcceptFailures::new();
        let err = std::io::Error::other("Too many open files");
        let pauses: Vec<Duration> = (0..10).map(|_| failures.failed(&err, false)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(pauses[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(pauses[9], ACCEPT_BACKOFF_MAX);
        failures.succeeded();
        assert_eq!(failures.failed(&err, false), ACCEPT_BACKOFF_MIN);
        assert!(!concerns_one_connection(&err));
        assert!(concerns_one_connection(&std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted
        )));
    }
}
