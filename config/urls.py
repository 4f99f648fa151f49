"""The store URLs a ``store`` setting may hold: their schemes, their ports, and how to show
one without its secrets (in logs, errors and status)."""

from __future__ import annotations

import urllib.parse

SQLITE_URL = "sqlite:///"
POSTGRES_URLS = ("postgresql://", "postgres://")
# Every prefix a ``store`` setting may start with; allocator/store opens one store for each.
SCHEMES = (SQLITE_URL, *POSTGRES_URLS)


def check_ports(url: str) -> None:
    """Raise ValueError for a port that is not a number in a URL's host list.

    libpq's (and asyncpg's) multi-host form names a port per host, ``db1:5432,db2:5433``,
    which ``urlsplit().port`` cannot parse, so each host is checked on its own.
    """
    hosts = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]  # raises on a bad [IPv6]
    for host in hosts.split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        _, colon, digits = port.rpartition(":")
        valid = not digits or (digits.isascii() and digits.isdigit() and int(digits) <= 65535)
        if colon and not valid:
            # The text is not repeated: a misplaced password could be what stands there.
            raise ValueError("a host's port is not a number from 0 to 65535")


# libpq's connection parameters that hold a secret, in the query string of a URL. The other
# ones name files (passfile, sslkey, sslcert, sslrootcert, service) or settings: a path is
# not a secret, and an operator needs to see it to tell which file was used.
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """``url`` with every secret in it (``user:PASSWORD@``, ``?password=``, ``?sslpassword=``)
    shown as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The user info ends at the last @ before the query, and the query starts at the first ? or
    # # after the first @: a password with an unencoded /, ? or # is hidden whole. Hiding too
    # much is harmless; too little is a leak.
    first_at = max(rest.find("@"), 0)
    end = min((i for i in (rest.find(c, first_at) for c in "?#") if i >= 0), default=len(rest))
    head, query = rest[:end], rest[end:]
    userinfo, at, hosts = head.rpartition("@")
    if at and ":" in userinfo:
        head = userinfo.split(":", 1)[0] + ":***@" + hosts
    query, hash_sign, fragment = query.partition("#")
    parts = []
    for part in query[1:].split("&") if query else ():
        name, eq, _ = part.partition("=")
        # Compared decoded and in any case, as libpq and asyncpg decode names (%70assword=).
        secret = eq and urllib.parse.unquote(name).lower() in SECRET_PARAMETERS
        parts.append(name + "=***" if secret else part)
    query = query[:1] + "&".join(parts)
    return scheme + sep + head + query + hash_sign + fragment
