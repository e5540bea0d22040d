//! What the server counts, and `--metrics ADDR`: the counters in Prometheus's
//! text format on `GET /metrics`.
//!
//! The counters are plain atomics bumped on the request path (connections,
//! handshakes refused, requests and errors by kind, bytes each way, and how
//! long requests took to handle). The HTTP side is a few lines on tokio rather
//! than a web framework or a metrics crate: it answers one fixed path with one
//! text body, so a framework's routing and a registry of boxed metrics would add
//! dependencies and a second copy of counters we already keep. Each scrape is
//! bounded (its size and time), so a slow or hostile scraper cannot hold the
//! server's resources.

use ferry_common::counters::{op_kind_name, Histogram, OpCounts, OP_KINDS};
use ferry_common::proto::Op;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Every counter of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    handshakes_refused: AtomicU64,
    requests: OpCounts,
    errors: OpCounts,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// From a request's arrival to its answer being ready.
    handling: Histogram,
}

/// Counts a connection as open while alive.
#[derive(Debug)]
pub(crate) struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub(crate) fn accepted(self: &Arc<Self>) -> OpenConnection {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(self))
    }

    pub(crate) fn refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A request of `op`'s kind arrived, `bytes` long on the wire.
    pub(crate) fn request(&self, op: &Op, bytes: usize) {
        self.requests.add(op);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A request of kind `kind` was handled in `took`; `failed` if it answered an errno.
    pub(crate) fn handled(&self, kind: usize, took: Duration, failed: bool) {
        self.handling.record(took);
        if failed {
            self.errors.add_kind(kind);
        }
    }

    pub(crate) fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Requests received so far, by kind (those received at least once).
    pub fn requests_by_kind(&self) -> Vec<(&'static str, u64)> {
        self.requests.nonzero()
    }

    /// The counters in Prometheus's text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP ferry_{name} {help}");
            let _ = writeln!(out, "# TYPE ferry_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "ferry_{name}{labels} {value}");
            }
        };
        let one = |v: u64| [(String::new(), v)];
        metric(
            "connections",
            "gauge",
            "Clients connected now.",
            &one(load(&self.connections_open)),
        );
        metric(
            "connections_accepted_total",
            "counter",
            "Connections accepted.",
            &one(load(&self.connections_accepted)),
        );
        metric(
            "handshakes_refused_total",
            "counter",
            "Connections refused at the handshake (wrong protocol, unknown export, bad directory).",
            &one(load(&self.handshakes_refused)),
        );
        let by_op = |counts: [u64; OP_KINDS]| -> Vec<(String, u64)> {
            (0..OP_KINDS)
                .map(|i| (format!("{{op=\"{}\"}}", op_kind_name(i)), counts[i]))
                .collect()
        };
        metric(
            "requests_total",
            "counter",
            "Requests received, by operation.",
            &by_op(self.requests.snapshot()),
        );
        metric(
            "request_errors_total",
            "counter",
            "Requests answered with an error, by operation.",
            &by_op(self.errors.snapshot()),
        );
        metric(
            "received_bytes_total",
            "counter",
            "Bytes of requests received.",
            &one(load(&self.bytes_received)),
        );
        metric(
            "sent_bytes_total",
            "counter",
            "Bytes of answers sent.",
            &one(load(&self.bytes_sent)),
        );
        // Bucket bounds at powers of four microseconds: exact boundaries of the
        // histogram's own buckets, so these counts are exact.
        let handling = self.handling.snapshot();
        let mut buckets: Vec<(String, u64)> = (2..=12)
            .map(|power| {
                let micros = 1u64 << (2 * power);
                (
                    format!("_bucket{{le=\"{}\"}}", micros as f64 / 1e6),
                    handling.count_below(micros),
                )
            })
            .collect();
        buckets.push(("_bucket{le=\"+Inf\"}".into(), handling.count()));
        let _ = writeln!(
            out,
            "# HELP ferry_request_duration_seconds Time from a request's arrival to its answer being ready."
        );
        let _ = writeln!(out, "# TYPE ferry_request_duration_seconds histogram");
        for (suffix, value) in buckets {
            let _ = writeln!(out, "ferry_request_duration_seconds{suffix} {value}");
        }
        let _ = writeln!(
            out,
            "ferry_request_duration_seconds_sum {}",
            handling.sum_micros as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "ferry_request_duration_seconds_count {}",
            handling.count()
        );
        out
    }
}

/// Scrapes answered at once; more wait to be accepted.
const MAX_SCRAPES: usize = 8;
/// The longest request head read, and how long it may take to arrive.
const MAX_HEAD: usize = 8 * 1024;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers `GET /metrics` on `listener` with `metrics` until `shutdown` resolves.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    tokio::pin!(shutdown);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::debug!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(stream, &metrics)).await {
                log::debug!("metrics: a scrape took too long: {e}");
            }
        });
    }
}

/// One HTTP exchange: reads the request head, answers, closes.
async fn scrape(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let request_line = String::from_utf8_lossy(&head);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", &metrics.render()).await,
        ("GET", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "ferry serves its metrics at /metrics\n",
            )
            .await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::RelPath;

    #[test]
    fn the_text_format_names_every_counter() {
        let metrics = Arc::new(Metrics::default());
        let open = metrics.accepted();
        metrics.request(&Op::StatFs, 20);
        metrics.request(
            &Op::Stat {
                path: RelPath::root(),
            },
            30,
        );
        metrics.handled(17, Duration::from_micros(50), false);
        metrics.handled(0, Duration::from_millis(3), true);
        metrics.sent(100);
        let text = metrics.render();
        for line in [
            "ferry_connections 1",
            "ferry_connections_accepted_total 1",
            "ferry_requests_total{op=\"statfs\"} 1",
            "ferry_requests_total{op=\"stat\"} 1",
            "ferry_requests_total{op=\"read\"} 0",
            "ferry_request_errors_total{op=\"stat\"} 1",
            "ferry_received_bytes_total 50",
            "ferry_sent_bytes_total 100",
            "ferry_request_duration_seconds_bucket{le=\"0.000064\"} 1",
            "ferry_request_duration_seconds_bucket{le=\"0.004096\"} 2",
            "ferry_request_duration_seconds_bucket{le=\"+Inf\"} 2",
            "ferry_request_duration_seconds_count 2",
            "# TYPE ferry_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        drop(open);
        assert!(metrics.render().lines().any(|l| l == "ferry_connections 0"));
    }

    #[tokio::test]
    async fn http_answers_get_metrics_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.request(&Op::StatFs, 20);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(listener, metrics, async {
            let _ = stopped.await;
        }));
        let ask = |request: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("ferry_requests_total{op=\"statfs\"} 1"));
        assert!(ask("GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        let _ = stop.send(());
        server.await.unwrap();
    }
}
