//! Parsers for the human-written values of the config file: sizes, durations, networks and
//! server addresses.
//!
//! Each parser takes the text as written and returns either the typed value or a
//! [`ValueError`] whose message quotes the text and shows a valid example, e.g. `"50XB" is not a size (use e.g. 50MB)`.
//! The caller puts the key path in front of it.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use super::ServerAddr;
pub use crate::issues::ValueError;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Parses a size in bytes: `"1024"`, `"512KB"`, `"50MB"`, `"100 MB"`, `"10MiB"`, `"1GB"`.
///
/// Units are binary and case-insensitive: K, KB and KiB are all 1024 bytes; M/MB/MiB 1024²;
/// G/GB/GiB 1024³; T/TB/TiB 1024⁴. `B` or no unit means bytes.
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let error = || ValueError::new(format!("{text:?} is not a size (use e.g. 50MB)"));
    let (number, unit) = split_number(text.trim());
    let number: u64 = number.parse().map_err(|_| error())?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => return Err(error()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| ValueError::new(format!("{text:?} is too large")))
}

/// Parses a duration made of one or more `<number><unit>` parts: `"100ms"`, `"30s"`, `"5m"`,
/// `"2h"`, `"5d"`, `"1h30m"`, `"1h 30m"`. Units: ms, s, m, h, d (case-insensitive). A bare
/// `"0"` is zero; any other number needs a unit.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let error = || ValueError::new(format!("{text:?} is not a duration (use e.g. 30s, 5m, 1h30m)"));
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(error());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let (number, after) = split_number(rest);
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let number: u64 = number.parse().map_err(|_| error())?;
        let part = duration_part(number, unit).ok_or_else(error)?;
        total = total
            .checked_add(part)
            .ok_or_else(|| ValueError::new(format!("{text:?} is too long")))?;
        rest = after.trim_start();
    }
    Ok(total)
}

