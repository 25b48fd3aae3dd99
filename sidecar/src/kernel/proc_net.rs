//! Parsers for the network namespace's TCP tables and counters as `/proc` prints them:
//! `/proc/net/tcp` and `/proc/net/tcp6` (one socket a line), `/proc/net/snmp` (the `Tcp:`
//! counters) and `/proc/net/netstat` (the `TcpExt:` counters). Pure: text in, values out.
//! A line that does not parse is skipped, never a panic: the text comes from whatever
//! kernel the pod runs on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The TCP states lameduck tells apart, with the kernel's numbers (`include/net/tcp_states.h`).
pub mod state {
    /// A connection in use.
    pub const ESTABLISHED: u8 = 0x01;
    /// A handshake answered by the pod, not yet completed.
    #[cfg(test)]
    pub const SYN_RECV: u8 = 0x03;
    /// Closed by the pod first, waiting out stray segments (server-side close of a short
    /// connection: stays in the table for a minute).
    pub const TIME_WAIT: u8 = 0x06;
    /// A listening socket.
    pub const LISTEN: u8 = 0x0A;
}

/// One line of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    /// Local address (an IPv4-mapped IPv6 address is given as IPv4).
    pub local: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Remote address (IPv4-mapped given as IPv4).
    pub remote: IpAddr,
    /// Remote port.
    pub remote_port: u16,
    /// TCP state ([`state`]).
    pub state: u8,
    /// The socket's inode (0 for TIME_WAIT entries), to match `/proc/<pid>/fd` links.
    pub inode: u64,
}

/// Reads a socket table; lines that do not parse (the header among them) are skipped.
pub fn parse_sockets(text: &str) -> Vec<Socket> {
    text.lines().filter_map(parse_socket_line).collect()
}

fn parse_socket_line(line: &str) -> Option<Socket> {
    let mut fields = line.split_whitespace();
    let slot = fields.next()?;
    if !slot.ends_with(':') {
        return None;
    }
    let (local, local_port) = parse_endpoint(fields.next()?)?;
    let (remote, remote_port) = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then the inode.
    let inode = fields.nth(5).and_then(|i| i.parse().ok()).unwrap_or(0);
    Some(Socket {
        local,
        local_port,
        remote,
        remote_port,
        state,
        inode,
    })
}

/// `0100007F:1F90` or 32 hex digits `:port`. The kernel prints each 32-bit word of the
/// address in the host's byte order.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !addr.is_ascii() {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(octets);
            // A dual-stack listener's IPv4 clients: compare them with IPv4 addresses.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some((ip, port))
}

/// The namespace's TCP counters lameduck reads (cumulative since the namespace was made).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Connections the pod accepted (completed passive opens), `Tcp: PassiveOpens`.
    pub passive_opens: u64,
    /// Resets the pod sent, `Tcp: OutRsts`.
    pub out_rsts: u64,
    /// Connections established right now, `Tcp: CurrEstab`.
    pub curr_estab: u64,
    /// Resets the pod sent because an application aborted a connection rather than a
    /// peer reaching a closed port: `TcpExt: TCPAbortOnClose` (closed with unread data),
    /// `TCPAbortOnLinger` (SO_LINGER 0) and `TCPAbortOnMemory`. None when
    /// `/proc/net/netstat` was not read.
    pub app_aborts: Option<u64>,
}

impl TcpCounters {
    /// Resets the pod sent between `earlier` and `self` that no application caused by
    /// aborting its own connections: answers to segments for which the pod had no socket
    /// (a SYN to a closed port, data for a connection already gone).
    pub fn resets_since(&self, earlier: &TcpCounters) -> u64 {
        let sent = self.out_rsts.saturating_sub(earlier.out_rsts);
        let aborts = match (self.app_aborts, earlier.app_aborts) {
            (Some(now), Some(then)) => now.saturating_sub(then),
            _ => 0,
        };
        sent.saturating_sub(aborts)
    }
}

/// Reads `/proc/net/snmp` (and, when given, `/proc/net/netstat`): None when the `Tcp:`
/// header and values are missing or malformed.
pub fn parse_counters(snmp: &str, netstat: Option<&str>) -> Option<TcpCounters> {
    let tcp = table(snmp, "Tcp:")?;
    let get = |name: &str| tcp.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let app_aborts = netstat.and_then(|text| {
        let ext = table(text, "TcpExt:")?;
        let get = |name: &str| ext.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        Some(
            ["TCPAbortOnClose", "TCPAbortOnLinger", "TCPAbortOnMemory"]
                .iter()
                .filter_map(|n| get(n))
                .fold(0u64, u64::saturating_add),
        )
    });
    Some(TcpCounters {
        passive_opens: get("PassiveOpens")?,
        out_rsts: get("OutRsts")?,
        curr_estab: get("CurrEstab").unwrap_or(0),
        app_aborts,
    })
}

/// The `prefix` table of an snmp-style file: a line of names, then a line of values.
fn table<'a>(text: &'a str, prefix: &str) -> Option<Vec<(&'a str, u64)>> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?[prefix.len()..].split_whitespace();
    let values = lines.next()?[prefix.len()..].split_whitespace();
    let pairs: Vec<(&str, u64)> = names
        .zip(values)
        // MaxConn is -1: signed values are not counters lameduck reads.
        .filter_map(|(n, v)| v.parse::<u64>().ok().map(|v| (n, v)))
        .collect();
    (!pairs.is_empty()).then_some(pairs)
}

