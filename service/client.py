"""The team's client: ``decouple submit``, ``decouple status`` and ``decouple report`` over HTTP.

Each talks to the REST API (``docs/api.md``) with httpx. The API's address and token come from the
command's ``--api-url`` / ``--token``, else ``DECOUPLE_API_URL`` / ``DECOUPLE_TOKEN``
(:func:`service.config.get_settings`). Every failure a user can meet (a server that is not there,
a missing or wrong token, an unknown study, a spec the API rejects, a spec file that does not
parse) leaves as a :class:`service.cli.CliError` carrying the API's own reason, so the command
prints it on one line per problem and exits with status 2, never with a traceback.

Spec files are JSON (``.json``) or YAML (anything else). YAML is read as YAML 1.2 reads numbers:
PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is a *string*, which the API's strict float
fields would refuse; a learning rate is exactly where people write ``1e-4``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from service.config import get_settings
from service.errors import CliError

#: Connecting should be quick; a report of a large finished study may take a while to compute.
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
#: How often ``submit --wait`` asks for progress (seconds).
POLL_SECONDS = 2.0
#: Statuses after which a study changes no more.
FINAL_STATUSES = frozenset({"done", "failed", "cancelled"})


# --- spec files ----------------------------------------------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4``, ``1E+3`` and ``.5`` as floats (YAML 1.2)."""


_YAML12_FLOAT = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
# JSON has no dates: a name such as 2026-01-31 stays the string it looks like.
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _SpecLoader.yaml_implicit_resolvers.items()
}


