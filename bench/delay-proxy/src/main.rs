//! `ferry-delay-proxy --listen 127.0.0.1:PORT --to 127.0.0.1:PORT --delay-ms D`:
//! relays TCP connections, holding every chunk D ms in each direction (RTT = 2 D).

use clap::Parser;
use ferry_delay_proxy::{parse_delay_ms, resolve, serve, Config, DEFAULT_MAX_IN_FLIGHT};
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ferry-delay-proxy",
    version,
    about = "A TCP proxy that delays every chunk by a set time in each direction, in order and \
             without a bandwidth cap (round-trip time = 2 × --delay-ms)"
)]
struct Args {
    /// Address to accept connections on (HOST:PORT; port 0 picks a free one and prints it).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Address every connection is relayed to (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    to: String,
    /// One-way delay in milliseconds, fractions allowed (0.5); 0 relays without delay.
    #[arg(long, value_name = "MS", value_parser = parse_delay_ms, allow_negative_numbers = true)]
    delay_ms: Duration,
    /// Bytes on their way per direction of a connection before the proxy stops reading.
    #[arg(long, value_name = "MIB", default_value_t = (DEFAULT_MAX_IN_FLIGHT >> 20) as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_in_flight_mib: u64,
    /// A line on stderr for every connection opened and closed.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let to = match resolve(&args.to) {
        Ok(to) => to,
        Err(e) => {
            eprintln!("ferry-delay-proxy: --to {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ferry-delay-proxy: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let local = match listener.local_addr() {
        Ok(a) => a.to_string(),
        Err(_) => args.listen.clone(),
    };
    eprintln!(
        "ferry-delay-proxy: {local} -> {}, {} ms each way ({} ms round trip)",
        to.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" or "),
        args.delay_ms.as_secs_f64() * 1000.0,
        args.delay_ms.as_secs_f64() * 2000.0
    );
    let mut cfg = Config::new(to, args.delay_ms);
    // At most 4096 MiB: fits a usize on a 64-bit machine, and saturates elsewhere.
    cfg.max_in_flight = usize::try_from(args.max_in_flight_mib << 20).unwrap_or(usize::MAX);
    cfg.verbose = args.verbose;
    let e = serve(listener, cfg);
    eprintln!("ferry-delay-proxy: cannot accept connections on {local}: {e}");
    ExitCode::from(1)
}
