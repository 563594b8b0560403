//! HTTP/1 connections to one endpoint, kept alive and reused: the bottom of each endpoint's
//! client stack.
//!
//! The balancer above has already chosen the endpoint, so the pool is the endpoint's own: no
//! key to hash, no lock shared with other endpoints. A connection is idle again once its
//! response body has ended (read to the end, empty, or dropped and drained by hyper) and hyper
//! says it can take another request. Idle connections are reused most recent first, dropped
//! once closed by the endpoint or idle for longer than the idle timeout, and at most
//! `max_idle` are kept.
//!
//! A request that a reused connection could not even start to send (the endpoint closed it
//! while it was idle) is sent again on a new connection, whatever its method: the endpoint never
//! saw it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::BoxError;

/// How an endpoint's connections are made and kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    /// The longest a connection may take to open.
    pub(crate) connect_timeout: Duration,
    /// Idle connections older than this are closed rather than reused.
    pub(crate) idle_timeout: Duration,
    /// Idle connections kept at most.
    pub(crate) max_idle: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(30),
            max_idle: 256,
        }
    }
}

/// One endpoint's connections. Cheap to clone (shared).
#[derive(Clone)]
pub(crate) struct Pool(Arc<Inner>);

struct Inner {
    authority: Authority,
    host: HeaderValue,
    settings: PoolSettings,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.0.authority)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Connections to `authority` (`host:port`).
    pub(crate) fn new(authority: Authority, settings: PoolSettings) -> Self {
        let host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        Self(Arc::new(Inner {
            authority,
            host,
            settings,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Idle connections now (for tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.0.idle.lock().expect("pool lock").len()
    }

    /// Sends `request` (origin-form target: its path and query) with `Host` set to the
    /// endpoint, on an idle connection or a new one.
    pub(crate) async fn send(
        self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Body>, BoxError> {
        request
            .headers_mut()
            .insert(header::HOST, self.0.host.clone());
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            // An idle connection whose last response just ended may need a moment to be ready.
            if let Err(error) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(error.into());
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pool = self.clone();
                    return Ok(response.map(|body| {
                        Body::new(PooledBody {
                            body,
                            home: Some((pool, sender)),
                        })
                    }));
                }
                Err(mut error) => match error.take_message() {
                    // Never sent: the endpoint closed the idle connection first.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }

    /// The most recently used idle connection still open and not idle for too long.
    fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        let oldest = Instant::now().checked_sub(self.0.settings.idle_timeout);
        let mut idle = self.0.idle.lock().expect("pool lock");
        while let Some(Idle { sender, since }) = idle.pop() {
            if !sender.is_closed() && oldest.is_none_or(|oldest| since > oldest) {
                return Some(sender);
            }
        }
        None
    }

    /// Back to the idle list once it can take a request. A connection still finishing its
    /// exchange (the rest of a response being drained, a request body still being written)
    /// waits on a task of its own, at most the idle timeout; one that closes is dropped.
    fn give_back(&self, mut sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.push(sender);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        let wait = self.0.settings.idle_timeout;
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(wait, sender.ready()).await {
                pool.push(sender);
            }
        });
    }

    /// Onto the idle list, after dropping those idle for longer than the idle timeout (the
    /// list is oldest first), unless it is full.
    fn push(&self, sender: SendRequest<Full<Bytes>>) {
        let now = Instant::now();
        let timeout = self.0.settings.idle_timeout;
        let mut idle = self.0.idle.lock().expect("pool lock");
        let expired = idle
            .iter()
            .take_while(|idle| now.duration_since(idle.since) >= timeout)
            .count();
        idle.drain(..expired);
        if idle.len() < self.0.settings.max_idle {
            idle.push(Idle { sender, since: now });
        }
    }

    /// A new connection; its I/O runs on a task of its own until either side closes it.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, BoxError> {
        let authority = self.0.authority.as_str();
        let stream = tokio::time::timeout(
            self.0.settings.connect_timeout,
            TcpStream::connect(authority),
        )
        .await
        .map_err(|_| format!("connecting to {authority} timed out"))?
        .map_err(|error| format!("connecting to {authority}: {error}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// A response body that gives its connection back to the pool once read to the end.
struct PooledBody {
    body: Incoming,
    home: Option<(Pool, SendRequest<Full<Bytes>>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, sender)) = self.home.take() {
            pool.give_back(sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.home = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body is never polled. One dropped before its end (a retried 503, a page
        // part that timed out) goes back once hyper has drained the rest, or not at all if it
        // closed the connection instead.
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1 server that counts the connections it accepts and answers `body` to every
    /// request, closing each connection after `per_connection` answers (the last one says
    /// `connection: close`).
    async fn server(body: &'static str, per_connection: usize) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0; 4096];
                    for answered in 1..=per_connection {
                        let mut read = 0;
                        while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buffer[read..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => read += n,
                            }
                        }
                        let close = if answered == per_connection {
                            "connection: close\r\n"
                        } else {
                            ""
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\n{close}content-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    // Closed by the endpoint after `per_connection` answers.
                });
            }
        });
        (authority, accepted)
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/thing").body(Full::default()).unwrap()
    }

    async fn read(response: Response<Body>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    /// Settings under which an idle connection has expired as soon as it is back.
    fn expiring_at_once() -> PoolSettings {
        PoolSettings {
            idle_timeout: Duration::ZERO,
            ..PoolSettings::default()
        }
    }

    /// Two requests in flight at once (two connections), then both read to the end.
    async fn two_at_once(pool: &Pool) {
        let first = pool.clone().send(get()).await.unwrap();
        let second = pool.clone().send(get()).await.unwrap();
        read(first).await;
        read(second).await;
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (authority, accepted) = server("hello", usize::MAX).await;
        let pool = Pool::new(authority, PoolSettings::default());
        for _ in 0..5 {
            let response = pool.clone().send(get()).await.unwrap();
            assert_eq!(read(response).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_connections_of_their_own_then_share_them() {
        let (authority, accepted) = server("hi", usize::MAX).await;
        let pool = Pool::new(authority, PoolSettings::default());
        let first = pool.clone().send(get()).await.unwrap();
        let second = pool.clone().send(get()).await.unwrap();
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the first is still busy"
        );
        assert_eq!(
            (read(first).await, read(second).await),
            ("hi".into(), "hi".into())
        );
        assert_eq!(pool.idle(), 2);
        read(pool.clone().send(get()).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Yields until `pool` holds `n` idle connections (a connection given back after hyper
    /// drained it is on a task of its own); at most a few seconds.
    async fn until_idle(pool: &Pool, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while pool.idle() != n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never {n} idle, {} instead", pool.idle()));
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_gives_its_connection_back_once_drained() {
        let (authority, accepted) = server("a longer body", usize::MAX).await;
        let pool = Pool::new(authority, PoolSettings::default());
        let response = pool.clone().send(get()).await.unwrap();
        drop(response);
        until_idle(&pool, 1).await;
        read(pool.clone().send(get()).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closes_is_replaced_without_an_error() {
        // One answer per connection, each saying `connection: close`.
        let (authority, accepted) = server("once", 1).await;
        let pool = Pool::new(authority, PoolSettings::default());
        for _ in 0..3 {
            let response = pool.clone().send(get()).await.unwrap();
            assert_eq!(read(response).await, "once");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_for_too_long_leave_the_list_wherever_they_are_in_it() {
        let (authority, _) = server("x", usize::MAX).await;
        let pool = Pool::new(authority, expiring_at_once());
        two_at_once(&pool).await;
        // The first one back was expired by the time the second came back.
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn the_idle_list_is_bounded() {
        let (authority, accepted) = server("x", usize::MAX).await;
        let settings = PoolSettings {
            max_idle: 1,
            ..PoolSettings::default()
        };
        let pool = Pool::new(authority, settings);
        two_at_once(&pool).await;
        assert_eq!(pool.idle(), 1, "one kept, one closed");
        read(pool.clone().send(get()).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_idle_for_longer_than_the_idle_timeout_is_not_reused() {
        let (authority, accepted) = server("x", usize::MAX).await;
        let pool = Pool::new(authority, expiring_at_once());
        for _ in 0..3 {
            read(pool.clone().send(get()).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_naming_the_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let pool = Pool::new(authority.clone(), PoolSettings::default());
        let error = pool.send(get()).await.unwrap_err();
        assert!(error.to_string().contains(authority.as_str()), "{error}");
    }
}
