"""Plugins on the API side: one registry for built-ins and plugins, listings, spec validation,
refusals, and the claim rule (a worker without a study's plugins leaves it queued, with a reason).

The example plugin (examples/decouple-plugin-example) is installed by tests/conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta

from service import store
from service.db import session_scope
from service.domain import plugins
from service.domain.plugins import BUILTIN_ENTRY_POINTS, RULE_GROUP, TASK_GROUP, load_entry_point, registry
from service.models import Study

EXAMPLE = {"distribution": "decouple-plugin-example", "version": "0.1.0"}


def plugin_spec(**overrides):
    spec = {
        "name": "plugin study", "task": "wine_mlp", "epochs": 2, "batch_size": 32,
        "optimizers": [
            {"name": "signum", "lr": {"min": 1e-3, "max": 1e-2, "num": 2}, "wd": {"min": 1e-3, "max": 1e-3, "num": 1},
             "params": {"beta": 0.8}},
            {"name": "adamax", "lr": {"min": 1e-2, "max": 1e-1, "num": 2}, "wd": {"min": 1e-4, "max": 1e-4, "num": 1}},
        ],
        "seeds": [0],
    }
    spec.update(overrides)
    return spec


# --- one registry ---------------------------------------------------------------------------------


def test_builtins_and_the_example_come_through_the_same_loader():
    reg = registry()
    builtin = plugins.builtin_distribution()
    assert builtin.name == "decouple-lab"
    assert [ep.name for ep in BUILTIN_ENTRY_POINTS if ep.group == TASK_GROUP] == [
        "digits_mlp", "digits_mlp_bn", "mnist5k_cnn", "mnist5k_resnet", "cifar10_resnet",
        "synthetic", "synthetic_offgrid", "synthetic_seeds"]
    assert [ep.name for ep in BUILTIN_ENTRY_POINTS if ep.group == RULE_GROUP] == [
        "sgd", "adam", "lion", "radam", "nadam", "adafactor", "muon"]
    for ep in BUILTIN_ENTRY_POINTS:  # the registry holds exactly what the shared loader returns
        target = reg.tasks if ep.group == TASK_GROUP else reg.rules
        assert target[ep.name] == load_entry_point(ep, builtin)
        assert target[ep.name].plugin == builtin
    assert list(reg.tasks)[-1] == "wine_mlp" and reg.tasks["wine_mlp"].plugin.as_dict() == EXAMPLE
    assert (reg.rules["signum"].kind, reg.rules["adamax"].kind) == ("packed", "torch")
    assert reg.refused == {}
    assert reg.plugins() == {
        "task:wine_mlp": plugins.Distribution(**{"name": "decouple-plugin-example", "version": "0.1.0"}),
        "rule:signum": plugins.Distribution("decouple-plugin-example", "0.1.0"),
        "rule:adamax": plugins.Distribution("decouple-plugin-example", "0.1.0"),
    }


def test_the_api_side_reads_plugins_without_torch_or_workers():
    code = textwrap.dedent("""
        import sys
        from service.domain.plugins import registry
        from service.schemas import StudySpec
        reg = registry()
        StudySpec.model_validate({"name": "x", "task": "wine_mlp", "optimizers": [{"name": "signum:schedule"}]},
                                 context={"max_trials": None})
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "workers", "sklearn"))
        print(sorted(reg.plugins()), heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['rule:adamax', 'rule:signum', 'task:wine_mlp'] []"


# --- listings --------------------------------------------------------------------------------------


def test_tasks_and_optimizers_name_each_distribution_and_version(client):
    tasks = client.get("/tasks").json()
    by_name = {t["name"]: t for t in tasks["data"]}
    assert tasks["refused"] == {}
    assert (by_name["digits_mlp"]["distribution"], by_name["digits_mlp"]["version"]) == ("decouple-lab", "0.1.0")
    wine = by_name["wine_mlp"]
    assert {k: wine[k] for k in ("distribution", "version")} == EXAMPLE
    assert (wine["num_classes"], wine["epochs"], wine["batch_size"], wine["input_shape"]) == (3, 10, 16, [13])
    assert wine["default_grids"]["signum"] == {"lr": {"min": 1e-3, "max": 1e-1, "num": 4}}

    opt = client.get("/optimizers").json()
    bases = {b["name"]: b for b in opt["bases"]}
    assert bases["sgd"]["kind"] == "builtin" and bases["sgd"]["distribution"] == "decouple-lab"
    assert bases["signum"] == {
        "name": "signum", "title": "Signum (sign of momentum)", "family": "signum",
        "reference": "Bernstein et al. 2018, signSGD with momentum", "reference_convention": "lr",
        "rule": "m <- beta*m + (1-beta)*g; u = sign(m); theta <- theta - lr*eta_t*u",
        "conventions": ["l2", "lr", "schedule"], "kind": "packed",
        "hyperparameters": [{"name": "beta", "default": 0.9, "min": 0.0, "max": 0.999,
                             "description": "momentum of the averaged gradient"}],
        **EXAMPLE,
    }
    assert bases["adamax"]["kind"] == "torch" and bases["adamax"]["conventions"] == ["l2"]
    names = {o["name"]: o for o in opt["data"]}
    assert {"signum", "signum:l2", "signum:lr", "signum:schedule", "adamax", "adamax:l2"} <= set(names)
    assert "signum:constant" not in names and "adamax:lr" not in names
    assert names["signum:schedule"]["rule"] == (
        "theta <- theta*(1 - eta_t*wd); then m <- beta*m + (1-beta)*g; u = sign(m); theta <- theta - lr*eta_t*u")
    assert {k: names["adamax"][k] for k in ("distribution", "version")} == EXAMPLE


# --- spec validation -------------------------------------------------------------------------------


def test_specs_naming_unknown_or_misused_plugins_are_422_listing_what_is_installed(client):
    def detail(spec):
        r = client.post("/studies", json=spec)
        assert r.status_code == 422, r.text
        return r.json()["detail"]

    assert "(expected one of digits_mlp, digits_mlp_bn, mnist5k_cnn, mnist5k_resnet, cifar10_resnet, wine_mlp)" \
        in detail(plugin_spec(task="tabular"))
    msg = detail(plugin_spec(optimizers=[{"name": "adan"}]))
    assert msg.startswith("optimizers[0].name: unknown optimizer 'adan': unknown base 'adan'; an optimizer is BASE or "
                          "BASE:CONVENTION with BASE one of the installed bases sgd, adam, lion, radam, nadam, "
                          "adafactor, muon, adamax, signum and CONVENTION"), msg
    assert detail(plugin_spec(optimizers=[{"name": "adamax:lr"}])) == (
        "optimizers[0].name: unknown optimizer 'adamax:lr': the plugin base 'adamax' supports only the conventions l2")
    assert detail(plugin_spec(optimizers=[{"name": "signum", "params": {"beta": 2.0}}])) == (
        "optimizers[0]: params.beta: 2 is outside [0, 0.999]")
    assert detail(plugin_spec(optimizers=[{"name": "signum", "params": {"momentum": 0.5}}])) == (
        "optimizers[0]: params.momentum: 'signum' has no hyper-parameter 'momentum' (it has beta)")
    assert detail(plugin_spec(optimizers=[{"name": "adamw", "params": {"beta": 0.5}}])) == (
        "optimizers[0]: params: 'adamw' takes no hyper-parameters (got beta)")
    assert detail(plugin_spec(optimizers=[{"name": "signum", "params": {"beta": True}}])).startswith(
        "optimizers[0].params.beta: ")


def test_a_stored_spec_has_defaults_the_task_defaults_and_the_plugins_it_uses(client):
    spec = plugin_spec(optimizers=[{"name": "signum:schedule"}, {"name": "adamax", "lr": {"min": 0.1, "max": 0.1, "num": 1}},
                                   {"name": "adamw"}])
    r = client.post("/studies", json=spec)
    assert r.status_code == 201, r.text
    study = client.get(f"/studies/{r.json()['id']}").json()
    opts = study["spec"]["optimizers"]
    # signum: the task's lr axis for the base, the rule's wd axis for the convention, beta's default.
    assert opts[0] == {"name": "signum:schedule", "lr": {"min": 1e-3, "max": 1e-1, "num": 4},
                       "wd": {"min": 1e-5, "max": 1e-1, "num": 8}, "params": {"beta": 0.9}}
    assert opts[1]["lr"] == {"min": 0.1, "max": 0.1, "num": 1} and opts[1]["params"] == {"eps": 1e-8}
    assert "params" not in opts[2]
    assert study["plugins"] == {"task:wine_mlp": EXAMPLE, "rule:signum": EXAMPLE, "rule:adamax": EXAMPLE}
    assert study["waiting_reason"] is None
    plan = client.post("/studies?dry_run=true", json=spec).json()  # a dry run names them too
    assert plan["plugins"] == study["plugins"] and plan["spec"]["optimizers"] == opts
    built_in = client.post("/studies", json={"name": "b", "task": "digits_mlp", "optimizers": [{"name": "adamw"}]})
    assert client.get(f"/studies/{built_in.json()['id']}").json()["plugins"] is None


# --- refusals ------------------------------------------------------------------------------------------


def test_broken_plugins_are_refused_at_start_up_naming_their_distribution(tmp_path):
    """A distribution with five broken entry points, visible through PYTHONPATH to a fresh process."""
    pkg = tmp_path / "broken_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "raises.py").write_text("import not_a_module_anywhere\n")
    (pkg / "meta.py").write_text(textwrap.dedent("""
        from service.domain.plugins import RuleInfo, TaskInfo
        NO_IMPL = TaskInfo(name="no_impl", description="d", num_classes=3, epochs=1, batch_size=8, input_shape=(4,))
        NOT_A_TASK = {"name": "not_a_task"}
        RENAMED = TaskInfo(name="other", description="d", num_classes=3, epochs=1, batch_size=8,
                           input_shape=(4,), implementation="x")
        BAD_CONV = RuleInfo(name="bad_conv", title="t", rule="r", reference_convention="l2",
                            conventions=("l2", "decoupled"), lr=(1e-3, 1.0, 8), implementation="m:direction")
        SGD_AGAIN = RuleInfo(name="sgd", title="t", rule="r", reference_convention="l2", conventions=("l2",),
                             lr=(1e-3, 1.0, 8), implementation="m:direction")
    """))
    dist = tmp_path / "broken_plugin-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [decouple_lab.tasks]
        raises = broken_plugin.raises:TASK
        no_impl = broken_plugin.meta:NO_IMPL
        not_a_task = broken_plugin.meta:NOT_A_TASK
        renamed = broken_plugin.meta:RENAMED
        [decouple_lab.update_rules]
        bad_conv = broken_plugin.meta:BAD_CONV
        sgd = broken_plugin.meta:SGD_AGAIN
    """))
    code = ("import json; from service.domain.plugins import registry; r = registry(); "
            "print(json.dumps([r.refused, sorted(r.tasks), sorted(r.rules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    refused, tasks, rules = json.loads(out.stdout)
    where = "of broken-plugin 0.3: "
    assert refused == {
        "task:raises": f"plugin 'raises' {where}import of broken_plugin.raises:TASK failed: "
                       "ModuleNotFoundError: No module named 'not_a_module_anywhere'",
        "task:no_impl": f"plugin 'no_impl' {where}implementation (the module defining load_data and build_model) "
                        "is missing",
        "task:not_a_task": f"plugin 'not_a_task' {where}broken_plugin.meta:NOT_A_TASK is a dict, not a TaskInfo",
        "task:renamed": f"plugin 'renamed' {where}broken_plugin.meta:RENAMED is named 'other', its entry point 'renamed'",
        "rule:bad_conv": f"plugin 'bad_conv' {where}conventions must be a non-empty subset of l2, lr, schedule, "
                         "constant, corrected (unknown: 'decoupled')",
        "rule:sgd": f"plugin 'sgd' {where}the name is already taken (by decouple-lab)",
    }
    assert "wine_mlp" in tasks and "signum" in rules and "bad_conv" not in rules


# --- the claim -----------------------------------------------------------------------------------------


def test_a_worker_without_a_study_plugins_leaves_it_queued_and_says_why(client, engine):
    """On both databases: missing plugin, other version, then a worker that has them claims it."""
    sid = client.post("/studies", json=plugin_spec()).json()["id"]
    built_in = client.post("/studies", json={"name": "b", "task": "digits_mlp", "optimizers": [{"name": "adamw"}],
                                             "priority": 0}).json()["id"]
    needed = {"task:wine_mlp": EXAMPLE, "rule:signum": EXAMPLE, "rule:adamax": EXAMPLE}
    lacking = {"rule:signum": EXAMPLE}
    older = {k: {**v, "version": "0.0.9"} for k, v in needed.items()}

    with session_scope(engine) as s:  # the plugin study is older: first in the queue
        s.get(Study, built_in).created_at += timedelta(seconds=1)
    with session_scope(engine) as s:
        claimed = store.claim_study(s, "w-lacking", 60, installed=lacking)
        assert claimed is not None and claimed.id == built_in  # the next study it can run
    study = client.get(f"/studies/{sid}").json()
    assert study["status"] == "queued" and study["claimed_by"] is None
    assert study["waiting_reason"] == (
        "no worker with the plugins it needs has claimed it (w-lacking: rule adamax from decouple-plugin-example "
        "0.1.0 is not installed; task wine_mlp from decouple-plugin-example 0.1.0 is not installed)")

    with session_scope(engine) as s:
        assert store.claim_study(s, "w-older", 60, installed=older) is None
    assert client.get(f"/studies/{sid}").json()["waiting_reason"] == (
        "no worker with the plugins it needs has claimed it (w-older: rule adamax from decouple-plugin-example "
        "0.1.0: the worker has decouple-plugin-example 0.0.9; rule signum from decouple-plugin-example 0.1.0: "
        "the worker has decouple-plugin-example 0.0.9; task wine_mlp from decouple-plugin-example 0.1.0: "
        "the worker has decouple-plugin-example 0.0.9)")

    with session_scope(engine) as s:
        claimed = store.claim_study(s, "w-has-them", 60, installed={**needed, "task:other": EXAMPLE})
        assert claimed is not None and claimed.id == sid
    study = client.get(f"/studies/{sid}").json()
    assert (study["status"], study["claimed_by"], study["waiting_reason"]) == ("running", "w-has-them", None)


def test_studies_of_built_ins_never_wait_behind_a_window_of_plugin_studies(client, engine, monkeypatch):
    monkeypatch.setattr(store, "CLAIM_WINDOW", 2)
    waiting = [client.post("/studies", json=plugin_spec(name=f"p{i}")).json()["id"] for i in range(3)]
    built_in = client.post("/studies", json={"name": "b", "task": "digits_mlp", "optimizers": [{"name": "adamw"}]})
    with session_scope(engine) as s:
        claimed = store.claim_study(s, "w-bare", 60, installed={})
        assert claimed is not None and claimed.id == built_in.json()["id"]
        assert store.claim_study(s, "w-bare", 60, installed={}) is None
    reasons = [client.get(f"/studies/{sid}").json()["waiting_reason"] for sid in waiting]
    assert [r is not None for r in reasons] == [True, True, False]  # the window's two say why


# --- the image's PLUGINS build argument ----------------------------------------------------------------


def _plugins_run_line() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    start = text.index('RUN if [ -n "$PLUGINS" ]')
    end = text.index("fi\n", start) + 2
    return text[start + len("RUN "):end].replace("\\\n", " ")


def test_the_plugins_build_argument_installs_and_refuses_broken_plugins(tmp_path):
    """The Dockerfile's RUN line as the build's shell runs it, with this environment's pip and python:
    empty does nothing; the example installs and is listed; a refused plugin fails the build."""
    import os
    from pathlib import Path

    from tests.conftest import EXAMPLE_PLUGIN

    line = _plugins_run_line()
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"

    def build(plugins_arg: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=300,
                              env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "PLUGINS": plugins_arg, **env})

    empty = build("")
    assert (empty.returncode, empty.stdout) == (0, "")
    # The example is installed already (tests/conftest.py): reinstalling it from the same folder
    # leaves the environment as it was.
    reinstall = f"--quiet --no-index --no-deps --no-build-isolation -e {EXAMPLE_PLUGIN}"
    example = build(reinstall)
    assert example.returncode == 0, example.stderr
    assert example.stdout.splitlines()[-1] == "plugins: ['rule:adamax', 'rule:signum', 'task:wine_mlp']"
    broken = tmp_path / "broken_plugin-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[decouple_lab.tasks]\ngone = not_there.meta:GONE\n")
    refused = build(reinstall, PYTHONPATH=str(tmp_path))  # the example again, a broken one beside it
    assert refused.returncode != 0
    assert "plugin 'gone' of broken-plugin 0.1: import of not_there.meta:GONE failed" in refused.stderr
