"""Prefect flows over the DVC pipeline: the whole DAG, train-and-evaluate a set
of lambdas, evaluate the newest checkpoints.

How DVC's records stay true: every task runs ``dvc --wait-for-lock repro
--single-item <stage>@<item>`` for one item of ``dvc.yaml`` (``train@mbt2018-mean-0.0018``),
and the flow submits an item only after the items it depends on (the edges of
DVC's own stage graph). So DVC alone decides whether an item is stale, runs
its command (the same ``stages/*.py`` entry point ``dvc repro`` runs), restores
it from the run cache, and writes its entry of ``dvc.lock``: a flow run leaves
the repository as ``dvc repro`` would, and no stage logic exists twice.

Why this works concurrently in one workspace: ``dvc repro`` holds the repository
lock (``.dvc/tmp/lock``) while it reads the pipeline, and releases it while the
stage command runs (``dvc.stage.run``: ``unlocked_repo(cmd_run)``), holding
instead per-path read/write locks (``.dvc/tmp/rwlock``) on that item's deps
and outs. Items of one matrix share their deps for reading and write disjoint
outs, so their commands run at the same time; DVC serializes the short parts
(status, hashing the outs, updating ``dvc.lock`` in place with a fresh read).
``--wait-for-lock`` makes each process wait for the repository lock instead
of failing after 3 s (without it, re-taking the lock after a long command
fails when another process holds it: DVC PR 8118). The alternative, calling
the stage functions here and ``dvc commit`` afterwards, would skip DVC's
staleness check and run cache, and trust this module to list every out.

Retries: none here. Downloads retry inside the stage command, once, with one
policy (``licbench.data.download``: backoff, and each attempt resumes where the
last stopped); a command that still fails for a reason that may pass exits 75
(``licbench.entry.EXIT_TRANSIENT``), and its task fails with
``StageFailed.transient`` set: the source is down for now, try the flow later.
Retrying the task as well would multiply the waits (Prefect's attempts times
the download's) for no new chance. A bad input (a corrupt image, a checksum
mismatch, a NaN loss) exits 1.

Concurrency: stage items run ``prefect.workers`` at a time (default: one per
GPU, each task pinned to its GPU by ``CUDA_VISIBLE_DEVICES``; on the CPU
``min(4, cores)``), each with ``cores // workers`` threads
(``OMP_NUM_THREADS``), on a thread pool, or on the Dask cluster at
``LICBENCH_DASK_ADDRESS`` / ``prefect.dask_address`` (the workers must see the
repository at the same path).

MLflow: the flow passes its flow run id to the stage commands
(``LICBENCH_PREFECT_FLOW_RUN_ID``), which tag their runs ``prefect.flow_run_id``
(``licbench.tracking``, which also makes a fresh SQLite store safe for stages
that start at once).
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run as current_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from .entry import EXIT_TRANSIENT
from .errors import ConfigError, LicbenchError
from .config import Params, PrefectConfig, load_params
from .tracking import FLOW_RUN_ENV

DASK_ADDRESS_ENV = "LICBENCH_DASK_ADDRESS"


class StageFailed(LicbenchError):
    """``dvc repro`` of one stage item failed; ``transient`` when its command
    exited with EXIT_TRANSIENT (worth trying again later)."""

    def __init__(self, item: str, message: str, exit_code: int | None):
        super().__init__(f"{item}: {message}")
        self.item = item
        self.exit_code = exit_code
        self.transient = exit_code == EXIT_TRANSIENT


# ---------------------------------------------------------------- the DVC side


def find_repo(start: str | os.PathLike | None = None) -> Path:
    """The DVC repository at or above ``start`` (default: the working directory)."""
    path = Path(start or os.getcwd()).resolve()
    for candidate in (path, *path.parents):
        if (candidate / "dvc.yaml").is_file() and (candidate / ".dvc").is_dir():
            return candidate
    raise ConfigError(f"{path}: not inside a DVC repository (no dvc.yaml and .dvc/ above it)")


def stage_graph(repo: str | os.PathLike) -> dict[str, list[str]]:
    """Every stage item of ``dvc.yaml`` -> the items it depends on (DVC's own
    graph, as ``dvc dag`` draws it), upstream items first, otherwise in
    ``dvc stage list`` order."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges: stage -> the stages it depends on
        upstream = {target(s, repo): sorted(target(d, repo) for d in graph.successors(s))
                    for s in dvc_repo.index.stages}
    ordered: dict[str, list[str]] = {}
    while len(ordered) < len(upstream):
        ready = [i for i, deps in upstream.items()
                 if i not in ordered and all(d in ordered for d in deps)]
        if not ready:
            raise ConfigError(f"dvc.yaml: the stages {sorted(set(upstream) - set(ordered))} form a cycle")
        ordered.update((i, upstream[i]) for i in ready)
    return ordered


