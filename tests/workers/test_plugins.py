"""Plugins on the worker side: the example plugin's study end to end (API, worker, Ray, report) on
both databases; the torch.optim fallback against the single-config trainer; a plugin that fails
while training fails with its name; a worker lacking a study's plugin leaves it queued.

The example plugin (examples/decouple-plugin-example) is installed by tests/conftest.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
from torch import nn

from service.db import session_scope
from service.domain.plugins import Distribution, RuleInfo, TaskInfo
from service.models import Study
from tests.service.test_plugins import EXAMPLE, plugin_spec
from workers.packed import PluginStackOptimizer, Stack, TrialConfig, train_block
from workers.plugins import LoadedRule, PluginFailure
from workers.tasks import TASKS, PluginTask, register_task
from workers.trainer import train_single
from workers.worker import installed_plugins, run_worker

BROKEN = Distribution("broken-plugin", "0.3")


def test_the_example_plugin_study_runs_to_a_report(client, settings, engine, local_ray):
    """wine_mlp with signum (packed, beta set) and adamax (torch.optim fallback): 4 trials, 2 epochs."""
    r = client.post("/studies", json=plugin_spec())
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert run_worker(once=True, settings=settings, worker_id="w-plugins") == 0

    study = client.get(f"/studies/{sid}").json()
    assert study["status"] == "done", study
    assert study["progress"].items() >= {"trials_total": 4, "trials_done": 4, "trials_failed": 0}.items()
    assert study["plugins"] == {"task:wine_mlp": EXAMPLE, "rule:signum": EXAMPLE, "rule:adamax": EXAMPLE}
    trials = client.get(f"/studies/{sid}/trials").json()["data"]
    assert sorted(t["optimizer"] for t in trials) == ["adamax", "adamax", "signum", "signum"]
    for t in trials:
        assert t["status"] == "done" and not t["diverged"] and math.isfinite(t["val_loss"])
        assert t["val_error"] < 2 / 3  # better than guessing among 3 classes after 2 epochs

    report = client.get(f"/studies/{sid}/report").json()
    assert report["plugins"] == [
        {"kind": "rule", "name": "adamax", **EXAMPLE,
         "note": "a torch.optim.Optimizer run as a fallback: one instance per config over its slice of the "
                 "packed parameters, K Python-level steps per step (slower than a packed rule)"},
        {"kind": "rule", "name": "signum", **EXAMPLE},
        {"kind": "task", "name": "wine_mlp", **EXAMPLE},
    ]
    html = client.get(f"/studies/{sid}/report.html")
    assert html.status_code == 200
    assert "update rule signum from decouple-plugin-example 0.1.0" in html.text
    assert "task wine_mlp from decouple-plugin-example 0.1.0" in html.text


def test_a_worker_whose_plugin_version_differs_leaves_the_study_queued(client, settings, engine, local_ray):
    """The real worker loop: the study records 0.0.9 of the example (as if submitted against an
    older image) and another plugin this worker lacks; the worker claims nothing and says why."""
    sid = client.post("/studies", json=plugin_spec()).json()["id"]
    with session_scope(engine) as s:
        s.get(Study, sid).plugins = {"task:wine_mlp": {**EXAMPLE, "version": "0.0.9"},
                                     "rule:lamb": {"distribution": "lamb-plugin", "version": "1.0"}}
    started: list[str] = []
    assert run_worker(once=True, settings=settings, worker_id="w-old", on_study_start=started.append) == 0
    assert started == []
    study = client.get(f"/studies/{sid}").json()
    assert (study["status"], study["attempts"]) == ("queued", 0)
    assert study["waiting_reason"] == (
        "no worker with the plugins it needs has claimed it (w-old: rule lamb from lamb-plugin 1.0 is not "
        "installed; task wine_mlp from decouple-plugin-example 0.0.9: the worker has decouple-plugin-example 0.1.0)")


def test_a_worker_advertises_the_plugins_it_loaded():
    assert installed_plugins() == {"task:wine_mlp": EXAMPLE, "rule:signum": EXAMPLE, "rule:adamax": EXAMPLE}


# --- the packed rules against references ---------------------------------------------------------------


def test_the_torch_fallback_equals_the_single_config_trainer():
    configs = [TrialConfig(1e-2, 1e-3, 0), TrialConfig(3e-2, 1e-2, 1), TrialConfig(3.0, 1e-2, 2)]
    packed = train_block("wine_mlp", "adamax", configs, epochs=3, schedule={"name": "cosine"})
    for c, p in zip(configs, packed):
        ref = train_single("wine_mlp", "adamax", c.lr, c.wd, c.seed, epochs=3, schedule={"name": "cosine"})
        assert [m.val_loss for m in p.curve] == pytest.approx([m.val_loss for m in ref.curve], rel=1e-5, abs=1e-6)
        assert [m.val_error for m in p.curve] == [m.val_error for m in ref.curve]


@pytest.mark.parametrize("name", ["adamax", "signum:schedule"])
def test_a_diverged_config_leaves_a_plugin_block_without_touching_the_others(name):
    """lr 1e36 overflows in the first epoch; its row leaves the block (the fallback's per-config
    optimizers and the packed rule's state are re-indexed) and the others end bit-identical to
    training alone."""
    configs = [TrialConfig(1e-2, 1e-3, 0), TrialConfig(1e36, 1e-2, 1), TrialConfig(3e-2, 1e-2, 2)]
    block = train_block("wine_mlp", name, configs, epochs=3)
    assert [(r.diverged, r.diverged_epoch) for r in block] == [(False, None), (True, 0), (False, None)]
    for i in (0, 2):
        alone = train_block("wine_mlp", name, [configs[i]], epochs=3)[0]
        assert [m.val_loss for m in block[i].curve] == [m.val_loss for m in alone.curve]


@pytest.mark.parametrize("name", ["signum", "signum:l2", "signum:schedule"])
def test_a_packed_plugin_rule_equals_the_single_config_trainer_under_each_convention(name):
    """The packed path (one direction over (K, P), the trainer's decay) against build_optimizer's
    PluginRuleOptimizer on one model; measured gap in val loss: 1e-8 to 6e-8."""
    configs = [TrialConfig(1e-2, 1e-3, 0), TrialConfig(3e-3, 1e-1, 1)]
    packed = train_block("wine_mlp", name, configs, epochs=3, schedule={"name": "cosine"})
    for c, p in zip(configs, packed):
        ref = train_single("wine_mlp", name, c.lr, c.wd, c.seed, epochs=3, schedule={"name": "cosine"})
        assert [m.val_loss for m in p.curve] == pytest.approx([m.val_loss for m in ref.curve], rel=1e-5, abs=1e-6)
        assert [m.val_error for m in p.curve] == [m.val_error for m in ref.curve]


def test_a_packed_plugin_rule_trains_each_config_as_if_alone():
    configs = [TrialConfig(1e-2, 1e-3, 0), TrialConfig(3e-2, 1e-2, 1)]
    together = train_block("wine_mlp", "signum:schedule", configs, epochs=3, params={"beta": 0.8})
    for c, t in zip(configs, together):
        alone = train_block("wine_mlp", "signum:schedule", [c], epochs=3, params={"beta": 0.8})[0]
        assert [m.val_loss for m in t.curve] == [m.val_loss for m in alone.curve]
    other_beta = train_block("wine_mlp", "signum:schedule", configs[:1], epochs=3, params={"beta": 0.0})[0]
    assert other_beta.val_loss != together[0].val_loss  # the hyper-parameter reaches the rule


def test_signum_one_step_is_exact():
    """theta1 = theta0*(1 - eta*wd) - lr*sign((1-beta)*g) for the schedule convention, per config."""
    torch.manual_seed(0)
    models = [nn.Linear(3, 2) for _ in range(2)]
    stack = Stack(models, {"weight", "bias"}, torch.device("cpu"))
    stack.g.copy_(torch.randn_like(stack.g))
    p0, g = stack.p.clone(), stack.g.clone()
    from workers.plugins import rule_implementation

    opt = PluginStackOptimizer("signum:schedule", stack, rule_implementation("signum"), {"beta": 0.5})
    lr = torch.tensor([[0.1], [0.01]])
    wd = torch.tensor([[0.2], [0.0]])
    opt.step(stack, lr, wd, 0.5)
    assert torch.equal(stack.p, p0 * (1 - 0.5 * wd) - lr * torch.sign(0.5 * g))


# --- plugins that fail while training --------------------------------------------------------------------


@pytest.fixture
def broken_task():
    """A plugin task registered in this process only; removed again after the test."""
    added: list[str] = []

    def make(name: str, load_data, build_model, num_classes: int = 3, input_shape=(4,)):
        info = TaskInfo(name=name, description="d", num_classes=num_classes, epochs=1, batch_size=8,
                        input_shape=input_shape, implementation="broken", plugin=BROKEN)
        module = types.SimpleNamespace(load_data=load_data, build_model=build_model)
        register_task(PluginTask(info, module))
        added.append(name)
        return name

    yield make
    for name in added:
        TASKS.pop(name)
        from service.domain.catalog import TASK_INFO

        TASK_INFO.pop(name, None)


def _data(n=24, d=4, k=3, y_offset=0):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, d)), rng.integers(0, k, n) + y_offset, rng.standard_normal((8, d)),
            rng.integers(0, k, 8))


def _model():
    return nn.Sequential(nn.Linear(4, 3))


def test_failures_of_a_plugin_task_name_the_plugin(broken_task):
    def raises():
        raise OSError("disk gone")

    cases = {
        broken_task("loader_raises", raises, _model):
            "plugin task 'loader_raises' (broken-plugin 0.3): load_data raised OSError: disk gone",
        broken_task("bad_labels", lambda: _data(y_offset=1), _model):
            "plugin task 'bad_labels' (broken-plugin 0.3): train labels must be integers in [0, 3)",
        broken_task("bad_inputs", lambda: _data(d=5), _model):
            "plugin task 'bad_inputs' (broken-plugin 0.3): load_data's train split has inputs (24, 5) and "
            "labels (24,); expected (n, 4) and (n,)",
        broken_task("bad_model", _data, lambda: nn.Linear(4, 7)):
            "plugin task 'bad_model' (broken-plugin 0.3): the model maps a batch of shape (2, 4) to (2, 7), "
            "expected (2, 3)",
        broken_task("not_a_model", _data, lambda: "model"):
            "plugin task 'not_a_model' (broken-plugin 0.3): build_model returned a str, not an nn.Module",
    }
    for name, message in cases.items():
        with pytest.raises(PluginFailure) as e:
            train_block(name, "adamw", [TrialConfig(1e-2, 1e-3, 0)], epochs=1)
        assert str(e.value) == message
    ok = broken_task("fine", _data, _model)  # the same process still trains a good one
    assert math.isfinite(train_block(ok, "signum", [TrialConfig(1e-2, 1e-3, 0)], epochs=1)[0].val_loss)


def test_failures_of_a_plugin_rule_name_the_plugin():
    info = RuleInfo(name="broken_rule", title="t", rule="r", reference_convention="l2", conventions=("l2",),
                    lr=(1e-3, 1.0, 8), implementation="broken:direction", plugin=BROKEN)
    stack = Stack([nn.Linear(3, 2), nn.Linear(3, 2)], {"weight"}, torch.device("cpu"))
    lr, wd = torch.full((2, 1), 0.1), torch.full((2, 1), 0.01)

    def raises(g, state, ctx):
        raise RuntimeError("nan in my preconditioner")

    cases = {
        (lambda g, state, ctx: g[:, :3]):
            "plugin update rule 'broken_rule' (broken-plugin 0.3): direction returned (2, 3), expected a tensor "
            "of shape (2, 8) (configs x parameters)",
        (lambda g, state, ctx: 1.0):
            "plugin update rule 'broken_rule' (broken-plugin 0.3): direction returned float, expected a tensor "
            "of shape (2, 8) (configs x parameters)",
        raises: "plugin update rule 'broken_rule' (broken-plugin 0.3): direction raised RuntimeError: nan in my "
                "preconditioner",
    }
    before = stack.p.clone()
    for direction, message in cases.items():
        opt = PluginStackOptimizer("signum:l2", stack, LoadedRule(info, direction=direction), None)
        with pytest.raises(PluginFailure) as e:
            opt.step(stack, lr, wd, 1.0)
        assert str(e.value) == message
    assert torch.equal(stack.p, before)  # a failed step changes nothing


# --- a plugin failing inside a real worker -------------------------------------------------------------

FAILING_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from fastapi.testclient import TestClient
    from service.api import create_app
    from service.config import Settings
    from service.db import upgrade_to_head
    from workers import ray_adapter
    from workers.worker import run_worker

    tmp = Path(sys.argv[1])
    url = f"sqlite:///{tmp / 'team.db'}"
    upgrade_to_head(url)
    settings = Settings(database_url=url, auth="off", data_dir=tmp / "data", lease_seconds=60.0,
                        allowed_hosts="testserver")
    tiny = {"epochs": 1, "seeds": [0], "optimizers": [{"name": "adamw", "lr": {"min": 1e-2, "max": 1e-2, "num": 1},
                                                       "wd": {"min": 1e-3, "max": 1e-3, "num": 1}}]}
    with TestClient(create_app(settings)) as client:
        ids = [client.post("/studies", json={"name": task, "task": task, **tiny}).json()["id"]
               for task in ("flaky_data", "wine_mlp")]
        try:
            code = run_worker(once=True, settings=settings, worker_id="w-survives")
        finally:
            ray_adapter.shutdown()
        out = {"code": code}
        for sid in ids:
            out[sid] = {"study": client.get(f"/studies/{sid}").json(),
                        "trials": client.get(f"/studies/{sid}/trials").json()["data"]}
    print("RESULT " + json.dumps([out, ids]))
""")


@pytest.mark.slow
def test_a_plugin_failing_in_training_fails_its_trials_and_the_worker_goes_on(tmp_path):
    """A real worker process with its own Ray; the failing plugin is installed for it (and its Ray
    workers) through PYTHONPATH: its loader raises in the Ray trial, the block fails after its
    retries, the trials record the plugin's name, and the same worker then runs the next study."""
    plugin = tmp_path / "plugin"
    (plugin / "failing_plugin").mkdir(parents=True)
    (plugin / "failing_plugin" / "__init__.py").write_text("")
    (plugin / "failing_plugin" / "meta.py").write_text(textwrap.dedent("""
        from service.domain.plugins import TaskInfo
        FLAKY = TaskInfo(name="flaky_data", description="a loader that raises", num_classes=3, epochs=1,
                         batch_size=8, input_shape=(4,), implementation="failing_plugin.flaky")
    """))
    (plugin / "failing_plugin" / "flaky.py").write_text(textwrap.dedent("""
        def load_data():
            raise OSError("disk gone")

        def build_model():
            from torch import nn
            return nn.Linear(4, 3)
    """))
    dist = plugin / "failing_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[decouple_lab.tasks]\nflaky_data = failing_plugin.meta:FLAKY\n")
    env = {**os.environ, "PYTHONPATH": str(plugin), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", FAILING_WORKER, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result, (flaky, wine) = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["code"] == 0
    assert result[flaky]["study"]["plugins"] == {"task:flaky_data": {"distribution": "failing-plugin", "version": "0.1"}}
    [trial] = result[flaky]["trials"]
    assert trial["status"] == "failed"
    assert "plugin task 'flaky_data' (failing-plugin 0.1): load_data raised OSError: disk gone" in trial["error"]
    assert result[flaky]["study"]["progress"].items() >= {"trials_total": 1, "trials_done": 0, "trials_failed": 1}.items()
    assert result[wine]["study"]["status"] == "done"
    assert [t["status"] for t in result[wine]["trials"]] == ["done"]
