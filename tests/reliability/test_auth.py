"""Auth under attack: missing and malformed credentials, guessed and revoked tokens, other users'
studies, where tokens live (hashed, in one column) and where they never go (logs), revocation.

"No timing oracle" is shown on the code path rather than with a stopwatch: every bad token, be
it random, one character off a real one, or real but revoked, makes the API run the very same
single query (a lookup by the token's SHA-256) and give the very same answer, byte for byte.
Nothing compares a secret character by character, so there is nothing for timing to reveal;
a stopwatch comparison on a shared 2-core machine would only be flaky.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets

import httpx
from sqlalchemy import event, inspect, text

from service.cli import main as cli_main
from service.config import get_settings
from service.db import session_scope
from service.tokens import create_token, create_token_cli
from tests.conftest import make_spec
from tests.reliability.servers import start_api

NO_TOKEN = {"detail": "authentication required: send 'Authorization: Bearer <token>'"}
BAD_TOKEN = {"detail": "invalid or revoked token"}


def test_missing_or_malformed_credentials_are_401(lite_client):
    valid = lite_client.tokens["alice"]
    cases = [
        ({}, NO_TOKEN),
        ({"Authorization": ""}, NO_TOKEN),
        ({"Authorization": "Bearer"}, NO_TOKEN),
        ({"Authorization": "Bearer "}, NO_TOKEN),
        ({"Authorization": f"Basic {valid}"}, NO_TOKEN),
        ({"Authorization": f"Token {valid}"}, NO_TOKEN),
        ({"Authorization": valid}, NO_TOKEN),
        ({"X-Api-Key": valid}, NO_TOKEN),
        ({"Authorization": f"Bearer {valid} {valid}"}, BAD_TOKEN),
        ({"Authorization": f"Bearer {valid}x"}, BAD_TOKEN),
        ({"Authorization": f"Bearer {valid[:-1]}"}, BAD_TOKEN),
        ({"Authorization": f"Bearer {valid.upper()}"}, BAD_TOKEN),
        ({"Authorization": "Bearer " + "A" * 8000}, BAD_TOKEN),
        ({"Authorization": "Bearer ' OR '1'='1"}, BAD_TOKEN),
        ({"Authorization": "Bearer caf\u00e9".encode("latin-1")}, BAD_TOKEN),
    ]
    for headers, body in cases:
        for method, path in [("GET", "/studies"), ("POST", "/studies"), ("DELETE", "/tokens/alice"), ("GET", "/optimizers")]:
            r = lite_client.request(method, path, headers=headers, json=make_spec() if method == "POST" else None)
            assert r.status_code == 401, (headers, method, path, r.text[:200])
            assert r.json() == body, (headers, method, path, r.text[:200])
            assert r.headers["www-authenticate"] == "Bearer"
    # The scheme is case-insensitive (RFC 9110), the token is not.
    assert lite_client.get("/studies", headers={"Authorization": f"bearer {valid}"}).status_code == 200
    assert lite_client.get("/studies", params={"limit": 1}, headers={"Authorization": f"Bearer {valid}"}).status_code == 200
    assert lite_client.get("/health").status_code == 200  # probes need no token


def test_every_bad_token_gets_the_same_answer_by_the_same_query(secure_client, engine):
    """Random, one character off, revoked: identical responses and identical SQL, a single lookup
    by hash (the raw token is never a query parameter)."""
    c = secure_client
    with session_scope(engine) as s:
        revoked = create_token(s, "mallory")
    assert c.delete("/tokens/mallory", headers=c.as_["root"]).status_code == 200
    alice = c.tokens["alice"]
    off_by_one = alice[:-1] + ("A" if alice[-1] != "A" else "B")
    bad = {"random": secrets.token_urlsafe(32), "off by one": off_by_one, "revoked": revoked}

    statements: list[tuple[str, tuple]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    seen = {}
    event.listen(engine, "before_cursor_execute", record)
    try:
        for label, token in [*bad.items(), ("valid", alice)]:
            statements.clear()
            r = c.get("/studies", params={"owner": "nobody"}, headers={"Authorization": f"Bearer {token}"})
            seen[label] = (r.status_code, r.content, r.headers.get("www-authenticate"), list(statements))
    finally:
        event.remove(engine, "before_cursor_execute", record)

    answers = {label: got[:3] for label, got in seen.items() if label != "valid"}
    assert set(answers.values()) == {(401, b'{"detail":"invalid or revoked token"}', "Bearer")}, answers
    sql = {label: [stmt for stmt, _ in got[3]] for label, got in seen.items()}
    lookup = sql["random"]
    queries = [q for q in lookup if not q.startswith("BEGIN")]  # SQLite's explicit BEGIN aside
    assert sql["off by one"] == sql["revoked"] == lookup and len(queries) == 1
    assert "WHERE api_tokens.token_hash = " in queries[0]
    assert sql["valid"][: len(lookup)] == lookup  # a valid token starts the same way
    for label, token in [*bad.items(), ("valid", alice)]:
        params = repr(next(p for q, p in seen[label][3] if q == queries[0]))
        assert token not in params and hashlib.sha256(token.encode()).hexdigest() in params


def test_other_users_may_not_cancel_or_delete(secure_client):
    c = secure_client
    sid = c.post("/studies", json=make_spec(), headers=c.as_["alice"]).json()["id"]
    before = c.get(f"/studies/{sid}/trials", headers=c.as_["alice"]).json()
    forbidden = {"detail": f"study {sid} belongs to 'alice'; only its owner or an admin may change it"}
    for method, path in [("POST", f"/studies/{sid}/cancel"), ("DELETE", f"/studies/{sid}")]:
        r = c.request(method, path, headers=c.as_["bob"])
        assert (r.status_code, r.json()) == (403, forbidden)
    after = c.get(f"/studies/{sid}", headers=c.as_["bob"]).json()
    assert after["status"] == "queued" and after["owner"] == "alice"
    assert c.get(f"/studies/{sid}/trials", headers=c.as_["alice"]).json() == before
    # Bob cannot take it over by naming himself either: the owner comes from the token only.
    r = c.post("/studies", json={**make_spec(), "owner": "alice"}, headers=c.as_["bob"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "owner"
    assert c.post(f"/studies/{sid}/cancel", headers=c.as_["root"]).json()["status"] == "cancelled"
    assert c.delete(f"/studies/{sid}", headers=c.as_["alice"]).json() == {"id": sid, "deleted": True}


def test_tokens_are_prefixed_so_none_looks_like_an_option(engine):
    """Every token made starts with ``dl_`` and 43 URL-safe characters: a bare ``token_urlsafe``
    starts with ``-`` one time in 64, and ``decouple submit --token -x...`` then failed in argparse
    (CI hit it). 200 tokens: a bare one would start with ``-`` in at least one of them with
    probability 1 - (63/64)^200 = 0.96, so the prefix is what this checks."""
    with session_scope(engine) as s:
        made = [create_token(s, f"user{k}") for k in range(200)]
    assert all(re.fullmatch(r"dl_[A-Za-z0-9_-]{43}", t) for t in made)
    assert len(set(made)) == 200


def test_tokens_are_stored_as_their_sha256_only(secure_client, engine):
    """The api_tokens row holds the hex SHA-256, and no column of any table holds a raw token."""
    tokens = secure_client.tokens
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, token_hash FROM api_tokens")).all()
        dump = []
        for table in inspect(conn).get_table_names():
            dump += [repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
    assert sorted(rows) == sorted((name, hashlib.sha256(t.encode()).hexdigest()) for name, t in tokens.items())
    everything = "\n".join(dump)
    for t in tokens.values():
        assert t not in everything


def test_an_admin_revokes_tokens(secure_client, engine):
    c = secure_client
    with session_scope(engine) as s:
        second = create_token(s, "alice")  # alice has two tokens now, e.g. laptop and CI
    assert (c.delete("/tokens/alice", headers=c.as_["bob"]).status_code,
            c.delete("/tokens/alice", headers=c.as_["bob"]).json()) == (403, {"detail": "only an admin may revoke tokens"})
    assert c.get("/studies", headers=c.as_["alice"]).status_code == 200  # a refused revoke changed nothing
    r = c.delete("/tokens/alice", headers=c.as_["root"])
    assert (r.status_code, r.json()) == (200, {"name": "alice", "revoked": 2})
    for token in (c.tokens["alice"], second):
        r = c.get("/studies", headers={"Authorization": f"Bearer {token}"})
        assert (r.status_code, r.json()) == (401, BAD_TOKEN)
    r = c.delete("/tokens/alice", headers=c.as_["root"])
    assert (r.status_code, r.json()) == (404, {"detail": "no live token named 'alice'"})
    r = c.delete("/tokens/bad%20name", headers=c.as_["root"])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "name"
    with session_scope(engine) as s:
        fresh = create_token(s, "alice")  # revocation retires tokens, not the name
    assert c.get("/studies", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    assert c.get("/studies", headers=c.as_["bob"]).status_code == 200  # others untouched


def test_token_revoke_cli(secure_client, secure_settings, monkeypatch, capsys):
    monkeypatch.setenv("DECOUPLE_DATABASE_URL", secure_settings.database_url)
    get_settings.cache_clear()
    try:
        assert cli_main(["token", "revoke", "bob"]) == 0
        assert cli_main(["token", "revoke", "bob"]) == 2
        assert cli_main(["token", "revoke", "no such"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "revoked 1 token of 'bob'"
    assert err[1] == "decouple: no live token named 'bob'"
    assert err[2].startswith("decouple: invalid token name 'no such'")
    r = secure_client.get("/studies", headers=secure_client.as_["bob"])
    assert (r.status_code, r.json()) == (401, BAD_TOKEN)
    assert secure_client.get("/studies", headers=secure_client.as_["alice"]).status_code == 200


def test_tokens_never_reach_the_logs(lite_url, tmp_path, monkeypatch, capsys, caplog):
    """Created by the CLI, then used and misused against a real uvicorn: neither the app's log
    records (everything at DEBUG, SQL echo included) nor the server's output hold a token."""
    monkeypatch.setenv("DECOUPLE_DATABASE_URL", lite_url)
    get_settings.cache_clear()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # SQL and its parameters
    try:
        assert create_token_cli("alice", admin=True) == 0
        assert create_token_cli("bob") == 0
    finally:
        get_settings.cache_clear()
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    out = capsys.readouterr()
    alice, bob = out.out.split()  # stdout holds each token once, and nothing else
    guessed = secrets.token_urlsafe(32)

    server, base = start_api(lite_url, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            for token in (alice, bob, guessed):
                http.get("/studies", headers={"Authorization": f"Bearer {token}"})
                http.post("/studies", json=make_spec(), headers={"Authorization": f"Bearer {token}"})
            assert http.delete("/tokens/bob", headers={"Authorization": f"Bearer {alice}"}).status_code == 200
            assert http.get("/studies", headers={"Authorization": f"Bearer {bob}"}).status_code == 401
    finally:
        server.stop()
    logs = server.output() + "\n".join(r.getMessage() for r in caplog.records) + out.err
    assert "GET /studies HTTP/1.1" in server.output()  # the access log was on
    assert any("api_tokens" in r.getMessage() for r in caplog.records)  # and so was SQL echo
    for token in (alice, bob, guessed):
        assert token not in logs
