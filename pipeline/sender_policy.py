"""Read a domain's published sender policies: whether its SPF allows an address, what DMARC asks.

Enough of RFC 7208 to answer "does this relay pass SPF for our domain": ip4, ip6, a, mx,
include, redirect and all, with the ten-lookup limit; macros and exists count as no match,
so an answer of "not allowed" can be wrong for such records (the message says so).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

MAX_LOOKUPS = 10  # RFC 7208 4.6.4: more DNS-querying terms than this is a permerror


class Lookups(Protocol):
    def txt(self, name: str) -> list[str]: ...

    def mx(self, name: str) -> list[tuple[int, str]]: ...

    def addresses(self, host: str) -> list[str]: ...


def spf_records(records: Lookups, domain: str) -> list[str]:
    """The `v=spf1` TXT records of `domain` (a valid setup has exactly one)."""
    return [r for r in records.txt(domain) if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]


@dataclass
class SPFVerdict:
    allowed: bool
    why: str  # the term that matched, or what stopped the evaluation


def spf_allows(records: Lookups, domain: str, address: str) -> SPFVerdict:
    """Whether `domain`'s SPF record gives "pass" for mail sent from `address`."""
    ip = ipaddress.ip_address(address)
    budget = [MAX_LOOKUPS]
    return _evaluate(records, domain, ip, budget, depth=0)


def _evaluate(records: Lookups, domain: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
              budget: list[int], depth: int) -> SPFVerdict:
    found = spf_records(records, domain)
    if len(found) != 1:
        return SPFVerdict(False, f"{domain} has {len(found)} SPF records (needs exactly one)")
    redirect = None
    for term in found[0].split()[1:]:
        qualifier = term[0] if term[0] in "+-~?" else "+"
        mechanism = term.lstrip("+-~?")
        name, _, value = mechanism.partition(":")
        name = name.lower()
        if mechanism.lower().startswith("redirect="):
            redirect = mechanism.partition("=")[2]
            continue
        if "=" in name:  # another modifier (exp=): no effect on the result
            continue
        if name in ("a", "mx", "include", "exists", "ptr") or name.startswith(("a/", "mx/")):
            budget[0] -= 1
            if budget[0] < 0:
                return SPFVerdict(False, f"more than {MAX_LOOKUPS} DNS lookups (a permerror)")
        if _matches(records, domain, ip, name, value, budget, depth):
            if qualifier == "+":
                return SPFVerdict(True, f"{term} in the record of {domain}")
            return SPFVerdict(False, f"{term} in the record of {domain} matches and does not pass")
    if redirect:
        budget[0] -= 1
        if depth >= MAX_LOOKUPS or budget[0] < 0:
            return SPFVerdict(False, f"more than {MAX_LOOKUPS} DNS lookups (a permerror)")
        return _evaluate(records, redirect, ip, budget, depth + 1)
    return SPFVerdict(False, f"no term of the record of {domain} names {ip}")


def _matches(records: Lookups, domain: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
             name: str, value: str, budget: list[int], depth: int) -> bool:
    base, _, cidr = name.partition("/")
    target, _, vcidr = value.partition("/")
    if base == "all":
        return True
    if base in ("ip4", "ip6"):
        try:
            return ip in ipaddress.ip_network(value, strict=False)
        except ValueError:
            return False
    if base == "include":
        if depth >= MAX_LOOKUPS:
            return False
        return _evaluate(records, value, ip, budget, depth + 1).allowed
    prefix = cidr or vcidr
    if base == "a":
        hosts = [target or domain]
    elif base == "mx":
        hosts = [host for _, host in records.mx(target or domain)]
    else:
        return False  # exists, ptr and macros: not evaluated (see the module docstring)
    for host in hosts:
        for found in records.addresses(host):
            address = ipaddress.ip_address(found)
            if address.version != ip.version:
                continue
            bits = int(prefix) if prefix and address.version == 4 else address.max_prefixlen
            if ip in ipaddress.ip_network(f"{address}/{bits}", strict=False):
                return True
    return False


def dmarc_record(records: Lookups, domain: str) -> tuple[str, dict[str, str]] | None:
    """(the name it was found at, its tags) of the DMARC record for `domain`: the domain's own,
    else its parent's (a simple stand-in for the organisational domain); None when neither has one."""
    labels = domain.lower().rstrip(".").split(".")
    for name in dict.fromkeys([domain, ".".join(labels[-2:])]):
        for text in records.txt(f"_dmarc.{name}"):
            found = tags(text)
            if found.get("v") == "DMARC1":
                return f"_dmarc.{name}", found
    return None


def tags(text: str) -> dict[str, str]:
    """A DNS record's `tag=value;` list (DMARC, DKIM) as a dict, tags in lower case."""
    found = {}
    for part in text.split(";"):
        key, eq, value = part.partition("=")
        if eq:
            found[key.strip().lower()] = value.strip()
    return found
