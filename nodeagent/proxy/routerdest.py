"""Where a router-mode request goes: a Service name or address of the mesh, never elsewhere.

The host of a CONNECT or an absolute-form request is a Service name as the cluster's DNS knows
it (`web-svc`, `web-svc.emojivoto`, `web-svc.emojivoto.svc`, `web-svc.emojivoto.svc.<cluster
domain>`), a Service VIP or a pod IP the mesh knows. The answer is the (VIP or pod IP, port) the
outbound path would have seen as the original destination of a captured connection, so routing,
balancing and the tunnel are the same from there on. Sans-io: the table in, a decision out.

A name without a port (`http://echo.ns/`, `Host: echo.ns`) means port 80; a Service with no port
80 and a single TCP port is reached on that one (a router named the Service, not its port).
"""

from __future__ import annotations

import ipaddress

from nodeagent.protocol.explicitproxy import ProxyRequestError
from nodeagent.proxy.routing import Routes, service_port
from nodeagent.upstream.table import DestinationTable
from nodemesh import ports
from nodemesh.model import ServiceKey

# The agent's own ports are never a destination (in a pod they are its capture listeners).
AGENT_PORTS = frozenset({*ports.IN_POD, ports.ROUTER, ports.AGENT_ADMIN})


def service_key(host: str, *, caller_namespace: str, cluster_domain: str) -> ServiceKey | None:
    """The Service a DNS-style name names (a short name is in the caller's namespace)."""
    name = host.rstrip(".").lower()
    for suffix in (".svc." + cluster_domain.strip(".").lower(), ".svc"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    parts = name.split(".")
    if not all(parts):
        return None
    if len(parts) == 1:
        return ServiceKey(caller_namespace, parts[0])
    if len(parts) == 2:
        return ServiceKey(parts[1], parts[0])
    return None


def resolve(
    table: DestinationTable,
    routes: Routes,
    *,
    host: str,
    port: int,
    caller_namespace: str,
    cluster_domain: str,
    port_given: bool = True,
) -> tuple[str, int]:
    """(ip, port) to route as a captured connection's original destination; ProxyRequestError
    502 for a host the mesh does not know, 403 for a port it may not be reached on."""
    if port in AGENT_PORTS:
        raise ProxyRequestError(403, f"port {port} is the mesh agent's own: not a destination")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        ip = None
    if ip is not None:
        service = table.service_by_ip(str(ip))
        if service is not None:
            if service_port(service, port) is None:
                raise ProxyRequestError(403, _not_a_port(service.key, port, service.ports))
            return str(ip), port
        if routes.resolve(str(ip), port).known:
            return str(ip), port  # a pod of the mesh (this node's, a meshed one, an endpoint)
        raise ProxyRequestError(502, f"{host} is neither a Service nor a pod of the cluster")
    key = service_key(host, caller_namespace=caller_namespace, cluster_domain=cluster_domain)
    service = table.services.get(key) if key is not None else None
    if service is None or key is None:
        raise ProxyRequestError(
            502,
            f"unknown host {host!r}: the router reaches the cluster's Services "
            f"(name, name.namespace, name.namespace.svc.{cluster_domain})",
        )
    if service.headless:
        raise ProxyRequestError(502, f"Service {key} is headless: name one of its pods' IPs")
    tcp = [p.port for p in service.ports if p.protocol.upper() == "TCP"]
    if not port_given and service_port(service, port) is None and len(tcp) == 1:
        port = tcp[0]
    if service_port(service, port) is None:
        raise ProxyRequestError(403, _not_a_port(key, port, service.ports))
    return service.cluster_ips[0], port


def _not_a_port(key: ServiceKey, port: int, declared: tuple[object, ...]) -> str:
    listed = ", ".join(str(getattr(p, "port", p)) for p in declared) or "none"
    return f"port {port} is not a TCP port of Service {key} (its ports: {listed})"
