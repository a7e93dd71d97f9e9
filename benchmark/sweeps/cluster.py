"""Everything the suite knows about SLURM, in one place: cluster profiles, resources → sbatch parameters, and
whether this process runs inside a job.

Profiles live in ``sweeps/clusters.yaml`` (or the file named by ``$BENCHMARK_CLUSTERS``). A profile is a set of
resources; a sweep spec or a single run picks one (``cluster: NAME`` / ``cluster=NAME``) and may override any field.
Submission itself goes through submitit's :class:`~submitit.SlurmExecutor`; this module only translates (ranks inside
a job are read by :mod:`benchmark.engine.distributed`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from benchmark.engine.records import REPO_ROOT
from benchmark.registry import UnknownNameError, suggest

CLUSTERS_FILE = REPO_ROOT / "sweeps" / "clusters.yaml"

#: Every resource field a profile, a spec or a per-cell rule may set, with the value used when none does.
RESOURCE_DEFAULTS: dict[str, Any] = {
    "partition": None,
    "account": None,
    "qos": None,
    "constraint": None,
    "gpus": 1,  # GPUs on one node; more than one trains with DDP, one process per GPU
    "cpus": 8,  # CPUs per process (data-loader workers + 1)
    "mem_gb": 64,
    "time_min": 24 * 60,
    "array_parallelism": 64,  # array tasks running at once
    "signal_delay_s": 180,  # SLURM sends the pre-emption signal this long before the time limit
    "max_requeue_timeouts": 5,  # requeues after hitting the time limit (pre-emptions are not counted)
    "setup": [],  # shell lines run before the job (module load, source a venv, export ...)
    "additional": {},  # any other sbatch flag, e.g. {"mail-type": "END", "exclude": "node12"}
}


class ClusterError(ValueError):
    """A cluster profile or resource request that cannot be used."""


def clusters_file() -> Path:
    return Path(os.environ.get("BENCHMARK_CLUSTERS", CLUSTERS_FILE))


def load_profiles(path: Path | None = None) -> dict[str, Any]:
    """The profiles file: ``{"default": NAME, "profiles": {NAME: {field: value}}}``."""
    path = path or clusters_file()
    if not path.exists():
        raise ClusterError(
            f"Cluster profiles file {path} is missing. Copy sweeps/clusters.yaml from the repository "
            "or point $BENCHMARK_CLUSTERS at your site's profiles."
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data.get("profiles"), dict):
        raise ClusterError(f"{path} must hold a 'profiles:' mapping of profile name to resources.")
    return data


def check_resources(resources: dict[str, Any], where: str) -> None:
    unknown = [k for k in resources if k not in RESOURCE_DEFAULTS]
    if unknown:
        raise ClusterError(
            f"{where}: unknown resource field(s) {unknown}. "
            + suggest(unknown[0], RESOURCE_DEFAULTS, "resource field").split(". ", 1)[1]
        )


def resolve_resources(
    profile: str | None = None, *overrides: dict[str, Any] | None, profiles: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults ← the profile (and the profiles it ``extends``) ← each override mapping, in order."""
    data = profiles if profiles is not None else load_profiles()
    table = data["profiles"]
    name = profile or data.get("default")
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    while name:
        if name not in table:
            raise UnknownNameError(suggest(name, table, f"cluster profile (in {clusters_file()})"))
        if name in seen:
            raise ClusterError(f"Cluster profile '{name}' extends itself (through {sorted(seen)}).")
        seen.add(name)
        entry = dict(table[name] or {})
        name = entry.pop("extends", None)
        check_resources(entry, f"cluster profile in {clusters_file()}")
        chain.insert(0, entry)
    resources = {
        k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
        for k, v in RESOURCE_DEFAULTS.items()
    }
    for layer in [*chain, *(o for o in overrides if o)]:
        check_resources(layer, "resources")
        for key, value in layer.items():
            resources[key] = {**resources[key], **value} if key == "additional" else value
    return resources


def slurm_parameters(resources: dict[str, Any], job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters for ``resources`` (one task per GPU on one node)."""
    gpus = int(resources["gpus"] or 0)
    setup = [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}", *resources["setup"]]
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": int(resources["time_min"]),
        "nodes": 1,
        "ntasks_per_node": max(1, gpus),
        "cpus_per_task": int(resources["cpus"]),
        "mem": f"{int(resources['mem_gb'])}GB" if resources["mem_gb"] else None,
        "signal_delay_s": int(resources["signal_delay_s"]),
        "array_parallelism": int(resources["array_parallelism"]),
        "setup": setup,
        "additional_parameters": dict(resources["additional"]),
    }
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "account", "qos", "constraint"):
        if resources[key]:
            params[key] = resources[key]
    return {k: v for k, v in params.items() if v is not None}


def submitit_command(folder: Path) -> str:
    """The command submitit's sbatch script runs (its own job runner, unpickling the job callable)."""
    return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(resources: dict[str, Any], folder: Path, job_name: str, array_size: int | None) -> str:
    """The sbatch script submitit will write for these resources (for ``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's own generator, so the preview is exact

    return _make_sbatch_string(
        command=submitit_command(folder),
        folder=folder,
        map_count=array_size if array_size and array_size > 1 else None,
        **slurm_parameters(resources, job_name),
    )


def make_executor(folder: Path, resources: dict[str, Any], job_name: str):
    """A submitit ``SlurmExecutor`` configured for ``resources`` (needs ``sbatch``/``srun`` on PATH)."""
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(resources["max_requeue_timeouts"]))
    except RuntimeError as err:
        raise ClusterError(
            f"{err} SLURM's commands (sbatch, srun) are not on PATH on this machine: submit from a "
            "login node, or run the sweep here with --local."
        ) from None
    executor.update_parameters(**slurm_parameters(resources, job_name))
    return executor


def in_slurm_allocation() -> bool:
    """Whether this process runs inside a SLURM job (a batch script, ``srun`` or ``salloc``)."""
    return bool(os.environ.get("SLURM_JOB_ID"))
