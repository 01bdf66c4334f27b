"""Every Ray and Ray Tune call the project makes, in one place.

Ray Tune's reporting and configuration API has moved several times (``tune.report`` vs
``session.report``, ``air.RunConfig`` vs ``tune.RunConfig``, ``local_dir`` vs ``storage_path``);
the rest of the code calls only the functions below, so a Ray upgrade touches this file alone.

A local Ray (no ``RAY_ADDRESS``) keeps everything it writes under ``<data dir>/ray``: its temp
and session folders, Tune's results, and the cluster's auth token (Ray 2.60 would otherwise write
``~/.ray/auth_token``); usage statistics are off.

A local Ray listens on loopback only: by default Ray takes this machine's outward address as the
node's and binds its GCS, raylet and worker gRPC ports to every interface, so anyone who can
reach the machine could submit code to it. :func:`_loopback_only` makes Ray treat the node as a
single-machine cluster (its own switch for laptops, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), whose
node address is 127.0.0.1 and whose servers bind to it; the token authentication above stays on.
A Ray the project starts for a cluster (compose's head, ``docker/worker-entrypoint.sh``) must be
reachable from other machines, and relies on that token (``RAY_AUTH_TOKEN``) instead.

One exception, forced by the kernel: Ray puts its Unix sockets in the temp folder, at
``<temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store``, and a Unix socket path may not
exceed 107 bytes. When ``<data dir>/ray/tmp`` is longer than :data:`MAX_TEMP_DIR_CHARS`, Ray is
given a short symbolic link ``/tmp/decouple-ray-<uid>-<hash>`` to it instead: the link is the only
thing outside the data directory, and everything still lands inside it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Set before Ray is imported anywhere in this process (and inherited by its workers).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


#: Variables :func:`_prepare_local_state` set (the user had not): :func:`shutdown` removes them, so
#: a later local Ray with another data directory, or a process started afterwards, never inherits
#: a token path into a data directory that is not its own.
_env_set: set[str] = set()


def _set_env(name: str, value: str) -> None:
    if name in os.environ and name not in _env_set:
        return  # the user's own setting wins
    os.environ[name] = value
    _env_set.add(name)


def _prepare_local_state(state_dir: Path) -> None:
    """Point Ray's auth token at a file under ``state_dir`` instead of ``~/.ray``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    token_path = state_dir / "auth_token"
    if not token_path.exists():
        token_path.write_text(secrets.token_hex(32))
        token_path.chmod(0o600)
    _set_env("RAY_AUTH_MODE", "token")
    _set_env("RAY_AUTH_TOKEN_PATH", str(token_path))


#: Longest temp folder Ray can use: 107 bytes of AF_UNIX path minus the 66 its session folder and
#: socket names may take (``/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.1``).
MAX_TEMP_DIR_CHARS = 107 - 66


def _short_temp_dir(target: Path) -> Path:
    """``target`` itself if Ray's sockets fit under it, else a short symbolic link to it in /tmp.

    The link's name holds the user id and a hash of ``target``, so each data directory gets its
    own and reuses it; a link that exists but is not this user's or points elsewhere is an error
    rather than a place to write to.
    """
    target = target.resolve()
    target.mkdir(parents=True, exist_ok=True)
    if len(str(target)) <= MAX_TEMP_DIR_CHARS:
        return target
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    link = Path("/tmp") / f"decouple-ray-{os.getuid()}-{digest}"
    _remove_dangling_links(Path("/tmp"), f"decouple-ray-{os.getuid()}-")
    try:
        link.symlink_to(target, target_is_directory=True)
    except FileExistsError:
        pass
    st = link.lstat()
    if not (link.is_symlink() and st.st_uid == os.getuid() and Path(os.readlink(link)) == target):
        raise RuntimeError(
            f"{link} exists and is not this user's link to {target}; remove it, or use a shorter "
            f"DECOUPLE_DATA_DIR (Ray's temp folder must be at most {MAX_TEMP_DIR_CHARS} characters)"
        )
    return link


