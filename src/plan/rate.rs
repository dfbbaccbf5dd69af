//! The arithmetic of `--bwlimit`: a token bucket that turns "N bytes now" into "wait this long".
//!
//! Reads reserve their bytes before they start; a reservation may drive the bucket into debt,
//! which the next reservations wait off. Over a run the average rate is the configured one
//! within one read's worth of bytes, whatever the number of workers sharing the bucket.

/// A token bucket over seconds (as `f64`, from any fixed origin).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: f64,
}

impl TokenBucket {
    /// `rate` bytes per second, at most `burst` bytes saved up while idle; starts full.
    pub fn new(rate: u64, burst: u64) -> Self {
        TokenBucket {
            rate: rate.max(1) as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: 0.0,
        }
    }

    /// Reserves `bytes` at time `now`; returns how long the caller must wait before using them.
    pub fn reserve(&mut self, now: f64, bytes: u64) -> f64 {
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last) * self.rate).min(self.burst);
            self.last = now;
        }
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / self.rate
        }
    }
}

/// Parses a rate such as `100M`, `1.5G`, `500K` or `1048576` (bytes per second, binary units).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let factor: f64 = match unit
        .trim_end_matches("/s")
        .trim_end_matches(['B', 'b', 'i'])
    {
        "" => 1.0,
        "K" | "k" => 1024.0,
        "M" | "m" => 1024.0 * 1024.0,
        "G" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "bad rate {text:?}: use a number of bytes per second with K, M or G, like 200M"
            ))
        }
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("bad rate {text:?}: use a number like 200M"))?;
    if value.is_nan() || value <= 0.0 || !value.is_finite() {
        return Err(format!("bad rate {text:?}: it must be positive"));
    }
    Ok((value * factor) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces() {
        let mut b = TokenBucket::new(100, 100);
        assert_eq!(b.reserve(0.0, 100), 0.0);
        assert!((b.reserve(0.0, 50) - 0.5).abs() < 1e-9);
        // Half a second later the debt is paid; another 100 bytes need one second.
        assert!((b.reserve(0.5, 100) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn long_run_average_is_the_rate_whatever_the_request_sizes() {
        // Simulate callers that sleep what they are told: 4 MiB reads at 10 MiB/s.
        let rate = 10 << 20;
        let mut b = TokenBucket::new(rate, 4 << 20);
        let mut now = 0.0;
        let total: u64 = 1000 * (4 << 20);
        for _ in 0..1000 {
            now += b.reserve(now, 4 << 20);
        }
        let achieved = total as f64 / now;
        assert!((achieved / rate as f64 - 1.0).abs() < 0.01, "{achieved}");
    }

    #[test]
    fn idle_time_saves_at_most_a_burst() {
        let mut b = TokenBucket::new(100, 100);
        assert_eq!(b.reserve(0.0, 100), 0.0);
        // A long idle time refills only up to the burst.
        assert_eq!(b.reserve(1000.0, 100), 0.0);
        assert!(b.reserve(1000.0, 100) > 0.99);
    }

    #[test]
    fn rates_parse_with_binary_units() {
        assert_eq!(parse_rate("200M"), Ok(200 << 20));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert_eq!(parse_rate("512KiB/s"), Ok(512 << 10));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10X").is_err());
    }
}