def stage_paths(repo: str | os.PathLike) -> dict[str, tuple[list[str], list[str]]]:
    """Every stage item -> (its deps, its outs), paths relative to the repository."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return {target(s, repo): ([d.def_path for d in s.deps], [o.def_path for o in s.outs])
                for s in dvc_repo.index.stages}


def target(stage, repo: str | os.PathLike) -> str:
    """How `dvc repro` run in ``repo`` names a stage: ``train@<item>`` for
    the root dvc.yaml, ``<file>:<name>`` for another file."""
    file = os.path.relpath(stage.path, repo)
    name = getattr(stage, "name", None)
    if name is None:
        return file
    return name if file == "dvc.yaml" else f"{file}:{name}"


def upstream_closure(graph: dict[str, list[str]], targets: list[str],
                     cut: tuple[str, ...] = ()) -> list[str]:
    """``targets`` and everything they depend on, in the graph's order; stages
    named in ``cut`` (and what only they need) are left out."""
    keep: set[str] = set()
    todo = list(targets)
    while todo:
        item = todo.pop()
        if item in keep or item.split("@")[0] in cut:
            continue
        keep.add(item)
        todo.extend(graph[item])
    return [item for item in graph if item in keep]


def select(graph: dict[str, list[str]], targets: list[str] | None) -> list[str]:
    """Stage items named by ``targets``: an item (``train@mbt2018-mean-0.0018``)
    or a stage (``train``: all its items); all items when None."""
    if not targets:
        return list(graph)
    chosen = []
    for target in targets:
        items = [i for i in graph if i == target or i.split("@")[0] == target]
        if not items:
            raise ConfigError(f"no stage or stage item '{target}' in dvc.yaml; "
                              f"`dvc stage list` names them ({', '.join(graph)})")
        chosen += items
    return chosen


def lambda_items(graph: dict[str, list[str]], params: Params, lambdas: list[float],
                 archs: list[str] | None = None) -> list[str]:
    """The train and evaluate items of these lambdas (of ``archs``, default all).

    Items come from ``params.yaml``'s matrix, so a lambda must be listed there
    (DVC records a result only for the stages dvc.yaml declares)."""
    listed = [str(v) for v in params.lambdas]
    archs = archs or list(params.archs)
    datasets = params.evaluate.datasets
    items = []
    for lmbda in lambdas:
        match = [v for v in listed if float(v) == float(lmbda)]
        if not match:
            raise ConfigError(f"lambda {lmbda} is not in params.yaml lambdas {listed}: "
                              "add it there, so that DVC records its model")
        for arch in archs:
            items.append(f"train@{arch}-{match[0]}")
            items += [f"evaluate@{arch}-{match[0]}-{d}" for d in datasets]
    missing = [i for i in items if i not in graph]
    if missing:
        raise ConfigError(f"no stage item(s) {missing} in dvc.yaml (`dvc stage list`)")
    return items


# ---------------------------------------------------------------- settings


def flow_settings(cfg: PrefectConfig) -> dict:
    """``params.yaml``'s ``prefect`` section, resolved for this machine:
    LICBENCH_DASK_ADDRESS wins over ``prefect.dask_address``; ``workers: null``
    is one per GPU, or min(4, CPU cores) without one."""
    settings = cfg.model_dump()
    settings["dask_address"] = os.environ.get(DASK_ADDRESS_ENV) or cfg.dask_address
    cores = os.cpu_count() or 1
    if cfg.workers is None:
        gpus = len(visible_gpus())
        settings["workers"] = gpus if gpus else min(4, cores)
    settings["threads_per_task"] = max(1, cores // settings["workers"])
    return settings


def task_runner(settings: dict):
    """Dask at ``settings['dask_address']`` when set, else a local thread pool."""
    if settings["dask_address"]:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=settings["dask_address"])
    return ThreadPoolTaskRunner(max_workers=settings["workers"])


_gpus: list[str] | None = None


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    global _gpus
    if _gpus is None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        named = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        _gpus = named[:count] if named else [str(i) for i in range(count)]
    return _gpus


_slots: queue.Queue | None = None
_slots_lock = threading.Lock()


def take_slot(workers: int) -> int:
    """One of ``workers`` slots of this process (waits for a free one): a task
    holding slot i uses GPU i, so two tasks never share a GPU."""
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = queue.Queue()
            for i in range(workers):
                _slots.put(i)
    return _slots.get()


def give_slot(slot: int) -> None:
    _slots.put(slot)


# ---------------------------------------------------------------- tasks


def repro_item(repo: str, item: str, env: dict[str, str]) -> str:
    """``dvc --wait-for-lock repro --single-item <item>``; DVC's output, or StageFailed."""
    bindir = Path(sys.executable).parent
    dvc = bindir / "dvc"
    cmd = [str(dvc) if dvc.exists() else "dvc", "--wait-for-lock", "repro", "--single-item", item]
    env = {**os.environ, **env, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout
    # DVC: "ERROR: failed to reproduce '<item>': failed to run: <cmd>, exited with <n>"
    codes = re.findall(r"exited with (-?\d+)", proc.stderr)
    exit_code = int(codes[-1]) if codes else None
    errors = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "ERROR:"))]
    message = "\n".join(errors) or proc.stderr.strip()[-2000:] or f"dvc exited with {proc.returncode}"
    raise StageFailed(item, message, exit_code)


