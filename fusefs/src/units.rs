//! Sizes, rates and durations as people read them: `500.0 MiB`, `210 MiB/s`, `2.4 s`.

use std::time::Duration;

/// `n` bytes in binary units: `512 B`, `4.0 KiB`, `500.0 MiB`, `1.2 GiB`.
pub fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `bytes` moved in `took`, per second: `210 MiB/s` (three figures at most).
pub fn rate(bytes: u64, took: Duration) -> String {
    let secs = took.as_secs_f64();
    if secs <= 0.0 {
        return "—".to_string();
    }
    let per_sec = bytes as f64 / secs;
    let text = size(per_sec as u64);
    // "210.3 MiB" reads better as "210 MiB" once there are three digits.
    let text = match text.split_once(' ') {
        Some((number, unit)) if number.len() > 4 && number.contains('.') => {
            format!("{} {unit}", number.split('.').next().unwrap_or(number))
        }
        _ => text,
    };
    format!("{text}/s")
}

/// A duration for a status line: `0.4 s`, `2.4 s`, `1m 05s`, `3h 02m`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else if secs < 86400 {
        format!("{}h {:02}m", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{}d {:02}h", secs / 86400, secs % 86400 / 3600)
    }
}

/// A round-trip time: `85 µs`, `0.21 ms`, `12.5 ms`, `1.20 s`.
pub fn latency(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 100 {
        format!("{micros} µs")
    } else if micros < 10_000 {
        format!("{:.2} ms", micros as f64 / 1000.0)
    } else if micros < 1_000_000 {
        format!("{:.1} ms", micros as f64 / 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_people_read_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(4096), "4.0 KiB");
        assert_eq!(size(500 << 20), "500.0 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(rate(210 << 20, Duration::from_secs(1)), "210 MiB/s");
        assert_eq!(rate(500 << 20, Duration::from_millis(2400)), "208 MiB/s");
        assert_eq!(rate(3 << 20, Duration::from_secs(2)), "1.5 MiB/s");
        assert_eq!(rate(5, Duration::ZERO), "—");
        assert_eq!(duration(Duration::from_millis(2400)), "2.4 s");
        assert_eq!(duration(Duration::from_secs(65)), "1m 05s");
        assert_eq!(duration(Duration::from_secs(3 * 3600 + 120)), "3h 02m");
        assert_eq!(latency(Duration::from_micros(85)), "85 µs");
        assert_eq!(latency(Duration::from_micros(210)), "0.21 ms");
        assert_eq!(latency(Duration::from_micros(12_500)), "12.5 ms");
    }
}