def _remove_dangling_links(folder: Path, prefix: str) -> None:
    """Links of ours whose data directory is gone (a deleted checkout, test folders)."""
    for link in folder.glob(prefix + "*"):
        try:
            if link.is_symlink() and link.lstat().st_uid == os.getuid() and not link.exists():
                link.unlink()
        except OSError:
            pass  # another process removed it first


_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Ray's own value of the switch while :func:`_loopback_only` has it off.
_cluster_default: bool | None = None


def _loopback_only(on: bool) -> None:
    """Make the next local Ray (``on``) a loopback-only single-node cluster, or undo that.

    Ray reads the switch once, at import, into ``ray_constants.ENABLE_RAY_CLUSTER``; it is set
    there for this process and in the environment for the processes Ray starts.
    """
    from ray._private import ray_constants

    global _cluster_default
    if on:
        _set_env(_CLUSTER_SWITCH, "0")
        if _cluster_default is None:
            _cluster_default = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
    elif _cluster_default is not None:
        ray_constants.ENABLE_RAY_CLUSTER, _cluster_default = _cluster_default, None


def _refresh_auth_mode() -> None:
    """Ray caches RAY_AUTH_MODE and the token itself per process; re-read both.

    Without this, a process that started a local Ray once (a test session, a long-lived worker
    restarted onto another data dir) keeps presenting the first cluster's token to the second,
    which refuses it (``InvalidAuthToken``).
    """
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # another Ray version: it reads the environment at init
        return
    if os.environ.get("RAY_AUTH_MODE") == "token":
        _enable_token_auth()
    AuthenticationTokenLoader.instance().reset_cache()


#: Whether this process started the Ray it is connected to (its trials share this machine's files).
_local = False


def ensure_ray(address: str | None, state_dir: Path, *, num_cpus: int | None = None) -> dict[str, float]:
    """Connect to the cluster at ``address``, or start a local one; return its resources.

    Idempotent: a process already connected keeps its connection.
    """
    global _local
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            _prepare_local_state(state_dir)
            _refresh_auth_mode()
            _loopback_only(True)
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _temp_dir=str(_short_temp_dir(state_dir / "tmp")),
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            _local = True
    return cluster_resources()


def is_local() -> bool:
    """True when this process started its Ray: trials see the same file system and settings."""
    return _local


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def shutdown() -> None:
    global _local
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if _local:
        _loopback_only(False)
    _local = False
    for name in _env_set:
        os.environ.pop(name, None)
    _env_set.clear()


def report(metrics: dict[str, Any]) -> None:
    """Report metrics from inside a trainable (Ray >= 2.7 spelling)."""
    from ray import tune

    tune.report(metrics)


@dataclass
class TrialOutcome:
    """What Ray Tune says of one trial after the experiment: its config and its error, if any."""

    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None


def run_trials(
    trainable: Callable[[dict[str, Any]], None],
    configs: Sequence[dict[str, Any]],
    *,
    name: str,
    storage_dir: Path,
    resources: dict[str, float],
    max_failures: int = 2,
    max_concurrent: int | None = None,
    constants: dict[str, Any] | None = None,
) -> list[TrialOutcome]:
    """Run one Tune experiment with one trial per element of ``configs``.

    ``trainable`` is a plain function of its config (it may call :func:`report`). A trial that
    raises is retried up to ``max_failures`` times; after that its error comes back here rather
    than as an exception, so one bad block cannot sink a whole study. ``constants`` reach the
    trainable as keyword arguments through Ray's object store, not through the config, so they
    never appear in trial names or in the ``params.json`` Tune writes (a database URL may hold a
    password).
    """
    from ray import tune

    if not configs:
        return []
    storage_dir.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, **(constants or {})), resources),
        param_space={"block": tune.grid_search(list(configs))},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            max_concurrent_trials=max_concurrent,
            trial_name_creator=lambda t: t.trial_id,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=_run_config(name, storage_dir, max_failures),
    )
    return _outcomes(tuner.fit())


def _run_config(name: str, storage_dir: Path, max_failures: int):
    """Where an experiment keeps its files (under the data dir), its retries, no console noise."""
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=str(storage_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=max_failures),
        verbose=0,
        log_to_file=False,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )


