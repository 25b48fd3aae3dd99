//! The pod's traffic as the kernel shows it, per served port: pure logic over successive
//! samples of the socket table and the TCP counters, no I/O.
//!
//! **New connections.** A connection is new when its (local port, remote address, remote
//! port) was not in the previous sample. Sockets of every state but LISTEN count, TIME_WAIT
//! included: a server that closes a short connection first keeps it in the table for a
//! minute, so most connections opened between two samples are still seen. Those opened
//! and gone between two samples (the client closed first) are seen only as growth of the
//! namespace's `PassiveOpens`: what that growth has beyond the connections the table
//! showed is traffic of unknown port, counted for every container (it keeps phases open,
//! which errs on the safe side).
//!
//! **Kubelet probes are not traffic.** The kubelet probes from the node's address
//! (`HOST_IP`), but the source address alone cannot tell a probe from a request: Service
//! traffic that kube-proxy SNATs (NodePort, `externalTrafficPolicy: Cluster`, some CNI
//! set-ups) and anything run on the node itself (host-network pods, a local test load)
//! arrive from the node's address too, and a rule "ignore the node" would hide them and end
//! the phase while traffic still flows. So the view lets through, per probed port, no more
//! connections from the node than the probes' periods explain: a token bucket per port
//! filled at `Σ 1/period` of its probes, holding at most one probe's worth per probe plus
//! one (probes drift and may fall two in one window), one per probe at the first sample.
//! A node connection with a token is a probe; without one it is traffic. Connections from
//! any other address are always traffic. Without `HOST_IP` the tokens are spent by
//! connections from any address.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lameduck_proto::{ContainerPorts, ProbePort};

use super::proc_net::{Socket, TcpCounters, state};

/// What the view learned from one sample, per container that declares ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Per container: what its ports showed.
    pub containers: BTreeMap<String, ContainerTraffic>,
    /// Whether this sample only set the baseline (the first of a polling session).
    pub baseline: bool,
    /// Whether the socket table was read: without it, `listening` and `established` say
    /// nothing.
    pub table: bool,
}

/// One container's ports in one sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerTraffic {
    /// New connections that are not probes, on its ports or of unknown port.
    pub new_connections: u64,
    /// Whether any of its ports has a listening socket.
    pub listening: bool,
    /// Established connections per port.
    pub established: BTreeMap<u16, u32>,
}

/// New connections in one sample beyond the probes' from which the counters alone say
/// "traffic" (10 a sample: 100 connections/s).
pub const BUSY: u64 = 10;

/// One connection, as far as telling new from old needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Connection {
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
}

/// The probe allowance of one port.
#[derive(Clone, Debug)]
struct ProbeTokens {
    /// Probes per second on this port.
    rate: f64,
    /// At most this many tokens.
    cap: f64,
    tokens: f64,
}

/// The traffic view: the previous sample, and the probe allowance.
#[derive(Debug)]
pub struct TrafficView {
    /// Port → the container that declares it (the first one, if two do).
    owners: BTreeMap<u16, String>,
    probes: BTreeMap<u16, ProbeTokens>,
    node: Option<IpAddr>,
    seen: HashSet<Connection>,
    /// `seen` is older than the last sample (a sample without the table came between):
    /// the next table is compared with nothing, only the counters are.
    stale: bool,
    last: Option<(Instant, Option<TcpCounters>)>,
}

