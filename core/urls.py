"""Service URLs: one check each for the database and Redis URLs, and redaction of any password in them.

Every message that names a URL goes through `redact_url`: the password of the userinfo and any query
parameter that carries a secret (``?password=``) are shown as ``***``.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from imgbatch.core.errors import UserError

# Query parameters whose value is a secret (libpq's `password`, redis-py's `password`, ...).
SECRET_PARAMS = re.compile(r"pass(word)?|pwd|secret|token|key", re.IGNORECASE)
REDIS_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """The URL with every password replaced by ***; anything unparsable is redacted whole."""
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        secret_query = any(SECRET_PARAMS.fullmatch(k) for k, _ in pairs)
        if parts.password is None and not secret_query:
            return url  # untouched: urlunsplit would rewrite sqlite:////abs/path
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
        query = urlencode([(k, "***" if SECRET_PARAMS.fullmatch(k) else v) for k, v in pairs], safe="*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<malformed URL>"


def _port(parts: SplitResult, url: str, what: str) -> None:
    try:
        _ = parts.port  # urllib raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise UserError(f"invalid {what} URL {redact_url(url)!r}: the port must be a number") from exc


def check_redis_url(url: str) -> str:
    """The Redis URL as redis-py and Celery take it, or a UserError saying what is wrong with it.

    A password given as ``?password=`` moves into the userinfo, where Celery's banner masks it.
    """
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise UserError(
            f"invalid Redis URL {redact_url(url)!r}: the scheme must be redis://, rediss:// or unix://"
        )
    _port(parts, url, "Redis")
    if parts.scheme != "unix" and not parts.hostname:
        raise UserError(f"invalid Redis URL {redact_url(url)!r}: no host")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    password = next((v for k, v in pairs if k == "password"), None)
    if password is None or parts.password is not None or parts.scheme == "unix":
        return url
    rest = urlencode([(k, v) for k, v in pairs if k != "password"])
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}", query=rest))


def check_database_url(url: str) -> str:
    """The database URL with its driver made explicit (psycopg 3 for PostgreSQL, as `postgres://`
    means to other tools), or a UserError saying what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UserError(
            f"invalid database URL {redact_url(url)!r}: expected sqlite:///PATH or postgresql://..."
        )
    base, _, driver = scheme.partition("+")
    if base in ("postgres", "postgresql"):
        if driver not in ("", "psycopg"):
            raise UserError(f"invalid database URL {redact_url(url)!r}: PostgreSQL is reached with psycopg")
        url = f"postgresql+psycopg://{rest}"
    elif base != "sqlite":
        raise UserError(
            f"invalid database URL {redact_url(url)!r}: unknown scheme {scheme!r} "
            "(use sqlite:///PATH or postgresql://USER@HOST/DB)"
        )
    _port(urlsplit(url), url, "database")
    return url