def _outcomes(results) -> list[TrialOutcome]:
    """Tune's results as outcomes: each trial's block, last metrics and error (as text)."""
    return [
        TrialOutcome(
            config=dict(result.config.get("block", {})),
            metrics=dict(result.metrics or {}),
            error=None if result.error is None else f"{type(result.error).__name__}: {result.error}",
        )
        for result in results
    ]


#: What a block source's ``next_block()`` returns when every block has been handed out.
DONE = "done"


class BlockSource:
    """Blocks handed to :func:`run_dynamic` one at a time, as Ray slots free up.

    ``next_block()`` returns a config, None (nothing yet: a block still running will make more
    when it completes) or :data:`DONE`; ``block_done(config, metrics, error)`` is called once per
    block when it has finished, after Ray's retries (``error`` True: it failed for good).
    """

    def next_block(self) -> dict[str, Any] | str | None:
        raise NotImplementedError

    def block_done(self, config: dict[str, Any], metrics: dict[str, Any] | None, error: bool) -> None:
        raise NotImplementedError


_searcher_class = None


def _source_searcher(source: BlockSource):
    """A Tune ``Searcher`` that asks ``source`` for each next trial's config (made once, lazily:
    Ray is imported only where it runs)."""
    global _searcher_class
    if _searcher_class is None:
        from ray.tune.search import Searcher

        class SourceSearcher(Searcher):
            def __init__(self, source: BlockSource) -> None:
                super().__init__()
                self._source = source
                self._configs: dict[str, dict[str, Any]] = {}

            def suggest(self, trial_id: str):
                config = self._source.next_block()
                if config == DONE:
                    return Searcher.FINISHED
                if config is None:
                    return None
                self._configs[trial_id] = config
                return {"block": config}

            def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
                config = self._configs.pop(trial_id, None)
                if config is not None:
                    self._source.block_done(config, result, error)

            def save_to_dir(self, *args, **kwargs) -> None:
                pass  # the study database is the state a resumed study starts from

            def __getstate__(self):  # Tune pickles its config; the source holds a database engine
                return {**self.__dict__, "_source": None}

        _searcher_class = SourceSearcher
    return _searcher_class(source)


def run_dynamic(
    trainable: Callable[[dict[str, Any]], None],
    source: BlockSource,
    *,
    name: str,
    storage_dir: Path,
    resources: dict[str, float],
    slots: int,
    max_failures: int = 2,
    constants: dict[str, Any] | None = None,
) -> list[TrialOutcome]:
    """Run one Tune experiment whose trials ``source`` hands out while it runs.

    Unlike :func:`run_trials` the configs need not be known in advance: Tune asks the source
    (through a ``Searcher``) for the next config each time a slot is free, and tells it when a
    block has finished, so work that depends on earlier results (an optimizer's grid, placed by
    its pilot) starts as soon as those results exist, while the other slots keep training.
    At most ``slots`` trials are live (running or waiting for a slot), so every block is decided
    as late as possible, and Tune starts ``slots`` processes at once (a custom searcher otherwise
    gets one pending trial at a time, and the second process starts only once the first runs).
    Retries, errors and ``constants`` as in :func:`run_trials`.
    """
    from ray import tune

    storage_dir.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, **(constants or {})), resources),
        tune_config=tune.TuneConfig(
            search_alg=_source_searcher(source),
            num_samples=-1,  # until the source says DONE
            max_concurrent_trials=max(1, int(slots)),
            reuse_actors=True,
            trial_name_creator=lambda t: t.trial_id,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=_run_config(name, storage_dir, max_failures),
    )
    return _outcomes(tuner.fit())


def block_resources(resources: dict[str, float], gpus_per_block: float | None = None) -> dict[str, float]:
    """Resources one packed block asks for: a GPU (or a fraction) where the cluster has GPUs."""
    if resources.get("GPU", 0) > 0:
        return {"cpu": 1, "gpu": gpus_per_block if gpus_per_block else 1.0}
    return {"cpu": 1}
