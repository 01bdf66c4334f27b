"""`decouple submit / status / report` against a real API: uvicorn on a loopback port, serving
``create_app`` on an SQLite file, with auth required (as in the compose deployment).

The CLI runs in-process through ``service.cli.main`` (and once as the installed console script),
talking HTTP to the server. ``submit --wait`` is followed to the end by a stand-in worker thread
that plays a real worker's part through the same store calls (claim, mark running, record
epochs, finish trials, finish the study), so the progress bar and the final table come from the
real API.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from sqlalchemy.engine import Engine

from service import store
from service.api import create_app
from service.cli import main
from service.config import Settings, get_settings
from service.db import dispose_engines, get_engine, session_scope, upgrade_to_head
from service.report import format_table
from service.tokens import create_token, ensure_token
from tests.conftest import make_spec

pytestmark = pytest.mark.timeout(60)


@dataclass
class LiveApi:
    url: str
    token: str
    engine: Engine

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def args(self) -> list[str]:
        return ["--api-url", self.url, "--token", self.token]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("client-template") / "decouple.db"
    upgrade_to_head(f"sqlite:///{path}")
    dispose_engines(f"sqlite:///{path}")
    return path


def serve_in_thread(db_path: Path, data_dir: Path) -> Iterator[LiveApi]:
    url = f"sqlite:///{db_path}"
    settings = Settings(database_url=url, auth="required", data_dir=data_dir, max_trials=20_000)
    engine = get_engine(url)
    with session_scope(engine) as s:
        token = create_token(s, "alice")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield LiveApi(url=f"http://127.0.0.1:{port}", token=token, engine=engine)
    finally:
        server.should_exit = True
        thread.join(10)
        dispose_engines(url)


@pytest.fixture(scope="module")
def api(migrated_db, tmp_path_factory) -> Iterator[LiveApi]:
    """One server for the tests that only read or queue."""
    d = tmp_path_factory.mktemp("client-api")
    shutil.copyfile(migrated_db, d / "decouple.db")
    yield from serve_in_thread(d / "decouple.db", d / "data")


@pytest.fixture
def own_api(migrated_db, tmp_path) -> Iterator[LiveApi]:
    """A server of this test's own, for a stand-in worker that claims the only queued study."""
    shutil.copyfile(migrated_db, tmp_path / "decouple.db")
    yield from serve_in_thread(tmp_path / "decouple.db", tmp_path / "data")


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch):
    """The tests say the URL and token themselves unless a test sets the environment."""
    for var in ("DECOUPLE_API_URL", "DECOUPLE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def queued_id(out: str) -> str:
    first = out.splitlines()[0]
    assert first.startswith("study ") and " queued: " in first, out
    return first.split()[1].rstrip(":")


# --- submit --------------------------------------------------------------------------------------


YAML_SPEC = """\
name: yaml study
task: digits_mlp
epochs: 2
batch_size: 64
schedule: {name: cosine}
optimizers:
  - name: adamw
    lr: {min: 1e-3, max: 1e-1, num: 3}   # YAML 1.1 would read 1e-3 as a string
    wd: {min: 1e-4, max: 1e-2, num: 2}
seeds: [0, 1]
metric: val_error
"""


def test_submit_yaml_spec_queues_the_study_as_the_token_holder(api, capsys, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(YAML_SPEC)
    code, out, err = run(capsys, "submit", str(spec_file), *api.args())
    assert code == 0, err
    study_id = queued_id(out)
    assert out.splitlines()[0] == f"study {study_id} queued: 12 trials"
    study = api.get(f"/studies/{study_id}").json()
    assert study["owner"] == "alice" and study["status"] == "queued" and study["name"] == "yaml study"
    assert study["spec"]["optimizers"][0]["lr"] == {"min": 1e-3, "max": 1e-1, "num": 3}
    assert study["spec"]["optimizers"][0]["wd"] == {"min": 1e-4, "max": 1e-2, "num": 2}


def test_a_token_that_starts_with_a_dash_is_a_value_not_an_option(api, capsys, tmp_path):
    """Tokens made before the ``dl_`` prefix start with ``-`` one time in 64; ``--token -x...``
    must still pass it on (argparse alone stops with "expected one argument")."""
    dashed = "-" + "q" * 42
    with session_scope(api.engine) as s:
        ensure_token(s, "dash", dashed)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(YAML_SPEC)
    code, out, err = run(capsys, "submit", str(spec_file), "--api-url", api.url, "--token", dashed)
    assert code == 0, err
    assert api.get(f"/studies/{queued_id(out)}").json()["owner"] == "dash"
    code, out, err = run(capsys, "submit", str(spec_file), "--api-url", api.url, "--tok", dashed)
    assert code == 0, err  # argparse's abbreviation of --token, joined the same way
    assert api.get(f"/studies/{queued_id(out)}").json()["owner"] == "dash"
    # No value, or one of the CLI's own options where the value should be (an empty $TOKEN):
    # argparse's own usage error, never the option taken for the token.
    for tail in (["--token"], ["--token", "--json"], ["--token", "--js"]):
        with pytest.raises(SystemExit) as exited:
            main(["status", "x", "--api-url", api.url, *tail])
        assert exited.value.code == 2 and "--token: expected one argument" in capsys.readouterr().err


def test_submit_json_spec_with_url_and_token_from_the_environment(api, capsys, tmp_path, monkeypatch):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec(name="json study", seeds=[0, 1, 2])))
    monkeypatch.setenv("DECOUPLE_API_URL", api.url)
    monkeypatch.setenv("DECOUPLE_TOKEN", api.token)
    get_settings.cache_clear()
    code, out, err = run(capsys, "submit", str(spec_file))
    assert code == 0, err
    study_id = queued_id(out)
    assert out.splitlines()[0] == f"study {study_id} queued: 18 trials"
    assert api.get(f"/studies/{study_id}").json()["name"] == "json study"


