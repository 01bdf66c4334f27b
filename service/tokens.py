"""API tokens: made once, shown once, stored as SHA-256.

A token is ``dl_`` + ``secrets.token_urlsafe(32)`` (256 random bits), so a plain SHA-256 is enough
to store it: there is nothing to brute-force, unlike a password, and a lookup by hash is one
indexed query. The prefix names what the secret is (for secret scanners and for people reading a
config file) and keeps a token from starting with ``-``, which a command line would take for an
option: one bare ``token_urlsafe`` in 64 does.
The token's ``name`` is who owns what it submits; ``admin`` may cancel or delete anyone's study.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sys

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.models import ApiToken, utcnow
from service.store import Principal

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
#: What every token made here starts with (``docker/secrets.sh`` writes the same).
TOKEN_PREFIX = "dl_"


def new_token() -> str:
    """A fresh token: the prefix and 256 random bits, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ValueError(
            f"invalid token name {name!r}: 1 to 100 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def create_token(session: Session, name: str, *, admin: bool = False) -> str:
    """Store a new token for ``name`` and return it (the only time it exists in clear)."""
    token = new_token()
    session.add(ApiToken(name=check_name(name), token_hash=hash_token(token), admin=admin, created_at=utcnow()))
    session.flush()
    return token


def ensure_token(session: Session, name: str, token: str, *, admin: bool = False, sole: bool = False) -> tuple[bool, int]:
    """Store ``token`` (made elsewhere, e.g. by the compose stack's ``secrets`` service) for
    ``name`` unless its hash is already stored; returns (whether it was added, how many other
    tokens were revoked). A token that was stored and then revoked stays revoked: running this
    again does not bring it back.

    ``sole=True`` makes it the only live token of ``name``: every other live token of that name is
    revoked. ``decouple migrate`` stores the deployment's admin token this way, so that a new
    ``DECOUPLE_ADMIN_TOKEN`` replaces the old one instead of leaving both valid (rotation)."""
    if len(token) < 32:
        raise ValueError("a token given to store must have at least 32 characters")
    digest = hash_token(token)
    added = False
    if session.scalar(select(ApiToken.id).where(ApiToken.token_hash == digest)) is None:
        session.add(ApiToken(name=check_name(name), token_hash=digest, admin=admin, created_at=utcnow()))
        session.flush()
        added = True
    revoked = 0
    if sole:
        result = session.execute(
            update(ApiToken)
            .where(ApiToken.name == name, ApiToken.revoked_at.is_(None), ApiToken.token_hash != digest)
            .values(revoked_at=utcnow())
        )
        revoked = result.rowcount
    return added, revoked


#: The one query every authenticated request makes, built once (``authenticate``).
_LOOKUP = select(ApiToken.name, ApiToken.admin).where(
    ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None)
)


def authenticate(session: Session | Connection, token: str) -> Principal | None:
    """Who holds ``token``, or None if it is unknown or revoked: one indexed query by its hash,
    the same for every token (a plain connection will do; the API goes through ``db.read``)."""
    row = session.execute(_LOOKUP, {"token_hash": hash_token(token)}).one_or_none()
    return None if row is None else Principal(name=row.name, admin=row.admin)


def revoke_tokens(session: Session, name: str) -> int:
    """Revoke every live token of ``name``; returns how many."""
    result = session.execute(
        update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount


def create_token_cli(name: str, admin: bool = False) -> int:
    """``decouple token create NAME [--admin]``: print a new token once, on stdout."""
    from service.db import check_schema_current, get_engine, session_scope
    from service.errors import CliError, DecoupleError

    try:
        check_name(name)
        engine = get_engine()
        check_schema_current(engine)
        with session_scope(engine) as session:
            token = create_token(session, name, admin=admin)
    except (DecoupleError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    print(token)
    role = "admin " if admin else ""
    print(
        f"created {role}token for {name!r}; it is shown only this once "
        "(send it as 'Authorization: Bearer <token>', or set DECOUPLE_TOKEN)",
        file=sys.stderr,
    )
    return 0


def revoke_token_cli(name: str) -> int:
    """``decouple token revoke NAME``: revoke every live token of NAME (admin work, on the database)."""
    from service.db import check_schema_current, get_engine, session_scope
    from service.errors import CliError, DecoupleError

    try:
        check_name(name)
        engine = get_engine()
        check_schema_current(engine)
        with session_scope(engine) as session:
            n = revoke_tokens(session, name)
    except (DecoupleError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if n == 0:
        raise CliError(f"no live token named {name!r}")
    print(f"revoked {n} token{'s' if n != 1 else ''} of {name!r}", file=sys.stderr)
    return 0
