"""Where webhooks may point: public addresses only, unless an admin allows a private range.

A webhook makes the control plane send requests from inside the network, so a URL to loopback
(Redis on 127.0.0.1:6379), link-local (cloud metadata at 169.254.169.254) or a private range would
let whoever may set webhooks reach services nobody meant to expose. Every address that is not
globally routable is refused unless it lies in a range given with `mixprec server --webhook-allow`.
The check runs when the webhook is set (on the literal address, or on what the name resolves to)
and again before each delivery, on what the name resolves to then.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from mixprec.errors import FieldError, InvalidArgument

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ranges(ranges: Iterable[str], field_name: str = "--webhook-allow") -> tuple[Network, ...]:
    parsed = []
    for text in ranges:
        try:
            parsed.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise InvalidArgument(FieldError(field_name, f"{text[:60]!r} is not an address range such as "
                                                         "10.0.0.0/8 or fd00::/8")) from None
    return tuple(parsed)


class WebhookTargets:
    def __init__(self, allowed: Sequence[Network] = ()):
        self.allowed = tuple(allowed)

    def refusal(self, address: Address) -> str | None:
        """Why a webhook may not reach `address`, or None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_global or any(address in network for network in self.allowed):
            return None
        kind = ("loopback" if address.is_loopback else "link-local" if address.is_link_local
                else "unspecified" if address.is_unspecified else "private" if address.is_private
                else "not globally routable")
        return (f"{address} is a {kind} address; webhooks reach public addresses only, unless the server "
                "allows the range with --webhook-allow")

    def check_url(self, url: str) -> None:
        """At set time: refused when the host is, or resolves to, an address webhooks may not reach.
        A name that does not resolve here is accepted (each delivery checks again)."""
        why = self.delivery_refusal(url)
        if why is not None:
            raise InvalidArgument(FieldError("url", why))

    def delivery_refusal(self, url: str) -> str | None:
        """Before a delivery: why it may not be sent now (the name may resolve elsewhere than it did).
        A name that does not resolve is left to the delivery to fail (and retry)."""
        addresses = self._addresses(urlsplit(url).hostname or "")
        return next((why for why in map(self.refusal, addresses) if why is not None), None)

    @staticmethod
    def _addresses(host: str) -> list[Address]:
        try:
            return [ipaddress.ip_address(host.split("%", 1)[0])]
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return []
        return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