def test_bad_spec_prints_each_field_error_and_exits_2(api, capsys, tmp_path):
    spec = make_spec(epochs=0)
    spec["optimizers"][0]["lr"]["min"] = -1.0
    spec_file = tmp_path / "bad.json"
    spec_file.write_text(json.dumps(spec))
    direct = httpx.post(api.url + "/studies", json=spec, headers={"Authorization": f"Bearer {api.token}"})
    assert direct.status_code == 422
    errors = direct.json()["errors"]
    assert {e["field"] for e in errors} == {"epochs", "optimizers[0].lr.min"}

    code, out, err = run(capsys, "submit", str(spec_file), *api.args())
    assert code == 2 and out == ""
    expected = "".join(f"\n  {e['field']}: {e['message']}" for e in errors)
    assert err == f"decouple: the API rejected the request (HTTP 422):{expected}\n"
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("spec.yaml", "name: x\noptimizers: [adamw\n",
         "is not valid YAML: while parsing a flow sequence expected ',' or ']', but got '<stream end>' (line 3, column 1)"),
        ("spec.json", '{"name": "x",}', "is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 14)"),
        ("spec.yml", "- adamw\n- sgd\n", ": a study spec is a mapping (name, task, optimizers, ...), but the file is a list"),
    ],
)
def test_unparseable_spec_file_names_the_file_and_the_parser_error(api, capsys, tmp_path, name, text, message):
    spec_file = tmp_path / name
    spec_file.write_text(text)
    code, out, err = run(capsys, "submit", str(spec_file), *api.args())
    assert (code, out) == (2, "")
    assert err == f"decouple: {spec_file}{'' if message.startswith(':') else ' '}{message}\n"


def test_missing_spec_file(api, capsys, tmp_path):
    code, _, err = run(capsys, "submit", str(tmp_path / "nope.yaml"), *api.args())
    assert code == 2
    assert err == f"decouple: spec file {tmp_path / 'nope.yaml'} does not exist\n"


# --- errors from the server ----------------------------------------------------------------------


