"""Whether a host (a name, an IPv4 or a bracketed IPv6 address) is this machine's loopback."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8, [::1]: the preview server and a plain IMAP login accept only these."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