/// The inode of a `/proc/<pid>/fd/<n>` link target `socket:[12345]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2808 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2470934 2 0000000012165da1 100 0 0 10 0
   1: 0100A8C0:1F90 0200A8C0:D431 01 00000000:00000000 02:00000099 00000000  1000        0 2471053 2 00000000ee5f98d1 20 4 27 28 -1
   2: 0100A8C0:1F90 0300A8C0:D432 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:192B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2469179 2 000000000ed0289c 100 0 0 10 0
   1: 0000000000000000FFFF00000200A8C0:192B 0000000000000000FFFF00000500A8C0:9194 01 00000000:00000000 02:00000099 00000000     0        0 2469390 2 0000000007de5967 20 4 27 28 -1
   2: 00000000000000000000000001000000:9194 00000000000000000000000001000000:192B 01 00000000:00000000 02:00000099 00000000     0        0 2469391 2 0000000007de5967 20 4 27 28 -1
";

    #[test]
    fn reads_the_ipv4_table() {
        let sockets = parse_sockets(TCP);
        assert_eq!(sockets.len(), 3);
        assert_eq!(sockets[0].local, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(sockets[0].local_port, 10248);
        assert_eq!(sockets[0].state, state::LISTEN);
        assert_eq!(sockets[0].inode, 2470934);
        assert_eq!(sockets[1].local, IpAddr::from([192, 168, 0, 1]));
        assert_eq!(sockets[1].local_port, 8080);
        assert_eq!(sockets[1].remote, IpAddr::from([192, 168, 0, 2]));
        assert_eq!(sockets[1].remote_port, 0xD431);
        assert_eq!(sockets[1].state, state::ESTABLISHED);
        assert_eq!(sockets[2].state, state::TIME_WAIT);
        assert_eq!(sockets[2].inode, 0);
    }

    #[test]
    fn reads_the_ipv6_table_and_maps_ipv4_clients() {
        let sockets = parse_sockets(TCP6);
        assert_eq!(sockets.len(), 3);
        assert_eq!(sockets[0].local, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert_eq!(sockets[0].local_port, 0x192B);
        assert_eq!(sockets[1].local, IpAddr::from([192, 168, 0, 2]));
        assert_eq!(sockets[1].remote, IpAddr::from([192, 168, 0, 5]));
        assert_eq!(sockets[2].local, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let text = format!(
            "{TCP}garbage\n 9: zz:zz 00:00 0A\n 10: 0100007F:1F90\n 11: 0100007F:1F90 00000000:0000 XYZ\n 12: 0100007F:FFFFF 00000000:0000 0A\n\n 13: 0100007F0:1F90 00000000:0000 0A\n 14: ΩΩΩΩΩΩΩΩ:1F90 00000000:0000 0A\n"
        );
        assert_eq!(parse_sockets(&text).len(), 3);
        // A line cut after the state still counts, without its inode.
        let cut = parse_sockets(" 0: 0100007F:1F90 00000000:0000 0A");
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].inode, 0);
    }

    const SNMP: &str = "Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 147767 33342 5185 17671 142 8798525 10101370 5014 0 18204 0
Udp: InDatagrams
Udp: 5
";
    const NETSTAT: &str = "TcpExt: SyncookiesSent TCPAbortOnData TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger
TcpExt: 0 7 3 1 9 2
IpExt: InNoRoutes
IpExt: 0
";

    #[test]
    fn reads_the_counters() {
        let counters = parse_counters(SNMP, Some(NETSTAT)).unwrap();
        assert_eq!(
            counters,
            TcpCounters {
                passive_opens: 33342,
                out_rsts: 18204,
                curr_estab: 142,
                app_aborts: Some(6),
            }
        );
        assert_eq!(parse_counters(SNMP, None).unwrap().app_aborts, None);
        assert_eq!(parse_counters(SNMP, Some("junk")).unwrap().app_aborts, None);
    }

    #[test]
    fn missing_or_broken_counters_are_none() {
        assert_eq!(parse_counters("", None), None);
        assert_eq!(parse_counters("Tcp: PassiveOpens OutRsts\n", None), None);
        assert_eq!(
            parse_counters("Tcp: PassiveOpens OutRsts\nTcp: x y\n", None),
            None
        );
        assert_eq!(
            parse_counters("Tcp: PassiveOpens\nTcp: 5\n", None),
            None,
            "no OutRsts"
        );
    }

    #[test]
    fn resets_left_by_application_aborts_are_not_counted() {
        let before = TcpCounters {
            out_rsts: 10,
            app_aborts: Some(4),
            ..TcpCounters::default()
        };
        let after = TcpCounters {
            out_rsts: 17,
            app_aborts: Some(6),
            ..TcpCounters::default()
        };
        assert_eq!(after.resets_since(&before), 5);
        assert_eq!(before.resets_since(&after), 0, "never negative");
        let unknown = TcpCounters {
            app_aborts: None,
            ..after
        };
        assert_eq!(unknown.resets_since(&before), 7);
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[2470934]"), Some(2470934));
        assert_eq!(socket_inode("pipe:[12]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in "\\PC{0,400}") {
            let _ = parse_sockets(&text);
            let _ = parse_counters(&text, Some(&text));
            let _ = socket_inode(&text);
        }

        #[test]
        fn table_like_text_parses_without_panicking(
            lines in prop::collection::vec("[ 0-9A-Fa-f:]{0,120}", 0..20)
        ) {
            let text = lines.join("\n");
            let _ = parse_sockets(&text);
            let _ = parse_counters(&format!("Tcp: {text}"), None);
        }
    }
}
