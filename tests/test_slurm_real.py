"""Sweeps on a real single-node SLURM cluster (slurmctld, slurmd, slurmdbd + MariaDB, munged), started for the test
session by :mod:`benchmark.sweeps.testcluster` and stopped at its end.

Skipped, with the command that installs them, where the packages are missing or not root; ``DML_REQUIRE_SLURM=1``
(set by ``.ci/run``) turns that skip into a failure. The jobs are real submitit jobs training tiny runs on the test
dataset of tests/sweep_support.py; tests/test_sweeps.py keeps the fake SLURM for what needs no cluster.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import sweep_support
import torch
import yaml

from benchmark.engine import records
from benchmark.sweeps import testcluster

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # deselect with -m "not slurm"
TERMINAL = {"done", "failed"}
CELL_RESOURCES = {"partition": "low", "cpus": 1, "mem_gb": 2, "time_min": 30, "signal_delay_s": 30}


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def slurm_cluster():
    """The throwaway cluster, up for the whole session; every daemon stopped at its end (also on failure)."""
    required = os.environ.get("DML_REQUIRE_SLURM") == "1"
    problem = testcluster.missing_requirements()
    if problem:
        (pytest.fail if required else pytest.skip)(problem)
    cluster = testcluster.TestCluster()  # its own temporary directory, removed when it stops
    atexit.register(cluster.stop)  # a second stop is a no-op; this one covers an interrupted session
    try:
        cluster.start()
    except testcluster.TestClusterError as err:
        (pytest.fail if required else pytest.skip)(f"the SLURM test cluster did not start: {err}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def real(slurm_cluster, tmp_path_factory):
    """The test dataset for this process and the jobs, SLURM_CONF pointing at the cluster (module-wide)."""
    root = tmp_path_factory.mktemp("real-sweeps")
    mp = pytest.MonkeyPatch()
    sweep_support.sweep_test_env(root, mp)
    for key, value in slurm_cluster.env.items():
        mp.setenv(key, value)
    yield {"root": root, "cluster": slurm_cluster}
    mp.undo()


# ----------------------------------------------------------------------------------------------- helpers
def slurm(*argv: str) -> str:
    """A SLURM client command against the test cluster (SLURM_CONF is in the environment)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


def sacct_fields(job_id: str, *fields: str, steps: bool = False) -> dict[str, dict[str, str]]:
    out = slurm("sacct", "-j", job_id, "--parsable2", "-o", ",".join(["JobID", *fields]), *([] if steps else ["-X"]))
    header, *rows = out.strip().splitlines()
    return {row.split("|")[0]: dict(zip(header.split("|")[1:], row.split("|")[1:], strict=True)) for row in rows}


def release_requeued() -> None:
    """Requeued jobs wait for their BeginTime (cred_expire); start them now, as the issue measured."""
    for line in slurm("squeue", "-h", "-o", "%i %r").splitlines():
        job_id, _, reason = line.partition(" ")
        if reason.strip() == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        release_requeued()
        time.sleep(poll)
    queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; squeue:\n{queue}")


def wait_cells(sweep_dir: Path, timeout: float) -> dict[str, dict]:
    """Rows by seed once every cell is done or failed and no job is left running (its process ending)."""
    from benchmark.sweeps.status import sweep_status

    def settled():  # the queue empty (a pre-empted job is PREEMPTED and COMPLETING for a moment before its requeue)
        if slurm("squeue", "-h", "-o", "%i").split():
            return False
        rows = sweep_status(sweep_dir)
        return all(r["state"] in TERMINAL for r in rows) and {r["cell"].rsplit("=", 1)[1]: r for r in rows}

    rows = wait_until(settled, timeout, f"the cells of {sweep_dir.name}")
    return rows