def _yaml_error(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (line and column are 1-based, as editors count)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(filter(None, [exc.context, exc.problem]))
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def load_spec(path: str | Path) -> dict[str, Any]:
    """The study spec in ``path`` (JSON or YAML) as a dict; a :class:`CliError` naming the file
    and the parser's reason when it cannot be read or is not a mapping."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"spec file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read spec file {p}: {exc}") from None
    if p.suffix.lower() == ".json":
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"{p} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    else:
        try:
            spec = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise CliError(f"{p} is not valid YAML: {_yaml_error(exc)}") from None
    if not isinstance(spec, dict):
        kind = "empty" if spec is None else f"a {type(spec).__name__}"
        raise CliError(f"{p}: a study spec is a mapping (name, task, optimizers, ...), but the file is {kind}")
    return spec


# --- talking to the API --------------------------------------------------------------------------


@dataclass
class Api:
    """The API at ``url``: JSON requests with the bearer token, errors as :class:`CliError`."""

    url: str
    token: str | None
    http: httpx.Client

    @classmethod
    def open(cls, api_url: str | None, token: str | None) -> Api:
        settings = get_settings()
        url = (api_url or settings.api_url).rstrip("/")
        token = token if token is not None else settings.token
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            http = httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT)
        except httpx.InvalidURL as exc:
            raise CliError(cls._bad_url(url, exc)) from None
        return cls(url=url, token=token, http=http)

    @staticmethod
    def _bad_url(url: str, exc: Exception) -> str:
        return (
            f"invalid API URL {url!r} ({exc}): set DECOUPLE_API_URL or --api-url "
            "to the server's address, e.g. http://host:8000"
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise CliError(self._bad_url(self.url, exc)) from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise CliError(
                f"cannot reach the API at {self.url} ({reason}): is `decouple serve` running there? "
                "Set DECOUPLE_API_URL or --api-url to its address"
            ) from None
        if response.status_code >= 400:
            raise CliError(self._reason(response))
        return response

    def get_json(self, path: str) -> Any:
        return self._json(self.request("GET", path))

    def post_json(self, path: str, body: Any) -> Any:
        return self._json(self.request("POST", path, json=body))

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"{self.url} answered {response.request.url.path} with something that is not JSON; "
                "is DECOUPLE_API_URL the Decouple Lab API?"
            ) from None

    def _reason(self, response: httpx.Response) -> str:
        """The API's reason for refusing, in words a user can act on."""
        code = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        if not isinstance(detail, str) or not detail:
            first_line = response.text.strip().splitlines()[:1]
            detail = first_line[0][:200] if first_line else response.reason_phrase
        if code == 401:
            return (
                f"{detail} (HTTP 401 from {self.url}): set DECOUPLE_TOKEN or --token to a valid "
                "token; an admin creates one with `decouple token create NAME`"
            )
        if code == 422:
            errors = body.get("errors") if isinstance(body, dict) else None
            if isinstance(errors, list) and errors:
                lines = [f"{e.get('field', '?')}: {e.get('message', '?')}" for e in errors if isinstance(e, dict)]
                return "the API rejected the request (HTTP 422):\n  " + "\n  ".join(lines)
        return f"{detail} (HTTP {code})"


# --- the commands --------------------------------------------------------------------------------


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def submit(
    spec_path: str, *, wait: bool = False, api_url: str | None = None, token: str | None = None,
    poll_seconds: float | None = None,
) -> int:
    """``decouple submit SPEC [--wait]``: queue the study; with ``wait``, follow it to the end
    with a progress bar and print its separability table. Exit status 0 when it is queued (or,
    with ``wait``, done); a study that fails or is cancelled meanwhile is a :class:`CliError`."""
    spec = load_spec(spec_path)
    with Api.open(api_url, token) as api:
        created = api.post_json("/studies", spec)
        study_id = created["id"]
        print(f"study {study_id} queued: {created['trials_total']} trials")
        if not wait:
            print(f"follow it with `decouple status {study_id}`; read it with `decouple report {study_id}`")
            return 0
        try:
            study = follow(api, study_id, poll_seconds=poll_seconds)
        except KeyboardInterrupt:
            _stderr(f"stopped waiting; study {study_id} goes on (`decouple status {study_id}`)")
            raise
        if study["status"] != "done":
            reason = f": {study['last_error']}" if study.get("last_error") else ""
            raise CliError(f"study {study_id} {study['status']}{reason}")
        print_table(api.get_json(f"/studies/{study_id}/report"))
    return 0


def follow(
    api: Api, study_id: str, *, poll_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll ``GET /studies/{id}`` until the study is done, failed or cancelled, showing a progress
    bar (trials finished / total, elapsed, estimated time left) on stderr; returns the study.

    Failed trials count as finished for the bar (they will not run again in this attempt); the
    total is re-read each time, since an ``auto`` axis adds its grid after the pilot run.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials ({task.fields[failed]} failed)"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    poll_seconds = POLL_SECONDS if poll_seconds is None else poll_seconds
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("queued", total=None, failed=0)
        while True:
            study = api.get_json(f"/studies/{study_id}")
            p = study["progress"]
            bar.update(
                task, description=study["status"], total=p["trials_total"],
                completed=p["trials_done"] + p["trials_failed"], failed=p["trials_failed"],
            )
            if study["status"] in FINAL_STATUSES:
                return study
            sleep(poll_seconds)


def print_table(report: dict[str, Any]) -> None:
    from service.report import format_table

    print(format_table(report))


def status(id: str, *, api_url: str | None = None, token: str | None = None) -> int:  # noqa: A002
    """``decouple status ID``: the study's status, progress, owner and times."""
    with Api.open(api_url, token) as api:
        study = api.get_json(f"/studies/{id}")
    p = study["progress"]
    lines = [
        f"study     {study['id']}  {study.get('name', '')}".rstrip(),
        f"status    {study['status']}",
        f"progress  {p['trials_done']}/{p['trials_total']} trials done, {p['trials_failed']} failed",
        f"owner     {study.get('owner', '?')}",
    ]
    for key in ("created_at", "started_at", "finished_at"):
        if study.get(key):
            lines.append(f"{key.removesuffix('_at'):<9} {study[key]}")
    if study.get("last_error"):
        lines.append(f"error     {study['last_error']}")
    for key, dist in sorted((study.get("plugins") or {}).items()):
        lines.append(f"plugin    {key.replace(':', ' ', 1)} from {dist['distribution']} {dist['version']}")
    if study.get("waiting_reason") and study["status"] == "queued":
        lines.append(f"waiting   {study['waiting_reason']}")
    print("\n".join(lines))
    return 0


def report(
    id: str, *, as_json: bool = False, html: str | None = None,  # noqa: A002
    api_url: str | None = None, token: str | None = None,
) -> int:
    """``decouple report ID [--json] [--html FILE]``: the separability table (default), the
    report JSON, and/or the report page written to FILE. A study still running gives a partial
    report (``"partial": true``)."""
    with Api.open(api_url, token) as api:
        if html is not None:
            out = _write_page(api.request("GET", f"/studies/{id}/report.html").text, html, "the report page")
            _stderr(f"wrote the report page of study {id} to {out}")
        if as_json:
            print(json.dumps(api.get_json(f"/studies/{id}/report"), indent=2))
        elif html is None:
            print_table(api.get_json(f"/studies/{id}/report"))
    return 0


def _write_page(page: str, path: str, what: str) -> Path:
    """Write an HTML page the API served to ``path``; a CLI error (not a traceback) if it cannot."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {what} to {out}: {exc}") from None
    return out


def compare(
    ids: list[str], *, as_json: bool = False, html: str | None = None,
    api_url: str | None = None, token: str | None = None,
) -> int:
    """``decouple compare ID ID... [--json] [--html FILE]``: finished studies side by side, each
    measure's difference from the first study with its bootstrap interval (``GET /compare``)."""
    from service.compare import format_compare

    query = {"ids": ",".join(ids)}
    with Api.open(api_url, token) as api:
        if html is not None:
            out = _write_page(api.request("GET", "/compare.html", params=query).text, html, "the comparison page")
            _stderr(f"wrote the comparison page to {out}")
        if as_json or html is None:
            result = api._json(api.request("GET", "/compare", params=query))
            print(json.dumps(result, indent=2) if as_json else format_compare(result))
    return 0