def dask_worker_name() -> str | None:
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:
        return None


@task
def stage_item(repo: str, item: str, settings: dict, flow_run_id: str | None) -> dict:
    """Reproduce one stage item; what ran where and when."""
    logger = get_run_logger()
    slot = take_slot(settings["workers"])
    try:
        threads = str(settings["threads_per_task"])
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        gpus = visible_gpus()
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        if flow_run_id:
            env[FLOW_RUN_ENV] = flow_run_id
        start = time.time()
        out = repro_item(repo, item, env)
        end = time.time()
    finally:
        give_slot(slot)
    if f"Running stage '{item}'" in out:
        outcome = "ran"
    elif "is cached - skipping run" in out:
        outcome = "restored from the run cache"
    else:
        outcome = "up to date"
    logger.info("%s: %s in %.1f s (slot %d, %s threads%s)", item, outcome, end - start, slot,
                threads, f", GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else "")
    return {"item": item, "outcome": outcome, "start": start, "end": end, "slot": slot,
            "threads": int(threads), "gpu": env.get("CUDA_VISIBLE_DEVICES"),
            "host": socket.gethostname(), "pid": os.getpid(), "dask_worker": dask_worker_name()}


def item_task(item: str):
    """``stage_item`` named after the item."""
    return stage_item.with_options(name=item.split("@")[0], task_run_name=item)


@flow(name="licbench-stage-items")
def stage_items(repo: str, items: list[str], upstream: dict[str, list[str]], settings: dict,
                flow_run_id: str | None = None) -> list[dict]:
    """Run ``items`` (upstream first), each once its upstream items in this run
    succeeded; independent items at the same time."""
    logger = get_run_logger()
    futures = {}
    for item in items:
        wait_for = [futures[u] for u in upstream[item] if u in futures]
        futures[item] = item_task(item).submit(repo, item, settings, flow_run_id,
                                                        wait_for=wait_for)
    results, failures = [], []
    for item, future in futures.items():
        future.wait()
        state = future.state
        if state.is_completed():
            results.append(future.result())
        elif state.is_failed():
            failures.append(item)
    if failures:
        # The first failure (in DAG order) is the cause; later items did not run.
        futures[failures[0]].result()
    not_run = [i for i in items if i not in {r["item"] for r in results}]
    if not_run:
        raise RuntimeError(f"stage items that did not run: {not_run}")
    origin = min((r["start"] for r in results), default=0.0)
    for r in results:
        logger.info("%-40s %-28s %.1f-%.1f s  %s", r["item"], r["outcome"], r["start"] - origin,
                    r["end"] - origin, f"Dask worker {r['dask_worker']}" if r["dask_worker"] else f"pid {r['pid']}")
    return results


def run_items(repo: Path, graph: dict[str, list[str]], items: list[str]) -> list[dict]:
    """``stage_items`` on the task runner params.yaml (or the environment) asks for."""
    settings = flow_settings(load_params(repo / "params.yaml").prefect)
    runner = task_runner(settings)
    get_run_logger().info("%d stage item(s) on %s: %s", len(items), type(runner).__name__, ", ".join(items))
    return stage_items.with_options(task_runner=runner)(
        str(repo), items, {i: graph[i] for i in items}, settings, current_flow_run.id)


# ---------------------------------------------------------------- flows


@flow(name="licbench-dag")
def dag(targets: list[str] | None = None, repo: str | None = None) -> list[dict]:
    """``dvc repro [targets]``: the named stages or items (default: all) and
    everything upstream of them, independent items concurrently."""
    root = find_repo(repo)
    graph = stage_graph(root)
    return run_items(root, graph, upstream_closure(graph, select(graph, targets)))


@flow(name="licbench-train-evaluate")
def train_evaluate(lambdas: list[float] | None = None, archs: list[str] | None = None,
                   repo: str | None = None) -> list[dict]:
    """Train and evaluate one model per lambda (default: every lambda of
    params.yaml), the trainings concurrently, after the datasets they need."""
    root = find_repo(repo)
    graph = stage_graph(root)
    params = load_params(root / "params.yaml")
    targets = lambda_items(graph, params, lambdas or params.lambdas, archs)
    return run_items(root, graph, upstream_closure(graph, targets))


@flow(name="licbench-evaluate-newest")
def evaluate_newest(repo: str | None = None) -> list[dict]:
    """Evaluate every checkpoint that exists and is newer than its evaluation
    (trained by hand, by torchrun, by another flow: ``dvc status`` knows), then
    the reports. Trains nothing: an item whose checkpoint is missing is skipped."""
    logger = get_run_logger()
    root = find_repo(repo)
    graph = stage_graph(root)
    paths = stage_paths(root)
    targets, skipped = [], []
    for item in graph:
        if item.startswith("evaluate@"):
            trained = {o for u in graph[item] if u.startswith("train@") for o in paths[u][1]}
            checkpoints = [d for d in paths[item][0] if d in trained]
            (targets if all((root / c).exists() for c in checkpoints) else skipped).append(item)
    if skipped:
        logger.warning("no checkpoint yet, not evaluated: %s", ", ".join(skipped))
    # A report summarises every model of its set: only when all of them are there.
    evaluated = set(targets)
    for item in graph:
        if item.startswith("report@") and all(u in evaluated for u in graph[item]
                                              if u.startswith("evaluate@")):
            targets.append(item)
    return run_items(root, graph, upstream_closure(graph, targets, cut=("train",)))