def test_without_a_token_the_401_reason_names_decouple_token(api, capsys, tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec()))
    code, _, err = run(capsys, "submit", str(spec_file), "--api-url", api.url)
    assert code == 2
    assert err == (
        "decouple: authentication required: send 'Authorization: Bearer <token>' "
        f"(HTTP 401 from {api.url}): set DECOUPLE_TOKEN or --token to a valid token; "
        "an admin creates one with `decouple token create NAME`\n"
    )
    code, _, err = run(capsys, "status", "x", "--api-url", api.url, "--token", "not-a-token")
    assert code == 2 and err.startswith("decouple: invalid or revoked token (HTTP 401 from ")


def test_unknown_study_is_the_apis_404_reason(api, capsys):
    direct = api.get("/studies/no-such-study")
    assert direct.status_code == 404
    code, out, err = run(capsys, "status", "no-such-study", *api.args())
    assert (code, out) == (2, "")
    assert err == f"decouple: {direct.json()['detail']} (HTTP 404)\n"


def test_unreachable_server_names_the_url_and_the_variable_without_a_traceback(tmp_path):
    """The installed console script, as a user runs it, against a port nobody listens on."""
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "DECOUPLE_API_URL": url, "DECOUPLE_TOKEN": "t"}
    decouple = Path(sys.executable).with_name("decouple")
    proc = subprocess.run([str(decouple), "status", "abc"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"decouple: cannot reach the API at {url} (")
    assert lines[0].endswith("): is `decouple serve` running there? Set DECOUPLE_API_URL or --api-url to its address")


@pytest.mark.parametrize("url", ["localhost:8000", "http://[::1:8000"])  # refused on request / on parse
def test_a_malformed_url_is_named(capsys, url):
    code, _, err = run(capsys, "status", "abc", "--api-url", url, "--token", "t")
    assert code == 2
    assert err.startswith(f"decouple: invalid API URL '{url}' (")
    assert err.endswith("set DECOUPLE_API_URL or --api-url to the server's address, e.g. http://host:8000\n")


# --- status and report ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def queued_study(api) -> str:
    r = httpx.post(api.url + "/studies", json=make_spec(name="queued one"),
                   headers={"Authorization": f"Bearer {api.token}"})
    assert r.status_code == 201
    return r.json()["id"]


def test_status_of_a_queued_study(api, capsys, queued_study):
    code, out, err = run(capsys, "status", queued_study, *api.args())
    assert code == 0, err
    created = api.get(f"/studies/{queued_study}").json()["created_at"]
    assert out.splitlines() == [
        f"study     {queued_study}  queued one",
        "status    queued",
        "progress  0/12 trials done, 0 failed",
        "owner     alice",
        f"created   {created}",
    ]


def test_status_names_a_study_plugins_and_why_it_waits(api, capsys):
    from tests.service.test_plugins import plugin_spec

    r = httpx.post(api.url + "/studies", json=plugin_spec(name="wine"), headers={"Authorization": f"Bearer {api.token}"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    with session_scope(api.engine) as s:  # a worker without the example plugin looked at the queue
        assert store.claim_study(s, "w-bare", 60, only=sid, installed={}) is None
    code, out, err = run(capsys, "status", sid, *api.args())
    assert code == 0, err
    assert out.splitlines()[-4:] == [
        "plugin    rule adamax from decouple-plugin-example 0.1.0",
        "plugin    rule signum from decouple-plugin-example 0.1.0",
        "plugin    task wine_mlp from decouple-plugin-example 0.1.0",
        "waiting   no worker with the plugins it needs has claimed it (w-bare: rule adamax from "
        "decouple-plugin-example 0.1.0 is not installed; rule signum from decouple-plugin-example 0.1.0 is not "
        "installed; task wine_mlp from decouple-plugin-example 0.1.0 is not installed)",
    ]


def test_report_json_of_a_queued_study_is_partial(api, capsys, queued_study):
    code, out, err = run(capsys, "report", queued_study, "--json", *api.args())
    assert code == 0, err
    report = json.loads(out)
    assert report == api.get(f"/studies/{queued_study}/report").json()
    assert report["study_id"] == queued_study and report["status"] == "queued" and report["partial"] is True
    assert [e["name"] for e in report["optimizers"]] == ["adamw"]


def test_report_html_writes_the_page_and_the_table_is_the_default(api, capsys, queued_study, tmp_path):
    page = tmp_path / "out" / "report.html"
    code, out, err = run(capsys, "report", queued_study, "--html", str(page), *api.args())
    assert code == 0 and out == ""
    assert err == f"wrote the report page of study {queued_study} to {page}\n"
    assert page.read_text() == api.get(f"/studies/{queued_study}/report.html").text
    assert page.read_text().lstrip().lower().startswith("<!doctype html")

    code, out, err = run(capsys, "report", queued_study, *api.args())
    assert code == 0, err
    assert out == format_table(api.get(f"/studies/{queued_study}/report").json()) + "\n"


# --- submit --wait -------------------------------------------------------------------------------


def play_worker(engine: Engine, stop: threading.Event, pause: float) -> None:
    """Run the one queued study the way a worker records it, with synthetic metrics: val_error is
    a bowl in log lr plus one in log wd (separable by construction) plus a seed offset."""
    worker = "stand-in"
    study_id = None
    while study_id is None and not stop.is_set():
        with session_scope(engine) as s:
            study = store.claim_study(s, worker, lease_seconds=60)
            study_id = study.id if study else None
        if study_id is None:
            time.sleep(0.02)
    with session_scope(engine) as s:
        trials = [(t.id, t.lr, t.wd, t.seed) for t in store.pending_trials(s, study_id)]
    for trial_id, lr, wd, seed in trials:
        if stop.is_set():
            return
        err = 0.1 + 0.02 * (math.log10(lr) + 2) ** 2 + 0.01 * (math.log10(wd) + 2) ** 2 + 0.001 * seed
        with session_scope(engine) as s:
            store.mark_trials_running(s, [trial_id], worker)
            store.record_epoch(s, trial_id, 1, train_loss=err, val_loss=err, val_error=err)
            store.finish_trial(s, trial_id, worker, train_loss=err, val_loss=err, val_error=err)
        time.sleep(pause)
    with session_scope(engine) as s:
        assert store.finish_study(s, study_id, worker, "done")


def test_submit_wait_shows_progress_and_prints_the_table(own_api, capsys, tmp_path, monkeypatch):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(make_spec(name="waited")))
    monkeypatch.setattr("service.client.POLL_SECONDS", 0.05)
    stop = threading.Event()
    worker = threading.Thread(target=play_worker, args=(own_api.engine, stop, 0.05), daemon=True)
    worker.start()
    try:
        code, out, err = run(capsys, "submit", str(spec_file), "--wait", *own_api.args())
    finally:
        stop.set()
        worker.join(10)
    assert code == 0, err
    study_id = queued_id(out)
    report = own_api.get(f"/studies/{study_id}/report").json()
    assert report["status"] == "done" and report["partial"] is False
    assert report["optimizers"][0]["best"] == {"lr": pytest.approx(1e-2), "wd": pytest.approx(1e-2), "value": pytest.approx(0.1005)}
    assert out == f"study {study_id} queued: 12 trials\n" + format_table(report) + "\n"
    assert "12/12" in err and "0 failed" in err and "done" in err


def test_submit_wait_on_a_cancelled_study_says_so(own_api, capsys, tmp_path, monkeypatch):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec()))
    monkeypatch.setattr("service.client.POLL_SECONDS", 0.05)

    def cancel_when_queued() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            data = own_api.get("/studies").json()["data"]
            if data:
                httpx.post(f"{own_api.url}/studies/{data[0]['id']}/cancel",
                           headers={"Authorization": f"Bearer {own_api.token}"})
                return
            time.sleep(0.02)

    canceller = threading.Thread(target=cancel_when_queued, daemon=True)
    canceller.start()
    code, out, err = run(capsys, "submit", str(spec_file), "--wait", *own_api.args())
    canceller.join(10)
    study_id = queued_id(out)
    assert code == 2
    assert err.endswith(f"decouple: study {study_id} cancelled\n")
