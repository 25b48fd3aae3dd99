//! What the webhook knows about a pod's traffic and tells the sidecar, which reads the
//! pod's connections from the kernel (the pod's network namespace is shared): which TCP
//! ports each container serves (its declared `containerPort`s) and which ports the kubelet
//! probes how often, since probes are connections too and must not keep a deregister phase
//! open.
//!
//! `LAMEDUCK_PORTS`: `web=8080,8443;api=9090` (containers without a declared TCP port are
//! left out). `LAMEDUCK_PROBES`: `8080/1000,9090/10000`, one `port/periodMillis` per
//! probe that opens a TCP connection (httpGet, tcpSocket, grpc; exec probes do not).

use std::fmt::Write as _;

/// The TCP ports one container declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPorts {
    /// The container's name.
    pub container: String,
    /// Its `containerPort`s with protocol TCP, in declaration order.
    pub ports: Vec<u16>,
}

/// One kubelet probe that connects to a port of the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePort {
    /// The port probed.
    pub port: u16,
    /// The probe's period in milliseconds (`periodSeconds` × 1000).
    pub period_millis: u64,
}

/// Formats the ports as `LAMEDUCK_PORTS` carries them.
pub fn ports_to_env(ports: &[ContainerPorts]) -> String {
    let mut out = String::new();
    for (i, c) in ports.iter().filter(|c| !c.ports.is_empty()).enumerate() {
        if i > 0 {
            out.push(';');
        }
        let _ = write!(out, "{}=", c.container);
        for (j, p) in c.ports.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, "{p}");
        }
    }
    out
}

/// Reads `LAMEDUCK_PORTS`; the error says which entry is wrong.
pub fn ports_from_env(value: &str) -> Result<Vec<ContainerPorts>, String> {
    let mut out = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (container, ports) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected <container>=<port>[,<port>…]"))?;
        let ports = ports
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("{entry:?}: {p:?} is not a port"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(ContainerPorts {
            container: container.trim().to_owned(),
            ports,
        });
    }
    Ok(out)
}

/// Formats the probes as `LAMEDUCK_PROBES` carries them.
pub fn probes_to_env(probes: &[ProbePort]) -> String {
    probes
        .iter()
        .map(|p| format!("{}/{}", p.port, p.period_millis))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads `LAMEDUCK_PROBES`; the error says which entry is wrong.
pub fn probes_from_env(value: &str) -> Result<Vec<ProbePort>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (port, period) = entry
                .split_once('/')
                .ok_or_else(|| format!("{entry:?}: expected <port>/<periodMillis>"))?;
            let port = port
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{entry:?}: {port:?} is not a port"))?;
            let period_millis = period
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{entry:?}: {period:?} is not a period in ms"))?;
            Ok(ProbePort {
                port,
                period_millis,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn ports_read_back(
            containers in prop::collection::vec(("[a-z][a-z0-9-]{0,10}", prop::collection::vec(1u16.., 1..4)), 0..4)
        ) {
            let ports: Vec<ContainerPorts> = containers
                .into_iter()
                .map(|(container, ports)| ContainerPorts { container, ports })
                .collect();
            prop_assert_eq!(ports_from_env(&ports_to_env(&ports)), Ok(ports));
        }

        #[test]
        fn probes_read_back(probes in prop::collection::vec((1u16.., 1u64..1_000_000), 0..5)) {
            let probes: Vec<ProbePort> = probes
                .into_iter()
                .map(|(port, period_millis)| ProbePort { port, period_millis })
                .collect();
            prop_assert_eq!(probes_from_env(&probes_to_env(&probes)), Ok(probes));
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(value in "\\PC{0,40}") {
            let _ = ports_from_env(&value);
            let _ = probes_from_env(&value);
        }
    }

    #[test]
    fn bad_entries_are_named() {
        assert!(ports_from_env("web=80,x").unwrap_err().contains("\"x\""));
        assert!(ports_from_env("web").is_err());
        assert!(probes_from_env("8080/0").is_err());
        assert!(probes_from_env("8080").is_err());
        assert_eq!(ports_from_env(""), Ok(vec![]));
    }
}
