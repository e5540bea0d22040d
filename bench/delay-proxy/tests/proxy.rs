//! The proxy on loopback: bytes in order, the delay applied (with bounds wide
//! enough for a busy 2-core VM), no cap of chunk ÷ delay on throughput,
//! half-close and close passed on, many connections at once, and the binary's
//! messages for bad arguments.

use ferry_delay_proxy::{serve, Config};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// A proxy with one-way `delay` in front of `to`, on a free port, for the rest of the test process.
fn proxy(to: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || serve(listener, Config::new(vec![to], delay)));
    addr
}

/// A server that runs `handle` on every connection, each on its own thread.
fn server(handle: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            thread::spawn(move || handle(s));
        }
    });
    addr
}

/// Sends back what it reads; half-closes when the client does.
fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

/// Counts what it reads, then answers the count (8 bytes) once the client half-closes.
fn count(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    while let Ok(k) = s.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let _ = s.write_all(&n.to_le_bytes());
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s
}

/// Writes `data` from a second thread while reading the echo: both directions at once.
fn echo_through(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let s = connect(addr);
    let mut w = s.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        for piece in data.chunks(7919) {
            w.write_all(piece).expect("write");
        }
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    (&s).read_to_end(&mut back).expect("read the echo");
    writer.join().expect("writer");
    back
}

#[test]
fn bytes_arrive_complete_and_in_order() {
    let upstream = server(echo);
    for delay in [Duration::ZERO, Duration::from_millis(3)] {
        let addr = proxy(upstream, delay);
        let data = pattern(1, 3 << 20);
        assert!(echo_through(addr, data.clone()) == data, "delay {delay:?}");
    }
}

#[test]
fn each_direction_is_delayed() {
    let one_way = Duration::from_millis(25);
    let addr = proxy(server(echo), one_way);
    let mut s = connect(addr);
    let mut times = Vec::new();
    for i in 0..8u8 {
        let start = Instant::now();
        s.write_all(&[i]).expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("read");
        times.push(start.elapsed());
        assert_eq!(b[0], i);
    }
    times.sort();
    // Never early (the proxy sleeps at least the delay each way); on a busy
    // machine it can be late, so the upper bound only catches a gross error
    // (a delay applied many times over).
    assert!(times[0] >= 2 * one_way, "fastest round trip {:?}", times[0]);
    assert!(
        times[times.len() / 2] < 2 * one_way + Duration::from_secs(1),
        "{times:?}"
    );
}

#[test]
fn throughput_is_not_one_chunk_per_delay() {
    // 16 MiB one way at 200 ms: forwarding chunk after chunk, each slept on,
    // would take at least 32 × 200 ms (512 KiB reads) and much more with the
    // smaller reads loopback really gives; pipelined it is about one delay.
    let one_way = Duration::from_millis(200);
    let addr = proxy(server(count), one_way);
    let mut s = connect(addr);
    let data = pattern(2, 16 << 20);
    let start = Instant::now();
    s.write_all(&data).expect("write");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut n = [0u8; 8];
    s.read_exact(&mut n).expect("the count");
    let took = start.elapsed();
    assert_eq!(u64::from_le_bytes(n), 16 << 20);
    assert!(took >= 2 * one_way, "{took:?}");
    assert!(took < Duration::from_secs(4), "16 MiB took {took:?}");
}

#[test]
fn half_close_passes_through_and_the_answer_comes_back() {
    fn answer_after_eof(mut s: TcpStream) {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).is_ok() && got == b"question" {
            let _ = s.write_all(b"answer");
        }
        // Dropping `s` closes it: the client must see the end after the answer.
    }
    for delay in [Duration::ZERO, Duration::from_millis(5)] {
        let addr = proxy(server(answer_after_eof), delay);
        let mut s = connect(addr);
        s.write_all(b"question").expect("write");
        s.shutdown(Shutdown::Write).expect("half-close");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read to the end");
        assert_eq!(got, b"answer", "delay {delay:?}");
    }
}

#[test]
fn a_server_closing_ends_the_client_connection() {
    fn close_at_once(s: TcpStream) {
        drop(s);
    }
    for delay in [Duration::ZERO, Duration::from_millis(5)] {
        let addr = proxy(server(close_at_once), delay);
        let mut s = connect(addr);
        let start = Instant::now();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        // EOF (or a reset), not a hang until the read timeout.
        assert!(
            got.is_empty() && start.elapsed() < Duration::from_secs(30),
            "{r:?}"
        );
        // Writing to it fails before long: nothing is on the other side.
        let mut failed = false;
        for _ in 0..200 {
            if s.write_all(&[0u8; 1024]).is_err() {
                failed = true;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            failed,
            "delay {delay:?}: writes kept succeeding after the server closed"
        );
    }
}

#[test]
fn no_server_means_the_connection_is_closed() {
    // A port nothing listens on: bind one, note it, close it.
    let gone = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let addr = proxy(gone, Duration::from_millis(1));
    let mut s = connect(addr);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got); // EOF or reset: either way, not a hang
    assert!(got.is_empty());
}

#[test]
fn many_connections_at_once() {
    let addr = proxy(server(echo), Duration::from_millis(5));
    let clients: Vec<_> = (0..48u64)
        .map(|i| {
            thread::spawn(move || {
                let data = pattern(100 + i, 64 * 1024 + i as usize * 11);
                echo_through(addr, data.clone()) == data
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert!(
            c.join().expect("client thread"),
            "connection {i} got other bytes"
        );
    }
}

#[test]
fn bad_arguments_get_clear_messages() {
    let bin = env!("CARGO_BIN_EXE_ferry-delay-proxy");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:9",
                "--delay-ms",
                "ten",
            ],
            "not a number of milliseconds",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--to",
                "127.0.0.1:9",
                "--delay-ms",
                "-3",
            ],
            "0 or more",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--to",
                "nowhere",
                "--delay-ms",
                "1",
            ],
            "HOST:PORT",
        ),
        (
            &[
                "--listen",
                "999.0.0.1:1",
                "--to",
                "127.0.0.1:9",
                "--delay-ms",
                "1",
            ],
            "cannot listen on 999.0.0.1:1",
        ),
    ];
    for (args, message) in cases {
        let out = Command::new(bin)
            .args(args)
            .output()
            .expect("run the proxy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}
