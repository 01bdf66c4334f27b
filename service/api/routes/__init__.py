"""One router per resource, gathered behind one router (as in the FastAPI full-stack template)."""

from fastapi import APIRouter, Depends

from service.api.deps import current_user, known_query_only
from service.api.responses import error_responses
from service.api.routes import atlas, catalogue, compare, health, pages, reports, studies, tokens, ui

api_router = APIRouter()
# /health answers without a token: load balancers and `docker compose` probe it.
api_router.include_router(health.router, dependencies=[Depends(known_query_only)])
# Authentication first: without a token nothing else about the request is answered.
_authenticated = [Depends(current_user), Depends(known_query_only)]
_auth_errors = error_responses(401)
api_router.include_router(catalogue.router, dependencies=_authenticated, responses=_auth_errors)
api_router.include_router(studies.router, dependencies=_authenticated, responses=_auth_errors)
api_router.include_router(reports.router, dependencies=_authenticated, responses=_auth_errors)
# The team page answers a browser without a token (it cannot send one on a page load) but then
# holds no data: it asks for the token and fetches everything else with it (routes/pages.py).
api_router.include_router(pages.router, dependencies=[Depends(known_query_only)])
api_router.include_router(ui.router, dependencies=[Depends(known_query_only)])
api_router.include_router(compare.router, dependencies=_authenticated, responses=_auth_errors)
api_router.include_router(tokens.router, dependencies=_authenticated, responses=_auth_errors)
api_router.include_router(tokens.me_router, dependencies=_authenticated, responses=_auth_errors)
api_router.include_router(atlas.router, dependencies=_authenticated, responses=_auth_errors)
