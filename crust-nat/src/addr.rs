//! Address helpers without I/O: reserved ranges and the default gateway in
//! `/proc/net/route` text.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is private, shared or reserved rather than globally routable: RFC 1918,
/// CGNAT `100.64.0.0/10`, loopback, link-local, the IETF, documentation and benchmarking
/// ranges (`192.0.0.0/24`, `192.0.2.0/24`, `198.18.0.0/15`, `198.51.100.0/24`,
/// `203.0.113.0/24`), multicast, `240.0.0.0/4`, and for IPv6 unspecified, loopback, ULA
/// `fc00::/7`, link-local, documentation `2001:db8::/32`, multicast and mapped IPv4
/// addresses of those ranges.
///
/// A mapping on such an external address is kept unless
/// [`allow_reserved_external`](crate::PortMapConfig::allow_reserved_external) is off.
///
/// ```
/// use crust_nat::is_reserved_address;
/// assert!(is_reserved_address("198.18.0.1".parse()?));
/// assert!(is_reserved_address("100.64.1.2".parse()?));
/// assert!(!is_reserved_address("8.8.8.8".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn is_reserved_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_reserved_v4(v4),
        IpAddr::V6(v6) => is_reserved_v6(v6),
    }
}

fn is_reserved_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224
}

fn is_reserved_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_reserved_v4(v4);
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] & 0xff00) == 0xff00
}

/// The IPv4 default gateway in the text of Linux's `/proc/net/route`: among up
/// (`RTF_UP`) gateway (`RTF_GATEWAY`) routes to `0.0.0.0/0`, the one with the lowest
/// metric. `None` when there is none or the text is not in that format.
pub(crate) fn default_gateway_from_proc_route(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut best: Option<(u32, Ipv4Addr)> = None;
    // Header: Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(dest), Some(gateway), Some(flags), Some(metric), Some(mask)) = (
            fields.get(1),
            fields.get(2),
            fields.get(3),
            fields.get(6),
            fields.get(7),
        ) else {
            continue;
        };
        let parse = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gateway), Some(flags), Some(mask)) =
            (parse(dest), parse(gateway), parse(flags), parse(mask))
        else {
            continue;
        };
        let Ok(metric) = metric.parse::<u32>() else {
            continue;
        };
        if dest != 0 || mask != 0 || flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY {
            continue;
        }
        // The kernel prints the address in host byte order of a little-endian machine
        // reading network-order bytes, i.e. the first octet is the lowest byte.
        let ip = Ipv4Addr::from(gateway.to_le_bytes());
        if best.is_none_or(|(m, _)| metric < m) {
            best = Some((metric, ip));
        }
    }
    best.map(|(_, ip)| ip)
}

/// The IPv4 default gateway of this host's (or network namespace's) routing table;
/// `None` when there is none or it cannot be read (non-Linux systems).
pub(crate) fn default_gateway() -> Option<IpAddr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    default_gateway_from_proc_route(&text).map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ranges() {
        for ip in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "ff02::1",
            "::ffff:10.1.2.3",
        ] {
            assert!(is_reserved_address(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.17.0.1",
            "198.20.0.1",
            "203.0.114.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_reserved_address(ip.parse().expect("ip")), "{ip}");
        }
    }

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t50\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn default_gateway_lowest_metric() {
        assert_eq!(
            default_gateway_from_proc_route(ROUTE),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
    }

    #[test]
    fn default_gateway_none_or_garbage() {
        let no_default = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                          eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_gateway_from_proc_route(no_default), None);
        assert_eq!(default_gateway_from_proc_route(""), None);
        assert_eq!(
            default_gateway_from_proc_route("header\nx y z\n\u{0}"),
            None
        );
        // A default route that is down, or without a gateway, does not count.
        let down = "h\neth0\t00000000\t0100000A\t0002\t0\t0\t0\t00000000\n";
        assert_eq!(default_gateway_from_proc_route(down), None);
        let onlink = "h\neth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n";
        assert_eq!(default_gateway_from_proc_route(onlink), None);
    }
}
