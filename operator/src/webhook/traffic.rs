//! What the webhook tells the sidecar about the pod's traffic (`LAMEDUCK_PORTS`,
//! `LAMEDUCK_PROBES`, see `lameduck_proto::traffic`): the TCP ports the hooked containers
//! declare, and the kubelet's probes that open connections into the pod, so that the
//! kernel's view of the pod's connections can tell probes from traffic. Pure.

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lameduck_proto::{ContainerPorts, ProbePort};

/// Kubernetes' default `periodSeconds` of a probe.
pub const DEFAULT_PROBE_PERIOD_SECONDS: i32 = 10;

/// The declared TCP `containerPort`s of each of `containers`, in declaration order
/// (a port without a protocol is TCP). Containers that declare none are left out.
pub fn served_ports<'a>(
    containers: impl IntoIterator<Item = &'a Container>,
) -> Vec<ContainerPorts> {
    containers
        .into_iter()
        .filter_map(|container| {
            let mut ports: Vec<u16> = Vec::new();
            for port in container.ports.iter().flatten() {
                let tcp = port.protocol.as_deref().is_none_or(|p| p == "TCP");
                if let (true, Some(number)) = (tcp, valid_port(port.container_port))
                    && !ports.contains(&number)
                {
                    ports.push(number);
                }
            }
            (!ports.is_empty()).then(|| ContainerPorts {
                container: container.name.clone(),
                ports,
            })
        })
        .collect()
}

/// Every probe of every container of the pod (init containers included: a restartable
/// one may be probed) that opens a TCP connection into the pod: `httpGet`, `tcpSocket`
/// and `grpc`, readiness, liveness and startup, with its period. Left out: `exec` probes
/// (no connection), probes with a `host` of their own (they connect elsewhere), and named
/// ports the container does not declare (the kubelet cannot resolve them either).
pub fn probe_ports(spec: &PodSpec) -> Vec<ProbePort> {
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut probes = Vec::new();
    for container in containers {
        for probe in [
            &container.readiness_probe,
            &container.liveness_probe,
            &container.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(port) = probe_port(container, probe) {
                let period = probe
                    .period_seconds
                    .filter(|p| *p > 0)
                    .unwrap_or(DEFAULT_PROBE_PERIOD_SECONDS);
                probes.push(ProbePort {
                    port,
                    period_millis: u64::try_from(period).unwrap_or(10) * 1000,
                });
            }
        }
    }
    probes
}

/// The pod port one probe connects to, if it connects to the pod at all.
fn probe_port(container: &Container, probe: &Probe) -> Option<u16> {
    let elsewhere = |host: &Option<String>| host.as_deref().is_some_and(|h| !h.is_empty());
    if let Some(http) = &probe.http_get {
        return (!elsewhere(&http.host))
            .then(|| resolve(container, &http.port))
            .flatten();
    }
    if let Some(tcp) = &probe.tcp_socket {
        return (!elsewhere(&tcp.host))
            .then(|| resolve(container, &tcp.port))
            .flatten();
    }
    probe.grpc.as_ref().and_then(|grpc| valid_port(grpc.port))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(number) => valid_port(*number),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| valid_port(p.container_port)),
    }
}

fn valid_port(number: i32) -> Option<u16> {
    u16::try_from(number).ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn declared_tcp_ports_per_container() {
        let spec = spec(json!({"containers": [
            {"name": "web", "ports": [
                {"containerPort": 8080, "name": "http"},
                {"containerPort": 8443, "protocol": "TCP"},
                {"containerPort": 5353, "protocol": "UDP"},
                {"containerPort": 8080, "protocol": "TCP", "name": "again"}
            ]},
            {"name": "worker"},
            {"name": "dns", "ports": [{"containerPort": 53, "protocol": "UDP"}]}
        ]}));
        assert_eq!(
            served_ports(&spec.containers),
            [ContainerPorts {
                container: "web".into(),
                ports: vec![8080, 8443]
            }]
        );
    }

    #[test]
    fn probes_that_connect_with_named_ports_resolved_and_their_periods() {
        let spec = spec(json!({
            "initContainers": [{"name": "proxy", "restartPolicy": "Always",
                "ports": [{"containerPort": 15021, "name": "health"}],
                "readinessProbe": {"httpGet": {"port": "health"}, "periodSeconds": 2}}],
            "containers": [
                {"name": "web", "ports": [{"containerPort": 8080, "name": "http"}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
                 "livenessProbe": {"tcpSocket": {"port": 8080}},
                 "startupProbe": {"exec": {"command": ["true"]}}},
                {"name": "api",
                 "readinessProbe": {"grpc": {"port": 9090}, "periodSeconds": 5},
                 "livenessProbe": {"httpGet": {"port": "metrics"}},
                 "startupProbe": {"httpGet": {"port": 9091, "host": "10.0.0.1"}}}
            ]
        }));
        assert_eq!(
            probe_ports(&spec),
            [
                ProbePort {
                    port: 15021,
                    period_millis: 2000
                },
                ProbePort {
                    port: 8080,
                    period_millis: 1000
                },
                // periodSeconds defaults to 10.
                ProbePort {
                    port: 8080,
                    period_millis: 10_000
                },
                ProbePort {
                    port: 9090,
                    period_millis: 5000
                },
            ],
            "exec, an undeclared name and another host are left out"
        );
    }
}