/// One `<number><unit>` part of a duration; `None` for an unknown unit or an overflow.
fn duration_part(number: u64, unit: &str) -> Option<Duration> {
    let seconds_per_unit = match unit.to_ascii_lowercase().as_str() {
        "ms" => return Some(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number.checked_mul(seconds_per_unit).map(Duration::from_secs)
}

/// Splits `"50MB"` into `("50", "MB")`: the leading ASCII digits and the rest.
fn split_number(text: &str) -> (&str, &str) {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    text.split_at(digits)
}

/// Parses a network: `"127.0.0.0/8"`, `"::1/128"`, or a bare address, which means that one
/// address (`/32` or `/128`). Host bits after the prefix are cleared: `"10.1.2.3/8"` is
/// `10.0.0.0/8`.
pub fn parse_net(text: &str) -> Result<IpNet, ValueError> {
    let text = text.trim();
    let net = if text.contains('/') {
        IpNet::from_str(text).ok()
    } else {
        IpAddr::from_str(text).ok().map(IpNet::from)
    };
    net.map(|net| net.trunc())
        .ok_or_else(|| ValueError::new(format!("{text:?} is not a network (use e.g. 10.0.0.0/8 or 192.0.2.1)")))
}

/// Parses a listening address: `"127.0.0.1:2525"`, `"[::1]:25"`, `"0.0.0.0:0"`.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, ValueError> {
    SocketAddr::from_str(text.trim()).map_err(|_| {
        ValueError::new(format!(
            "{text:?} is not an address (use e.g. 127.0.0.1:2525 or [::1]:25)"
        ))
    })
}

/// Parses a name server address: `"127.0.0.1:53"`, `"[::1]:53"`, or a bare IP for port 53.
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, ValueError> {
    let text = text.trim();
    if let Ok(ip) = IpAddr::from_str(text) {
        return Ok(SocketAddr::new(ip, 53));
    }
    SocketAddr::from_str(text)
        .map_err(|_| ValueError::new(format!("{text:?} is not a name server (use e.g. 127.0.0.1:53)")))
}

/// Parses an upstream server: `"127.0.0.1:2600"`, `"mx.example.com:25"`, `"[::1]:25"`; without
/// a port (`"mx.example.com"`, `"[::1]"`, `"::1"`) the port is 25. The host is kept without
/// brackets and lowercased.
pub fn parse_server_addr(text: &str) -> Result<ServerAddr, ValueError> {
    let error = || {
        ValueError::new(format!(
            "{text:?} is not a server address (use e.g. mx.example.com:25 or 127.0.0.1:2600)"
        ))
    };
    let (host, port) = split_host_port(text.trim()).ok_or_else(error)?;
    let port = match port {
        None => 25,
        Some(port) => port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(error)?,
    };
    let bracketed = text.trim().starts_with('[');
    let valid = match bracketed {
        true => host.parse::<std::net::Ipv6Addr>().is_ok(),
        false => IpAddr::from_str(host).is_ok() || is_domain(host),
    };
    if !valid {
        return Err(error());
    }
    Ok(ServerAddr {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Splits `host:port`, `[v6]:port`, `[v6]`, a bare IPv6 address or a bare host.
fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match text.matches(':').count() {
        0 => Some((text, None)),
        1 => text.split_once(':').map(|(host, port)| (host, Some(port))),
        _ => Some((text, None)), // a bare IPv6 address; checked by the caller
    }
}

/// Whether `name` looks like a domain name: dot-separated labels of letters, digits and
/// hyphens, none empty, none starting or ending with a hyphen. Non-ASCII letters are allowed
/// (internationalised names are passed on as written).
pub fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// Normalises a domain as written in `local_domains`: lowercased, trailing dot removed.
pub fn parse_domain(text: &str) -> Result<String, ValueError> {
    let trimmed = text.trim();
    let domain = trimmed.strip_suffix('.').unwrap_or(trimmed).to_lowercase();
    if is_domain(&domain) {
        Ok(domain)
    } else {
        Err(ValueError::new(format!(
            "{text:?} is not a domain (use e.g. example.com)"
        )))
    }
}

/// Checks one `admin.hosts` entry: a DNS name or an IP address, without a port. Returns it
/// lower-cased.
pub fn parse_host_name(name: &str) -> Result<String, ValueError> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    if lower.parse::<IpAddr>().is_ok() {
        return Ok(lower);
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if lower.is_empty() || lower.len() > 253 || !lower.split('.').all(label_ok) {
        return Err(ValueError::new(format!(
            "{name:?} is not a host name (a DNS name or an IP address, no port)"
        )));
    }
    Ok(lower)
}

/// `*.example.com` matches any host under example.com; anything else matches the host exactly.
pub(super) fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => {
            host.len() > parent.len() + 1
                && host.ends_with(parent)
                && host.as_bytes()[host.len() - parent.len() - 1] == b'.'
        }
        None => host == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    #[test]
    fn parse_size_table() {
        let ok: &[(&str, u64)] = &[
            ("1024", 1024),
            ("0", 0),
            ("10B", 10),
            ("512KB", 512 * 1024),
            ("512k", 512 * 1024),
            ("1KiB", 1024),
            ("50MB", 50 * MB),
            ("100 MB", 100 * MB),
            ("10MiB", 10 * MB),
            ("10mib", 10 * MB),
            ("7m", 7 * MB),
            ("1GB", 1024 * MB),
            ("2gib", 2048 * MB),
            (" 3G ", 3072 * MB),
            ("1TB", 1024 * 1024 * MB),
        ];
        for &(text, want) in ok {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
        for text in [
            "",
            "MB",
            "50XB",
            "-1",
            "1.5GB",
            "5 0MB",
            "50MBB",
            "99999999999999999999",
        ] {
            assert!(parse_size(text).is_err(), "{text:?} should be refused");
        }
        assert_eq!(
            parse_size("50XB").unwrap_err(),
            r#""50XB" is not a size (use e.g. 50MB)"#
        );
        assert_eq!(
            parse_size("17179869184GB").unwrap_err(),
            r#""17179869184GB" is too large"#
        );
    }

    #[test]
    fn parse_duration_table() {
        let secs = Duration::from_secs;
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("100ms", Duration::from_millis(100)),
            ("30s", secs(30)),
            ("5m", secs(300)),
            ("2h", secs(7200)),
            ("5d", secs(5 * 86_400)),
            ("1h30m", secs(5400)),
            ("1h 30m", secs(5400)),
            ("1m30s500ms", Duration::from_millis(90_500)),
            ("10S", secs(10)),
        ];
        for &(text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
        for text in ["", "30", "s", "5x", "1.5h", "-5s", "5 s", "h1", "99999999999999999999s"] {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
        assert_eq!(
            parse_duration("5x").unwrap_err(),
            r#""5x" is not a duration (use e.g. 30s, 5m, 1h30m)"#
        );
    }

    #[test]
    fn parse_net_table() {
        let ok: &[(&str, &str)] = &[
            ("127.0.0.0/8", "127.0.0.0/8"),
            ("::1/128", "::1/128"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ];
        for &(text, want) in ok {
            assert_eq!(parse_net(text), Ok(want.parse().unwrap()), "{text:?}");
        }
        for text in ["", "10.0.0.0/33", "10.0.0", "example.com", "10.0.0.0/", "::1/129"] {
            assert!(parse_net(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn parse_server_addr_table() {
        let ok: &[(&str, &str, u16)] = &[
            ("127.0.0.1:2600", "127.0.0.1", 2600),
            ("mx.example.com:25", "mx.example.com", 25),
            ("MX.Example.COM:587", "mx.example.com", 587),
            ("[::1]:25", "::1", 25),
            ("[::1]", "::1", 25),
            ("::1", "::1", 25),
            ("host", "host", 25),
            ("192.0.2.1", "192.0.2.1", 25),
        ];
        for &(text, host, port) in ok {
            let want = ServerAddr {
                host: host.to_owned(),
                port,
            };
            assert_eq!(parse_server_addr(text), Ok(want), "{text:?}");
        }
        let refused = [
            "",
            ":25",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "[::1]x",
            "[::1",
            "bad host:25",
            "a..b:25",
            "-a.com",
            "[nonsense]:25",
        ];
        for text in refused {
            assert!(parse_server_addr(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn server_addr_displays_with_brackets_for_ipv6() {
        assert_eq!(parse_server_addr("[::1]:25").unwrap().to_string(), "[::1]:25");
        assert_eq!(
            parse_server_addr("mx.example.com").unwrap().to_string(),
            "mx.example.com:25"
        );
    }

    #[test]
    fn host_names_are_checked() {
        assert_eq!(parse_host_name("Gate.Internal.").unwrap(), "gate.internal");
        assert_eq!(parse_host_name("10.0.0.1").unwrap(), "10.0.0.1");
        for bad in ["", "gate:8025", "a b", "-x.test", "http://x"] {
            assert!(parse_host_name(bad).is_err(), "{bad}");
        }
    }
}

/// A rate: `count` events per `per`, as in `"100/min"`, `"20000/h"`, `"5/s"`, `"1000/d"`.
/// One parser for every rate the gate reads (shaping, filters): units `s`/`sec`/`second`,
/// `m`/`min`/`minute`, `h`/`hr`/`hour`, `d`/`day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// The time between two events at this rate.
    pub fn interval(self) -> Duration {
        self.per / self.count
    }

    /// A rate `factor` (0 < factor <= 1) times this one (an adaptive action lowering it). The
    /// count is scaled while it stays at 10 or more (the error of rounding it stays under 5%),
    /// else the period is stretched: 1/s times 0.5 is one every 2 s.
    pub fn scaled(self, factor: f64) -> Rate {
        let factor = factor.clamp(f64::MIN_POSITIVE, 1.0);
        let count = (self.count as f64) * factor;
        if count >= 10.0 {
            return Rate {
                count: count.round() as u32,
                per: self.per,
            };
        }
        Rate {
            count: self.count,
            per: self.per.div_f64(factor),
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Rate, ValueError> {
        let bad = || {
            ValueError::new(format!(
                "{text:?} is not a rate like \"100/min\", \"20000/h\", \"5/s\" or \"1000/d\""
            ))
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hr" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(ValueError::new(format!("{text:?}: the count must be at least 1")));
        }
        Ok(Rate { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            86_400 => "d",
            other => return write!(f, "{}/{other}s", self.count),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The shortest admin token accepted: a shorter one could be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Reads a token file: one token of at least 16 visible ASCII characters (surrounding white
/// space is ignored).
pub fn read_token(path: &std::path::Path) -> Result<String, ValueError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ValueError::new(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < MIN_ADMIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValueError::new(format!(
            "{} must hold one token of at least {MIN_ADMIN_TOKEN_LEN} visible ASCII characters",
            path.display()
        )));
    }
    Ok(token.to_owned())
}
