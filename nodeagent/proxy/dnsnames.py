"""Which DNS queries the agent answers itself, and with what, from its destination table
(sans-io: bytes in, a decision out).

Answered here: names under `svc.<cluster-domain>`: `<svc>.<ns>.svc.<domain>` gets the
Service's ClusterIPs (a headless Service: its ready endpoints' pod IPs), `<pod>.<svc>.<ns>...`
the one endpoint of a headless Service with that pod name; anything else under the zone is
NXDOMAIN. The short forms a resolver tries before (or without) the search list, `<svc>`
(in the asking pod's namespace), `<svc>.<ns>` and `<svc>.<ns>.svc`, are answered when they name
a known Service and forwarded otherwise (`example.com` could be a Service "example" in a
namespace "com", or the real domain). A/AAAA get addresses of that family (no IPv6 Services
here, so AAAA is NOERROR with no answer); other types NOERROR empty. Messages that do not parse,
non-IN classes and non-query opcodes are forwarded untouched.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from nodeagent.protocol import dns
from nodeagent.upstream.table import DestinationTable
from nodemesh.model import Service, ServiceKey

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
TTL = 5


@dataclass(frozen=True, slots=True)
class Decision:
    """`reply` to send back, or None to forward the query; `result` names it for the counter."""

    reply: bytes | None
    result: str  # answered | nxdomain | nodata | forward


FORWARD = Decision(None, "forward")


def _addresses(service: Service, hostname: str | None) -> list[str] | None:
    """The IPs for a name of `service`, or None when the name does not exist."""
    if hostname is not None:
        for ep in service.endpoints:
            if ep.ready and ep.pod is not None and ep.pod.name == hostname:
                return [ep.ip]
            if ep.ready and ep.ip.replace(".", "-") == hostname:
                return [ep.ip]
        return None
    if not service.headless:
        return list(service.cluster_ips)
    return sorted({ep.ip for ep in service.endpoints if ep.ready and not ep.terminating})


class DnsNames:
    def __init__(
        self, table: DestinationTable, *, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    ) -> None:
        self.table = table
        self.cluster_domain = cluster_domain.strip(".").lower()
        self.zone = f"svc.{self.cluster_domain}"

    def decide(self, message: bytes, *, namespace: str) -> Decision:
        """What to do with one query from a pod of `namespace`."""
        try:
            query = dns.parse_query(message)
        except dns.DnsError:
            return FORWARD  # not ours to judge: the upstream resolver answers as it would
        q = query.question
        if query.opcode != 0 or q.qclass != dns.CLASS_IN:
            return FORWARD
        name = q.name
        if name == self.zone or name.endswith("." + self.zone):
            return self._in_zone(query, name)
        if name.endswith("." + self.cluster_domain):
            # The rest of the cluster domain is the cluster DNS's own authority too: a search
            # list walk (`web.ns` + `.cluster.local`) gets its answer here, not after a
            # round trip upstream (seen to cost a resolver timeout per lookup in the lab).
            return self._reply(query, None, "nxdomain")
        return self._short_form(query, name, namespace)

    def _in_zone(self, query: dns.Query, name: str) -> Decision:
        parsed = dns.service_name(name, self.cluster_domain)
        service = None
        if parsed is not None:
            service = self.table.services.get(ServiceKey(parsed.namespace, parsed.service))
        if service is None:
            if name == self.zone:
                return self._reply(query, [], "nodata")
            return self._reply(query, None, "nxdomain")
        addresses = _addresses(service, parsed.hostname if parsed else None)
        return self._reply(query, addresses, "answered" if addresses else "nodata")

    def _short_form(self, query: dns.Query, name: str, namespace: str) -> Decision:
        parts = name.split(".")
        if len(parts) == 3 and parts[2] == "svc":
            parts = parts[:2]
        if len(parts) == 1 and namespace:
            key = ServiceKey(namespace, parts[0])
        elif len(parts) == 2:
            key = ServiceKey(parts[1], parts[0])
        else:
            return FORWARD
        service = self.table.services.get(key)
        if service is None:
            return FORWARD
        addresses = _addresses(service, None)
        return self._reply(query, addresses, "answered" if addresses else "nodata")

    def _reply(self, query: dns.Query, addresses: list[str] | None, result: str) -> Decision:
        q = query.question
        if addresses is None:
            body = dns.build_response(
                query, rcode=dns.NXDOMAIN, ttl=TTL, negative_zone=self.cluster_domain
            )
            return Decision(body, result)
        ips = [ipaddress.ip_address(a) for a in addresses]
        body = dns.build_response(query, addresses=ips, ttl=TTL, negative_zone=self.cluster_domain)
        if result == "answered" and q.qtype not in (dns.TYPE_A, dns.TYPE_AAAA):
            result = "nodata"
        elif result == "answered" and not any(
            (q.qtype, ip.version) in ((dns.TYPE_A, 4), (dns.TYPE_AAAA, 6)) for ip in ips
        ):
            result = "nodata"
        return Decision(body, result)