def write_spec(path: Path, seeds=(0,), resources=None, overrides=(), **extra) -> Path:
    spec = {
        "name": path.stem,
        "cluster": "cpu",
        "resources": {**CELL_RESOURCES, **(resources or {})},
        "overrides": [*sweep_support.TINY, *overrides],
        "grid": {"method": ["proxy_anchor"], "dataset": ["sweepblobs"], "seed": list(seeds)},
        **extra,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def submit(spec: Path, sweep_dir: Path, force: bool = False, **job_env: str) -> int:
    """Submit the sweep; ``job_env`` (e.g. SWEEP_TEST_SAMPLE_DELAY="0.1") is in the environment its jobs inherit."""
    from benchmark.sweeps.submit import main

    os.environ.update(job_env)
    try:
        return main(str(spec), sweep_dir=str(sweep_dir), allow_dirty=True, force=force)
    finally:
        for key in job_env:
            del os.environ[key]


def cells(sweep_dir: Path) -> list[dict]:
    from benchmark.sweeps.manifest import read_manifest

    return sorted(read_manifest(sweep_dir)["cells"].values(), key=lambda c: c["index"])


def our_jobs() -> list[str]:
    """Jobs queued or running (not those completing after a cancel)."""
    return slurm("squeue", "-h", "-t", "PENDING,RUNNING", "-o", "%i").split()


#: One long-enough run shared by the pre-emption and time-limit tests (10 steps an epoch, 2 epochs).
INTERRUPTED = ["train.epochs=2", "train.steps_per_epoch=10"]


@pytest.fixture(scope="module")
def reference(real):
    """A function returning the interrupted runs' config trained uninterrupted in this process (one thread, like
    the jobs), trained at its first call (while a job runs) and kept for the module."""
    kept: list = []

    def train() -> tuple[dict, Path]:
        from benchmark.config import compose_config
        from benchmark.engine.run import run

        if not kept:
            overrides = [*sweep_support.TINY, *INTERRUPTED, "method=proxy_anchor", "dataset=sweepblobs", "seed=0"]
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                kept.append(run(compose_config([*overrides, f"out_dir={real['root'] / 'reference'}"])))
            finally:
                torch.set_num_threads(threads)
            assert kept[0][0]["metrics"]["test"]["recall@1"] < 1.0  # not saturated: equality means something
        return kept[0]

    return train


def assert_same_run(run_dir: Path, reference: tuple[dict, Path]) -> None:
    record, ref_dir = reference
    assert records.read_record(run_dir)["metrics"] == record["metrics"]
    ours = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["encoder"]
    theirs = torch.load(ref_dir / "checkpoints" / "last.pt", weights_only=False)["encoder"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# ----------------------------------------------------------------------------------------------- tests
def test_missing_packages_are_named_with_the_command_that_installs_them(monkeypatch):
    monkeypatch.setattr(testcluster.shutil, "which", lambda name: None)
    monkeypatch.setattr(testcluster.Path, "exists", lambda self: False)
    problem = testcluster.missing_requirements()
    assert problem and "slurmctld" in problem and "apt-get install" in problem
    assert all(package in problem for package in testcluster.PACKAGES.split())


def test_the_cluster_listens_on_loopback_only(slurm_cluster):
    listening = testcluster.listening_addresses(slurm_cluster.pids.values())
    assert len(listening) == 4, listening  # mariadbd, slurmdbd, slurmctld, slurmd (munged: a unix socket)
    assert all(addr.startswith("127.") for addr, _ in listening), listening


def test_sweep_array_per_cell_resources_failed_cells_resubmitted_and_twice_submits_nothing(real, tmp_path, capsys):
    from benchmark.sweeps.status import main as status_main

    spec = write_spec(
        tmp_path / "grid.yaml",
        seeds=(0, 1, 2),
        resources={"time_min": 20},
        overrides=["train.epochs=1"],
        rules=[{"match": {"seed": 2}, "resources": {"time_min": 7, "mem_gb": 1}}],
    )
    sweep_dir = tmp_path / "sweep"
    # Seed 1 raises in its first epoch; seed 2 must still be running when it is cancelled.
    assert submit(spec, sweep_dir, SWEEP_TEST_SAMPLE_DELAY="0.02", SWEEP_TEST_FAIL_SEED="1") == 0
    jobs = [c["jobs"][-1]["job_id"] for c in cells(sweep_dir)]
    array = jobs[0].split("_")[0]
    assert jobs[:2] == [f"{array}_0", f"{array}_1"] and "_" not in jobs[2]  # seeds 0, 1: one array; 2: its own
    queued = dict(line.split("|", 1) for line in slurm("squeue", "-r", "-h", "-o", "%i|%l %m %C").splitlines())
    assert queued == {jobs[0]: "20:00 2G 1", jobs[1]: "20:00 2G 1", jobs[2]: "7:00 1G 1"}  # limit, memory, CPUs

    # Cancel seed 2 once it runs: it is reported failed with SLURM's reason, not submitit's chatter.
    wait_until(lambda: (Path(cells(sweep_dir)[2]["run_dir"]) / "jobs.json").exists(), 120, "seed 2 to start")
    slurm("scancel", jobs[2])
    rows = wait_cells(sweep_dir, 180)
    assert [rows[s]["state"] for s in "012"] == ["done", "failed", "failed"]
    assert "injected failure for seed 1" in rows["1"]["error"] and "RuntimeError" in rows["1"]["log"]
    assert "CANCELLED" in rows["2"]["error"] and "Bypassing signal" not in rows["2"]["error"]
    assert "Bypassing signal" not in (rows["2"]["log"] or "")

    # Submitted again: only the two failed cells go and run to done; `status` reports the sweep done.
    assert submit(spec, sweep_dir) == 0
    last = json.loads((sweep_dir / "manifest.json").read_text())["submissions"][-1]
    assert last["submitted"] == [f"method=proxy_anchor,dataset=sweepblobs,seed={s}" for s in (1, 2)]
    assert last["skipped_complete"] == ["method=proxy_anchor,dataset=sweepblobs,seed=0"]
    assert len(our_jobs()) == 2 and [len(c["jobs"]) for c in cells(sweep_dir)] == [1, 2, 2]
    wait_cells(sweep_dir, 180)
    capsys.readouterr()
    assert status_main(str(sweep_dir)) == 0
    out = capsys.readouterr().out
    assert out.startswith("Sweep grid: 3 done") and out.count("R@1") == 3
    for cell in cells(sweep_dir):
        assert records.is_complete(records.read_record(cell["run_dir"]))

    # A third time: everything is complete, nothing new reaches the queue.
    assert submit(spec, sweep_dir) == 0
    assert "Nothing to submit" in capsys.readouterr().out
    assert len(json.loads((sweep_dir / "manifest.json").read_text())["submissions"]) == 2 and our_jobs() == []


def test_ddp_cell_runs_two_tasks_of_one_job_with_gloo(real, tmp_path):
    spec = write_spec(
        tmp_path / "ddp.yaml", resources={"additional": {"ntasks_per_node": 2}}, overrides=["train.epochs=1"]
    )
    sweep_dir = tmp_path / "sweep"
    assert submit(spec, sweep_dir) == 0
    rows = wait_cells(sweep_dir, 180)
    assert rows["0"]["state"] == "done", rows["0"]
    record = records.read_record(cells(sweep_dir)[0]["run_dir"])
    assert record["distributed"] == {"world_size": 2, "launcher": "slurm", "backend": "gloo"}
    job = cells(sweep_dir)[0]["jobs"][-1]["job_id"]
    steps = sacct_fields(job, "NTasks", "State", steps=True)
    assert steps[f"{job}.0"] == {"NTasks": "2", "State": "COMPLETED"}


def test_preemption_by_a_high_priority_job_checkpoints_requeues_and_ends_as_uninterrupted(real, tmp_path, reference):
    spec = write_spec(tmp_path / "preempt.yaml", overrides=INTERRUPTED)
    sweep_dir = tmp_path / "sweep"
    assert submit(spec, sweep_dir, SWEEP_TEST_SAMPLE_DELAY="0.1", SWEEP_TEST_DELAY_FIRST_START="1") == 0
    cell = cells(sweep_dir)[0]
    run_dir, job = Path(cell["run_dir"]), cell["jobs"][-1]["job_id"]
    wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists(), 150, "the first epoch's checkpoint")
    # Both CPUs in the high-priority partition: SLURM pre-empts the low-priority cell to make room.
    slurm("sbatch", "-p", "high", "-c", "2", "--mem=100M", "-o", str(tmp_path / "high.out"), "--wrap", "true")
    expected = reference()  # trained here meanwhile
    rows = wait_cells(sweep_dir, 240)
    assert rows["0"]["state"] == "done", rows["0"]
    starts = json.loads((run_dir / "jobs.json").read_text())
    assert [s["restart"] for s in starts] == [0, 1]
    err, out = Path(cell["jobs"][-1]["log_err"]).read_text(), Path(cell["jobs"][-1]["log_out"]).read_text()
    assert "this job is preempted" in err
    assert "Stop requested: checkpoint written" in out and "Resuming" in out
    attempts = slurm("sacct", "-j", job, "--duplicates", "-X", "-n", "-o", "State").split()
    assert attempts[0] == "PREEMPTED" and attempts[-1] == "COMPLETED", attempts  # SLURM's own account
    assert_same_run(run_dir, expected)


def test_time_limit_signal_requeues_and_the_run_resumes(real, tmp_path, reference):
    # SLURM signals a job `signal_delay_s` before its time limit; slurmctld checks limits every 30 s. Once the job
    # has installed its handler, its limit is cut so that the signal is due at once and the limit itself is still
    # 75 s or more away (45 s was too tight once on a busy machine: a late signal left too little time to checkpoint
    # and requeue): the signal comes within 30 s, during the (slowed) first start. submitit counts it as a
    # time-out (a 10-minute job), checkpoints and requeues; the requeued job gets its 10 minutes back and finishes.
    spec = write_spec(
        tmp_path / "timeout.yaml",
        resources={"time_min": 10, "signal_delay_s": 180, "max_requeue_timeouts": 3},
        overrides=INTERRUPTED,
    )
    sweep_dir = tmp_path / "sweep"
    assert submit(spec, sweep_dir, SWEEP_TEST_SAMPLE_DELAY="0.4", SWEEP_TEST_DELAY_FIRST_START="1") == 0
    cell = cells(sweep_dir)[0]
    run_dir, job = Path(cell["run_dir"]), cell["jobs"][-1]["job_id"]
    wait_until(lambda: (run_dir / "jobs.json").exists(), 150, "the job to start")
    elapsed = _elapsed_s(job)
    slurm("scontrol", "update", f"JobId={job}", f"TimeLimit={-(-(elapsed + 75) // 60)}")
    wait_until(lambda: slurm("squeue", "-h", "-j", job, "-o", "%T").strip() == "PENDING", 120, "the requeue")
    slurm("scontrol", "update", f"JobId={job}", "TimeLimit=10", "StartTime=now")
    expected = reference()  # trained here meanwhile (or kept from the pre-emption test)
    rows = wait_cells(sweep_dir, 240)
    assert rows["0"]["state"] == "done", rows["0"]
    assert [s["restart"] for s in json.loads((run_dir / "jobs.json").read_text())] == [0, 1]
    assert "this job is timed-out" in Path(cell["jobs"][-1]["log_err"]).read_text()
    assert "Stop requested: checkpoint written" in Path(cell["jobs"][-1]["log_out"]).read_text()
    assert_same_run(run_dir, expected)


def _elapsed_s(job: str) -> int:
    """Seconds the job has been running (squeue's %M: [days-][hours:]minutes:seconds)."""
    text = slurm("squeue", "-h", "-j", job, "-o", "%M").strip()
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds + 86400 * int(days or 0)


def test_unknown_state_when_sacct_cannot_answer_is_never_resubmitted_without_force(real, tmp_path, capsys):
    from benchmark.sweeps.status import sweep_status

    spec = write_spec(tmp_path / "held.yaml", resources={"additional": {"hold": True}})  # stays queued
    sweep_dir = tmp_path / "sweep"
    assert submit(spec, sweep_dir) == 0
    # (sacct lists a job a moment after sbatch answers; until then its cell is unknown too, and held back)
    wait_until(lambda: [r["state"] for r in sweep_status(sweep_dir)] == ["pending"], 30, "sacct to list the job")
    capsys.readouterr()
    assert submit(spec, sweep_dir) == 0  # queued: nothing is submitted twice
    assert "1 queued or running" in capsys.readouterr().out and len(our_jobs()) == 1
    cluster = real["cluster"]
    cluster.stop_daemon("slurmdbd")  # sacct now fails; the job is still queued
    try:
        rows = sweep_status(sweep_dir)
        assert [r["state"] for r in rows] == ["unknown"] and "sacct failed" in rows[0]["error"]
        capsys.readouterr()
        assert submit(spec, sweep_dir) == 1
        assert "--force" in capsys.readouterr().err and len(our_jobs()) == 1  # no duplicate job
        assert submit(spec, sweep_dir, force=True) == 0  # the user's explicit decision
        assert len(our_jobs()) == 2
    finally:
        cluster.start_daemon("slurmdbd")
        slurm("scancel", *our_jobs())
