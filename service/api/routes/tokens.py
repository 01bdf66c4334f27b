"""``GET /me``: who the token is; ``DELETE /tokens/{name}``: an admin revokes every live token of
a name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel

from service.api.deps import EngineDep, UserDep
from service.api.responses import error_responses
from service.db import session_scope
from service.errors import Forbidden, NotFound
from service.tokens import NAME_RE, revoke_tokens

router = APIRouter(prefix="/tokens", tags=["tokens"])
#: ``/me`` rather than ``/tokens/me``: under ``/tokens/`` the path would also be
#: ``DELETE /tokens/{name}`` with the name ``me``.
me_router = APIRouter(tags=["tokens"])


class TokensRevoked(BaseModel):
    name: str
    revoked: int


class Me(BaseModel):
    name: str
    admin: bool


@me_router.get("/me", response_model=Me)
def me(user: UserDep) -> Me:
    """The token's holder and whether they are an admin (``local``, admin, with auth off): the
    study page shows cancel and extend only to the study's owner and to admins."""
    return Me(name=user.name, admin=user.admin)


@router.delete("/{name}", response_model=TokensRevoked, responses=error_responses(403, 404))
def revoke(
    name: Annotated[str, Path(pattern=NAME_RE.pattern, description="the token name, as given to `decouple token create`")],
    engine: EngineDep,
    user: UserDep,
) -> TokensRevoked:
    """Revoke every live token of ``name`` (admins only); requests with them are 401 from now on."""
    if not user.admin:
        raise Forbidden("only an admin may revoke tokens")
    with session_scope(engine) as session:
        n = revoke_tokens(session, name)
    if n == 0:
        raise NotFound(f"no live token named {name!r}")
    return TokensRevoked(name=name, revoked=n)
