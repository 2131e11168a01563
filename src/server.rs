//! The HTTP listener: connections, limits and graceful shutdown (hyper 1).
//!
//! One task per connection. The listener guards itself: a client has
//! [`HEADER_READ_TIMEOUT`] to send its request head (slowloris), heads are capped
//! in size, and on shutdown the listener is dropped at once while requests in
//! flight get [`DRAIN_TIMEOUT`] to finish. What each path answers lives in
//! [`crate::routes`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::ListenAddress;
use crate::routes::Routes;

/// Time a client has to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted, bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time requests in flight get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound listener; [`Server::local_addr`] is known before serving starts.
pub struct Server {
    listener: TcpListener,
}

impl Server {
    /// Binds the first address of `address` that can be bound.
    pub async fn bind(address: &ListenAddress) -> std::io::Result<Self> {
        let mut last_err = None;
        for candidate in &address.candidates {
            match TcpListener::bind(candidate).await {
                Ok(listener) => return Ok(Server { listener }),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no address to bind")))
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting and lets requests
    /// in flight finish (at most [`DRAIN_TIMEOUT`]).
    pub async fn serve(self, routes: Arc<Routes>, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let routes = Arc::clone(&routes);
            let service = service_fn(move |req| {
                let routes = Arc::clone(&routes);
                async move { Ok::<_, Infallible>(routes.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(err) = conn.await {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
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
