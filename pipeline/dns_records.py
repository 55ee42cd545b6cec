"""Look up the DNS records a sender's setup depends on: TXT (SPF, DKIM, DMARC), MX and addresses.

dnspython enters the project only here. A `Records` asks the system's resolvers, or one given
nameserver ("127.0.0.1:5353"), which is how `newsletter doctor` can be pointed at a test server
or at the domain's own authoritative server before a record has spread.
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.name
import dns.resolver

from pipeline.errors import ConfigError, LookupFailed


class Records:
    """DNS lookups that return plain strings; a name that does not exist gives an empty list."""

    def __init__(self, nameserver: str | None = None, timeout: float = 5.0) -> None:
        if nameserver:
            host, port = _split_server(nameserver)
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [host]
            self._resolver.port = port
        else:
            self._resolver = dns.resolver.Resolver()
        self._resolver.lifetime = timeout
        self.nameserver = nameserver

    def txt(self, name: str) -> list[str]:
        """Each TXT record at `name`, its strings joined (a long DKIM key is split into several)."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self._query(name, "TXT")]

    def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, host) of each MX record, lowest preference first."""
        return sorted((r.preference, r.exchange.to_text().rstrip(".")) for r in self._query(name, "MX"))

    def addresses(self, host: str) -> list[str]:
        """The IPv4 and IPv6 addresses of `host` (itself when it is an address literal)."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        return [r.to_text() for kind in ("A", "AAAA") for r in self._query(host, kind)]

    def _query(self, name: str, kind: str) -> list:  # type: ignore[type-arg]
        try:
            return list(self._resolver.resolve(name, kind, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.name.NameTooLong,
                dns.resolver.NoResolverConfiguration) as exc:
            where = f" at {self.nameserver}" if self.nameserver else ""
            raise LookupFailed(f"DNS lookup of {kind} {name}{where} failed: {exc}") from None


def _split_server(value: str) -> tuple[str, int]:
    """"host", "host:port", "[v6]:port" or a bare IPv6 address."""
    host, port = value, "53"
    if value.startswith("["):
        host, _, port = value[1:].partition("]")
        port = port.lstrip(":") or "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        raise ConfigError(f"DNS server {value!r}: expected an IP address and optional port, "
                          'like "127.0.0.1:5353"') from None
