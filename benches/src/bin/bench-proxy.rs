//! The floor of the gateway benchmark (`benches/gateway.sh`): the least a reverse proxy on
//! hyper and tokio can do. Each caller's connection gets its own upstream HTTP/1 connection,
//! opened with the first request and kept for the caller's next ones; each request is
//! forwarded as it came, with the peer appended to `X-Forwarded-For` (as the benchmark's nginx
//! does), and the response streamed back. No routing, no authentication, no limits, no
//! telemetry, no balancing, no retries: what it costs is what hyper and tokio cost, the part of
//! the gateway's work no layer of ours can remove.
//!
//! `bench-proxy <port> <upstream port>`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// The gateway's allocator, so that the comparison is of the work, not of the allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The caller's connection's upstream connection, opened on first use.
async fn forward(
    upstream: Arc<Mutex<Option<SendRequest<Incoming>>>>,
    target: SocketAddr,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, Error> {
    let forwarded = HeaderValue::try_from(peer.ip().to_string())?;
    request.headers_mut().append("x-forwarded-for", forwarded);
    // The caller's HTTP/1 connection sends one request at a time, so the lock is never
    // contended: it only satisfies the borrow checker across the await.
    let mut slot = upstream.lock().await;
    let sender = match slot.as_mut() {
        Some(sender) if !sender.is_closed() => sender,
        _ => {
            let stream = TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            slot.insert(sender)
        }
    };
    sender.ready().await?;
    Ok(sender.send_request(request).await?)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u16>().ok());
    let port = args.next().flatten().unwrap_or(9170);
    let target = SocketAddr::from(([127, 0, 0, 1], args.next().flatten().unwrap_or(9100)));
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let upstream = Arc::new(Mutex::new(None));
        let service = service_fn(move |request| forward(upstream.clone(), target, peer, request));
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    }
}