impl TrafficView {
    /// A view of the ports the containers declare, the kubelet's probes, and the node's
    /// address (the probes' source), when known.
    pub fn new(ports: &[ContainerPorts], probes: &[ProbePort], node: Option<IpAddr>) -> Self {
        let mut owners = BTreeMap::new();
        for c in ports {
            for &port in &c.ports {
                owners.entry(port).or_insert_with(|| c.container.clone());
            }
        }
        let mut tokens: BTreeMap<u16, ProbeTokens> = BTreeMap::new();
        for probe in probes {
            let entry = tokens.entry(probe.port).or_insert(ProbeTokens {
                rate: 0.0,
                cap: 1.0,
                tokens: 0.0,
            });
            entry.rate += 1000.0 / probe.period_millis.max(1) as f64;
            entry.cap += 1.0;
        }
        Self {
            owners,
            probes: tokens,
            node: node.map(|ip| match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                v4 => v4,
            }),
            seen: HashSet::new(),
            stale: false,
            last: None,
        }
    }

    /// Whether any container declares a port.
    pub fn has_ports(&self) -> bool {
        !self.owners.is_empty()
    }

    /// Forgets the previous sample: the next one sets a new baseline (after a pause in
    /// polling, what changed meanwhile is not news).
    pub fn reset(&mut self) {
        self.seen.clear();
        self.stale = false;
        self.last = None;
    }

    /// The sample at `at` from the counters alone, when they settle it: exactly one
    /// container declares ports and the namespace accepted at least [`BUSY`] more
    /// connections since the last sample than the probes can explain, so that container
    /// got traffic whatever the table would show. Under load this spares reading the
    /// socket table, which then holds a minute of TIME_WAIT connections (60,000 at 1,000
    /// connections/s). Below that rate the table is read, so that the source addresses
    /// keep telling probes apart (the sample after this one compares counters only).
    /// None: read the table.
    pub fn observe_counters(
        &mut self,
        at: Instant,
        counters: Option<TcpCounters>,
    ) -> Option<Observation> {
        let mut owners = self.owners.values();
        let owner = owners.next()?.clone();
        if owners.any(|o| *o != owner) {
            return None;
        }
        let (Some((then, Some(before))), Some(now)) = (self.last, counters) else {
            return None;
        };
        let elapsed = at.saturating_duration_since(then).as_secs_f64();
        let explained: u64 = self
            .probes
            .values()
            .map(|t| (t.tokens + t.rate * elapsed).min(t.cap).floor() as u64)
            .sum();
        let opened = now.passive_opens.saturating_sub(before.passive_opens);
        if opened < explained + BUSY {
            return None;
        }
        // Some of them may have been probes: they take every token there is.
        for tokens in self.probes.values_mut() {
            tokens.tokens = (tokens.tokens + tokens.rate * elapsed)
                .min(tokens.cap)
                .fract();
        }
        self.stale = true;
        self.last = Some((at, counters));
        let traffic = ContainerTraffic {
            new_connections: opened - explained,
            ..ContainerTraffic::default()
        };
        Some(Observation {
            containers: [(owner, traffic)].into(),
            baseline: false,
            table: false,
        })
    }

    /// Takes one sample taken at `at`: the sockets of both tables and the counters.
    pub fn observe(
        &mut self,
        at: Instant,
        sockets: &[Socket],
        counters: Option<TcpCounters>,
    ) -> Observation {
        let mut observation = Observation {
            baseline: self.last.is_none(),
            containers: BTreeMap::new(),
            table: true,
        };
        // After a sample without the table, the connections it counted are in this table
        // as if new: only the counters say what is new.
        let compare_tuples = !observation.baseline && !self.stale;
        self.stale = false;
        for container in self.owners.values() {
            observation.containers.entry(container.clone()).or_default();
        }
        let elapsed = self.last.map_or(Duration::ZERO, |(then, _)| {
            at.saturating_duration_since(then)
        });
        for tokens in self.probes.values_mut() {
            // At the baseline each probe may be due at once; after that they come at their
            // rate.
            tokens.tokens = if observation.baseline {
                tokens.cap - 1.0
            } else {
                (tokens.tokens + tokens.rate * elapsed.as_secs_f64()).min(tokens.cap)
            };
        }
        let mut now_seen = HashSet::with_capacity(self.seen.len());
        let mut new_anywhere: u64 = 0;
        for socket in sockets {
            if socket.state == state::LISTEN {
                if let Some(owner) = self.owners.get(&socket.local_port) {
                    observation
                        .containers
                        .entry(owner.clone())
                        .or_default()
                        .listening = true;
                }
                continue;
            }
            let owner = self.owners.get(&socket.local_port).cloned();
            if socket.state == state::ESTABLISHED
                && let Some(owner) = &owner
            {
                *observation
                    .containers
                    .entry(owner.clone())
                    .or_default()
                    .established
                    .entry(socket.local_port)
                    .or_default() += 1;
            }
            let connection = Connection {
                local_port: socket.local_port,
                remote: socket.remote,
                remote_port: socket.remote_port,
            };
            let is_new = !self.seen.contains(&connection) && !now_seen.contains(&connection);
            now_seen.insert(connection);
            if !is_new || !compare_tuples {
                continue;
            }
            // Only connections to a listening port were opened by a peer; the same count
            // for any port keeps the comparison with PassiveOpens fair.
            if self.is_inbound(socket, sockets) {
                new_anywhere += 1;
            }
            let Some(owner) = owner else { continue };
            if self.is_probe(socket) {
                continue;
            }
            observation
                .containers
                .entry(owner)
                .or_default()
                .new_connections += 1;
        }
        if let (Some((_, Some(before))), Some(now)) = (self.last, counters) {
            let opened = now.passive_opens.saturating_sub(before.passive_opens);
            let mut unseen = opened.saturating_sub(new_anywhere);
            // Opened and gone between two samples; probes that come and go (tcpSocket)
            // take their tokens first. Right after a busy sample (no tuples compared) they
            // are all traffic: the last connection of a load must never pass for a probe.
            for tokens in self.probes.values_mut() {
                while compare_tuples && unseen > 0 && tokens.tokens >= 1.0 {
                    tokens.tokens -= 1.0;
                    unseen -= 1;
                }
            }
            if unseen > 0 {
                for traffic in observation.containers.values_mut() {
                    traffic.new_connections += unseen;
                }
            }
        }
        self.seen = now_seen;
        self.last = Some((at, counters));
        observation
    }

    /// Whether a non-listening socket was opened by a peer: its local port is one the pod
    /// listens on (served or not), rather than an ephemeral port of an outgoing connection.
    fn is_inbound(&self, socket: &Socket, sockets: &[Socket]) -> bool {
        self.owners.contains_key(&socket.local_port)
            || sockets
                .iter()
                .any(|s| s.state == state::LISTEN && s.local_port == socket.local_port)
    }

    /// Whether a new connection is explained by a probe (and takes its token).
    fn is_probe(&mut self, socket: &Socket) -> bool {
        if self.node.is_some_and(|node| node != socket.remote) {
            return false;
        }
        match self.probes.get_mut(&socket.local_port) {
            Some(tokens) if tokens.tokens >= 1.0 => {
                tokens.tokens -= 1.0;
                true
            }
            _ => false,
        }
    }
}

