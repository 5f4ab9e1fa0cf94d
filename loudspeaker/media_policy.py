"""The media server's limits and who may use its admin endpoints (no sockets here).

Light on imports: ``Settings`` validates its options with it on every CLI start.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from loudspeaker.exceptions import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def parse_admin_from(spec: str) -> tuple[Network, ...]:
    """``loopback`` (the default), ``any``, or comma-separated addresses/networks (CIDR)."""
    nets: list[Network] = []
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            continue
        if token == "loopback":
            nets.extend(LOOPBACK)
        elif token == "any":
            nets.extend((ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))
        else:
            try:
                nets.append(ipaddress.ip_network(token, strict=False))
            except ValueError:
                raise ConfigError(
                    f"admin address {token!r} is not an address or network "
                    "(e.g. loopback, 10.0.0.0/24, any)"
                ) from None
    if not nets:
        raise ConfigError("the admin addresses are empty (use loopback, any or a network)")
    return tuple(nets)


@dataclass(frozen=True)
class MediaLimits:
    """How much the media server takes on (Settings: ``http_*``; docs/architecture.md)."""

    max_connections: int = 1024
    # The whole request head must arrive within this (a box sends it in one packet).
    header_timeout_s: float = 10.0
    # Each write of the body must be taken by the client within this.
    send_timeout_s: float = 30.0
    # Who may read /metrics and POST /api/poke (besides this host's own address).
    admin_networks: tuple[Network, ...] = LOOPBACK


def is_admin(peer: str, local: str, networks: Sequence[Network]) -> bool:
    """True when ``peer`` may use /metrics and /api/poke."""
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # A connection from this host to its own (non-loopback) address comes from that
    # address: the CLI poking a controller bound to the LAN interface.
    if str(ip) == local.split("%", 1)[0]:
        return True
    return any(ip in net for net in networks if net.version == ip.version)


def local_host(host: str) -> str:
    """The address a local client reaches a server bound to ``host`` at."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