/// Whether `ports` still listen, and how many connections on them are open (any state but
/// LISTEN and TIME_WAIT: TIME_WAIT is the kernel's, no process holds it).
pub fn serving(sockets: &[Socket], ports: &[u16]) -> (bool, usize) {
    let mut listening = false;
    let mut open = 0;
    for s in sockets.iter().filter(|s| ports.contains(&s.local_port)) {
        match s.state {
            state::LISTEN => listening = true,
            state::TIME_WAIT => {}
            _ => open += 1,
        }
    }
    (listening, open)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const NODE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 7));
    const POD: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 2, 0, 5));
    const MS: Duration = Duration::from_millis(1);

    fn listen(port: u16) -> Socket {
        Socket {
            local: POD,
            local_port: port,
            remote: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            remote_port: 0,
            state: state::LISTEN,
            inode: 1,
        }
    }

    fn conn(port: u16, remote: IpAddr, remote_port: u16, st: u8) -> Socket {
        Socket {
            local: POD,
            local_port: port,
            remote,
            remote_port,
            state: st,
            inode: 2,
        }
    }

    fn view(probes: &[ProbePort]) -> TrafficView {
        TrafficView::new(
            &[
                ContainerPorts {
                    container: "web".into(),
                    ports: vec![8080, 8443],
                },
                ContainerPorts {
                    container: "api".into(),
                    ports: vec![9090],
                },
            ],
            probes,
            Some(NODE),
        )
    }

    fn counters(passive_opens: u64) -> Option<TcpCounters> {
        Some(TcpCounters {
            passive_opens,
            ..TcpCounters::default()
        })
    }

    #[test]
    fn the_first_sample_is_the_baseline_and_new_tuples_count_per_container() {
        let mut v = view(&[]);
        let t0 = Instant::now();
        let old = conn(8080, CLIENT, 40000, state::ESTABLISHED);
        let first = v.observe(t0, &[listen(8080), listen(9090), old], counters(10));
        assert!(first.baseline);
        assert_eq!(first.containers["web"].new_connections, 0);
        assert!(first.containers["web"].listening);
        assert_eq!(first.containers["web"].established[&8080], 1);

        let sockets = [
            listen(8080),
            listen(9090),
            old,
            conn(8080, CLIENT, 40001, state::ESTABLISHED),
            conn(8443, CLIENT, 40002, state::TIME_WAIT),
            conn(9090, CLIENT, 40003, state::SYN_RECV),
            // An outgoing connection to some server's 8080 is no traffic of the pod.
            conn(51000, CLIENT, 8080, state::ESTABLISHED),
        ];
        let second = v.observe(t0 + 100 * MS, &sockets, counters(13));
        assert!(!second.baseline);
        assert_eq!(second.containers["web"].new_connections, 2);
        assert_eq!(second.containers["api"].new_connections, 1);
        assert!(!second.containers["api"].established.contains_key(&9090));
        // The same sockets again: nothing new.
        let third = v.observe(t0 + 200 * MS, &sockets, counters(13));
        assert_eq!(third.containers["web"].new_connections, 0);
        assert_eq!(third.containers["api"].new_connections, 0);
    }

    #[test]
    fn connections_gone_between_samples_count_for_every_container() {
        let mut v = view(&[]);
        let t0 = Instant::now();
        v.observe(t0, &[listen(8080)], counters(100));
        let seen = conn(8080, CLIENT, 40001, state::TIME_WAIT);
        let o = v.observe(t0 + 100 * MS, &[listen(8080), seen], counters(104));
        // 4 opens, 1 seen in the table: 3 of unknown port.
        assert_eq!(o.containers["web"].new_connections, 4);
        assert_eq!(o.containers["api"].new_connections, 3);
    }

    #[test]
    fn probes_from_the_node_are_not_traffic_up_to_their_rate() {
        let probes = [ProbePort {
            port: 8080,
            period_millis: 1000,
        }];
        let mut v = view(&probes);
        let mut at = Instant::now();
        let mut sockets = vec![listen(8080)];
        v.observe(at, &sockets, None);
        // One probe a second for 10 s, sampled every 100 ms: never traffic.
        for second in 0..10u16 {
            for tick in 0..10 {
                at += 100 * MS;
                if tick == 3 {
                    sockets.push(conn(8080, NODE, 30000 + second, state::TIME_WAIT));
                }
                let o = v.observe(at, &sockets, None);
                assert_eq!(o.containers["web"].new_connections, 0, "second {second}");
            }
        }
        // Node connections beyond the probe rate (SNATed Service traffic) are traffic.
        let mut counted = 0;
        for i in 0..10u16 {
            at += 100 * MS;
            sockets.push(conn(8080, NODE, 31000 + i, state::ESTABLISHED));
            counted += v.observe(at, &sockets, None).containers["web"].new_connections;
        }
        assert!(counted >= 8, "only {counted} of 10 counted");
        // Another address is always traffic, even on the probed port.
        at += 100 * MS;
        sockets.push(conn(8080, CLIENT, 32000, state::ESTABLISHED));
        let o = v.observe(at, &sockets, None);
        assert_eq!(o.containers["web"].new_connections, 1);
    }

    #[test]
    fn probes_on_an_unprobed_port_are_traffic() {
        let probes = [ProbePort {
            port: 9090,
            period_millis: 1000,
        }];
        let mut v = view(&probes);
        let t0 = Instant::now();
        v.observe(t0, &[listen(8080)], None);
        let o = v.observe(
            t0 + 2000 * MS,
            &[listen(8080), conn(8080, NODE, 30000, state::TIME_WAIT)],
            None,
        );
        assert_eq!(o.containers["web"].new_connections, 1);
    }

    #[test]
    fn short_probe_connections_take_their_tokens_from_the_unseen_opens() {
        let probes = [ProbePort {
            port: 8080,
            period_millis: 1000,
        }];
        let mut v = view(&probes);
        let t0 = Instant::now();
        v.observe(t0, &[listen(8080)], counters(0));
        // A tcpSocket probe came and went: one open, nothing in the table.
        let o = v.observe(t0 + 1000 * MS, &[listen(8080)], counters(1));
        assert_eq!(o.containers["web"].new_connections, 0);
    }

    #[test]
    fn under_load_the_counters_alone_say_traffic_for_a_single_container() {
        let probes = [ProbePort {
            port: 8080,
            period_millis: 1000,
        }];
        let one = [ContainerPorts {
            container: "web".into(),
            ports: vec![8080],
        }];
        let mut v = TrafficView::new(&one, &probes, Some(NODE));
        let t0 = Instant::now();
        assert_eq!(v.observe_counters(t0, counters(0)), None, "no baseline yet");
        v.observe(t0, &[listen(8080)], counters(0));
        // One open in 100 ms: the probe's token explains it; the table must say. A few
        // more: still the table, which tells probes by their address.
        assert_eq!(v.observe_counters(t0 + 100 * MS, counters(1)), None);
        assert_eq!(v.observe_counters(t0 + 100 * MS, counters(5)), None);
        // 100 opens: traffic, no table needed.
        let o = v
            .observe_counters(t0 + 100 * MS, counters(100))
            .expect("settled by the counters");
        assert!(!o.table);
        assert_eq!(o.containers["web"].new_connections, 99);
        // The next table compares counters only: the 5 connections it shows are not news.
        let sockets: Vec<Socket> = (0..5)
            .map(|i| conn(8080, CLIENT, 40000 + i, state::TIME_WAIT))
            .chain([listen(8080)])
            .collect();
        let o = v.observe(t0 + 200 * MS, &sockets, counters(100));
        assert!(o.table);
        assert_eq!(o.containers["web"].new_connections, 0);
        // After a busy sample, one more open is traffic even with a probe token left.
        v.observe_counters(t0 + 300 * MS, counters(200))
            .expect("busy");
        let o = v.observe(t0 + 400 * MS, &sockets, counters(201));
        assert_eq!(o.containers["web"].new_connections, 1);
        // Two containers with ports: the counters cannot say whose traffic it is.
        let mut two = view(&[]);
        two.observe(t0, &[], counters(0));
        assert_eq!(two.observe_counters(t0 + 100 * MS, counters(50)), None);
    }

    #[test]
    fn listeners_that_close_are_seen() {
        let mut v = view(&[]);
        let t0 = Instant::now();
        assert!(v.observe(t0, &[listen(8443)], None).containers["web"].listening);
        let o = v.observe(t0 + 100 * MS, &[], None);
        assert!(!o.containers["web"].listening);
        assert!(!o.containers["api"].listening);
    }

    #[test]
    fn serving_counts_what_a_process_still_holds() {
        let sockets = [
            listen(8080),
            conn(8080, CLIENT, 1, state::ESTABLISHED),
            conn(8080, CLIENT, 2, state::TIME_WAIT),
            conn(9090, CLIENT, 3, state::ESTABLISHED),
        ];
        assert_eq!(serving(&sockets, &[8080]), (true, 1));
        assert_eq!(serving(&sockets[1..], &[8080]), (false, 1));
        assert_eq!(serving(&sockets[2..3], &[8080]), (false, 0));
    }
}
