"""Reliability, take 3 (issue 23, items 1-7): no hang, no overwritten file, no silent wrong result.

Each case runs as a user runs it: ``python -m benchmark`` in a subprocess where processes matter (a hang, signals,
locks), else ``benchmark.cli.main`` in this process (exit status and stderr; an exception escaping it would be a
traceback). The full disk is a real tmpfs of 2 MB.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from benchmark.cli import main as cli_main
from benchmark.config import compose_config
from benchmark.engine import records
from benchmark.engine.trainer import Trainer
from tests import miniature

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """``python -m benchmark ARGS`` in this process: its exit status and stderr."""
    capsys.readouterr()
    rc = cli_main(args)
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


#: A CUB-style run small enough for a CPU: the real reader, a random-init resnet10t at 16 px.
CUB_RUN = [
    "dataset=cub",
    "dataset.strict=false",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "backbone.freeze_bn=false",
    "data.image_size=16",
    "train.epochs=1",
    "train.batch_size=8",
    "train.m_per_class=2",
    "train.steps_per_epoch=2",
    "train.progress=false",
    "eval.selection=last",
    "eval.kmeans_restarts=1",
    "device=cpu",
]


# ----------------------------------------------------------------------------- 1. an unreadable image: no hang
def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (its data is one tiny row): a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")
    )


def truncated_jpeg(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 3]


@pytest.mark.parametrize("damage", ["truncated-jpeg", "decompression-bomb"])
def test_a_run_with_an_unreadable_image_exits_with_one_line_at_the_default_num_workers(tmp_path, damage):
    """Every child process ends when its parent does: the DataLoader workers (data.num_workers left at its default,
    2) are shut down when the error ends the evaluation, and the run exits 2 instead of waiting on them forever."""
    assert compose_config([]).data.num_workers > 0  # the default loads in worker processes
    base = miniature.make_cub(tmp_path / "cub", per_class=2)
    bad = sorted((base / "images").glob("150.*/*.jpg"))[0]  # a test class: every test image is read
    bad.write_bytes(truncated_jpeg(bad) if damage == "truncated-jpeg" else bomb_png())
    command = [PYTHON, "-m", "benchmark", "run", *CUB_RUN, f"dataset.root={tmp_path / 'cub'}"]
    command.append(f"out_dir={tmp_path / 'runs'}")
    try:
        done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not exit after the unreadable image (its DataLoader workers kept it alive)")
    assert done.returncode == 2, done.stderr[-2000:]
    line = assert_one_line_error(done.returncode, done.stderr, f"Cannot read image {bad}")
    assert "DecompressionBombError" not in done.stderr.replace(line, "")
    if damage == "decompression-bomb":
        assert "claims more pixels" in line
    (record,) = (tmp_path / "runs").rglob("record.json")
    assert json.loads(record.read_text())["status"] == "failed"
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "runs")], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "worker processes outlived the run"


# ----------------------------------------------------------------------------- 4. a real full disk
@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 2 MB tmpfs (``mount -t tmpfs -o size=2m``), unmounted afterwards."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            "mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN; "
            f"mount said: {(done.stderr or done.stdout).strip()}), so a real full disk cannot be made"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_gives_one_line_marks_the_record_failed_and_leaves_no_temporary(
    tiny_overrides, small_tmpfs, capsys
):
    """torch reports a full disk as RuntimeError ([enforce fail at inline_container.cc]), not OSError: still one
    line naming the checkpoint, a failed record, and no ``*.tmp`` left filling the disk."""
    overrides = [*[o for o in tiny_overrides if not o.startswith("out_dir=")], f"out_dir={small_tmpfs / 'runs'}"]
    rc, err = run_cli(["run", *overrides], capsys)
    run_dir = Trainer(compose_config(overrides)).run_dir
    line = assert_one_line_error(rc, err, "Could not write checkpoint", str(run_dir / "checkpoints"), "resumes")
    assert "MB free there" in line
    record = records.read_record(run_dir)
    assert record["status"] == "failed" and "Could not write checkpoint" in record["error"]
    assert not list((run_dir / "checkpoints").glob("*.tmp")), "a temporary checkpoint was left on the full disk"


# ----------------------------------------------------------------------------- 3. user-supplied names stay inside
@pytest.mark.parametrize("name", ["{tmp}/elsewhere", "../../x", "..", "a/b", "x" * 5000, "bad\nname"])
def test_run_name_is_one_directory_name_inside_out_dir(tiny_overrides, tmp_path, monkeypatch, capsys, name):
    name = name.replace("{tmp}", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    rc, err = run_cli(["run", *tiny_overrides, f"run_name={name}"], capsys)
    assert_one_line_error(rc, err, "run_name=", "one directory inside out_dir")
    assert len(err) < 600
    assert tree(tmp_path) == before and not (tmp_path / "elsewhere").exists()


def test_a_sweep_name_that_is_a_path_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "escape.yaml"
    spec.write_text("name: ../../outside\ngrid: {method: [proxy_anchor]}\n")
    rc, err = run_cli(["sweep", str(spec), "--dry-run"], capsys)
    assert_one_line_error(rc, err, "name='../../outside'", "--sweep-dir")
    assert not (tmp_path.parent.parent / "outside").exists()


# ----------------------------------------------------------------------------- 2. the leaderboard overwrites nothing
def committed_leaderboard_copy(root: Path) -> Path:
    """A copy of the committed leaderboard/ (its tables and figures, not its records) in a repository-like root."""
    out = root / "leaderboard"
    (out / "figures").mkdir(parents=True)
    for name in ("README.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.html", "runs.csv"):
        (out / name).write_bytes((REPO / "leaderboard" / name).read_bytes())
    for figure in (REPO / "leaderboard" / "figures").glob("*.png"):
        (out / "figures" / figure.name).write_bytes(figure.read_bytes())
    (root / "runs").mkdir()
    return out


def test_leaderboard_without_arguments_from_the_repository_root_writes_nothing(tmp_path):
    out = committed_leaderboard_copy(tmp_path)
    before = tree(tmp_path)
    done = subprocess.run(
        [PYTHON, "-m", "benchmark", "leaderboard"], env=env(), capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2 and "--out" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert tree(tmp_path) == before and (out / "figures").is_dir()


def test_a_build_replaces_only_its_own_unchanged_files_without_force(tmp_path, monkeypatch, capsys):
    out = committed_leaderboard_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = tree(out)
    build = ["leaderboard", "runs", "--no-reported"]
    rc, err = run_cli([*build, "--out", "leaderboard"], capsys)
    line = assert_one_line_error(rc, err, "--out leaderboard", "README.md", "Nothing was written", "--force")
    assert "figures/" in line  # the committed figures it would delete are named too
    assert tree(out) == before
    # Its own output, unchanged, may be rebuilt; once a user edits a file, it is theirs.
    assert run_cli([*build, "--out", "mine"], capsys)[0] == 0
    assert run_cli([*build, "--out", "mine"], capsys)[0] == 0
    (tmp_path / "mine" / "README.md").write_text("my notes\n")
    rc, err = run_cli([*build, "--out", "mine"], capsys)
    assert_one_line_error(rc, err, "README.md", "--force")
    assert (tmp_path / "mine" / "README.md").read_text() == "my notes\n"
    # --force replaces them.
    assert run_cli([*build, "--out", "leaderboard", "--force"], capsys)[0] == 0
    assert "No run records" in (out / "README.md").read_text()


# ----------------------------------------------------------------------------- 6, 7. signals and locks, real processes
@pytest.fixture
def slow_env(tmp_path, monkeypatch):
    """The sweeps' test dataset in this process and, through a sitecustomize, in ``python -m benchmark``
    subprocesses, whose image loading is slowed so that a run lasts long enough to be signalled or doubled."""
    import sweep_support

    import benchmark.data.base as base

    datasets = sweep_support.write_datasets_dir(tmp_path / "datasets")
    monkeypatch.setattr(base, "DATASETS_DIR", datasets)
    if "sweep_blobs" not in base._READERS:
        base.register_reader("sweep_blobs")(sweep_support.read_blobs)
    site = sweep_support.write_sitecustomize(tmp_path / "site")
    return {
        **env(),
        "SWEEP_TEST_DATASETS": str(datasets),
        "SWEEP_TEST_SAMPLE_DELAY": "0.03",
        "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
    }


def slow_overrides() -> list[str]:
    import sweep_support

    return [
        "dataset=sweepblobs",
        *sweep_support.TINY,
        "train.epochs=1",
        "train.steps_per_epoch=100",  # 24 s of slowed loading: time to be signalled or doubled
        "train.checkpoint_every=2",
        "eval.selection=last",
        "eval.attribute_probe=false",
    ]


def as_from_a_shell() -> None:
    """In the child before exec: SIGINT and SIGTERM at their default disposition and unblocked, as a shell starts a
    foreground job (a pytest-xdist worker may pass them on ignored)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start(command: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            command, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=as_from_a_shell, cwd=log.parent,
        )  # fmt: skip


def test_a_second_process_on_a_run_directory_is_refused_with_who_holds_it(slow_env, tmp_path):
    command = [PYTHON, "-m", "benchmark", "run", *slow_overrides(), f"out_dir={tmp_path / 'runs'}", "run_name=r"]
    run_dir = tmp_path / "runs" / "sweepblobs" / "proxy_anchor" / "r"
    first = start(command, slow_env, tmp_path / "first.log")
    try:
        wait_for((run_dir / "checkpoints" / "last.pt").exists, 240, "the first run's first checkpoint")
        for extra in ([], ["force=true"]):  # force=true while the first still runs would move its directory away
            second = subprocess.run(
                [*command, *extra], env=slow_env, capture_output=True, text=True, timeout=240, cwd=tmp_path
            )
            line = assert_one_line_error(second.returncode, second.stderr, f"run directory {run_dir}", "in use by")
            assert f"process {first.pid} on {os.uname().nodename}" in line and "started 20" in line
            assert not list(run_dir.parent.glob("r.old-*")), "force=true moved a running run aside"
        assert first.poll() is None, "the refused runs disturbed the first"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=240) == 128 + signal.SIGTERM
    finally:
        if first.poll() is None:
            first.kill()
    # Once the holder is gone (whatever way it ended) the lock is free: the same command resumes and finishes.
    fast = {**slow_env, "SWEEP_TEST_SAMPLE_DELAY": "0"}
    done = subprocess.run(command, env=fast, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and "Resuming" in done.stdout, done.stderr[-2000:]


def test_ctrl_c_on_a_local_sweep_passes_one_signal_and_the_cells_checkpoint(slow_env, tmp_path):
    """Ctrl-C in a terminal reaches the sweep's process group; each running cell gets exactly one signal from the
    sweep, writes its checkpoint and stops; the sweep waits for them and says so in one line (no traceback). A
    second sweep on the same directory meanwhile is refused, told who holds it. The same command then resumes."""
    import yaml

    spec = tmp_path / "two.yaml"
    spec.write_text(yaml.safe_dump({"name": "two", "overrides": slow_overrides(), "grid": {"seed": [0, 1]}}))
    sweep_dir = tmp_path / "sweep"
    command = [PYTHON, "-m", "benchmark", "sweep", str(spec), "--local", "--sweep-dir", str(sweep_dir)]
    command.append("--allow-dirty")
    parent = start(command, slow_env, tmp_path / "sweep.log")
    try:
        checkpoints = lambda: list(sweep_dir.glob("runs/**/checkpoints/last.pt"))  # noqa: E731
        wait_for(lambda: len(checkpoints()) == 2, 300, "both cells' first checkpoints")
        second = subprocess.run(command, env=slow_env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        line = assert_one_line_error(second.returncode, second.stderr, f"sweep directory {sweep_dir}", "in use by")
        assert f"process {parent.pid} on" in line
        os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        assert parent.wait(timeout=240) == 128 + signal.SIGINT
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    output = (tmp_path / "sweep.log").read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert "Sweep stopped (SIGINT): 2 running cell(s)" in output and "Run the same command again" in output
    for log in sorted((sweep_dir / "logs").glob("*.log")):
        text = log.read_text()
        assert "Received SIGINT" in text and "checkpoint written at epoch 1, step" in text, text
        assert "second signal" not in text.replace("(a second signal stops at once)", ""), text
        assert "Received SIGTERM" not in text, text
    fast = {**slow_env, "SWEEP_TEST_SAMPLE_DELAY": "0"}
    again = subprocess.run(command, env=fast, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    for log in sorted((sweep_dir / "logs").glob("*.log")):
        assert "Resuming" in log.read_text()


# ----------------------------------------------------------------------------- 5. resuming after the code changed
def repository_copy(root: Path) -> Path:
    """A git repository holding a copy of this checkout's code (its own commits; the tests' data stays here)."""
    import shutil

    for name in ("benchmark", "methods", "datasets", "sweeps"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], check=True)
    return root


def git_head(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_resuming_after_the_methods_code_changed_is_refused_and_every_start_is_recorded(slow_env, tmp_path):
    """Every start and resume is in the record with its git SHA; a committed change to the method's code makes the
    same command refuse to resume (one line naming the file), and force=true moves the run aside and trains anew."""
    repo = repository_copy(tmp_path / "repo")
    site = slow_env["PYTHONPATH"].split(os.pathsep)[0]
    copy_env = {**slow_env, "PYTHONPATH": f"{site}{os.pathsep}{repo}"}
    command = [PYTHON, "-m", "benchmark", "run", *slow_overrides(), f"out_dir={tmp_path / 'runs'}", "run_name=r"]
    run_dir = tmp_path / "runs" / "sweepblobs" / "proxy_anchor" / "r"
    last = run_dir / "checkpoints" / "last.pt"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    shas = []
    for attempt in range(2):  # started, stopped; resumed at another commit (same method code), stopped again
        if attempt:
            (repo / "NOTES.md").write_text("a commit that does not touch the method\n")
            subprocess.run([*git, "add", "NOTES.md"], check=True)
            subprocess.run([*git, "commit", "-qm", "notes"], check=True)
        shas.append(git_head(repo))
        log = tmp_path / f"attempt{attempt}.log"
        proc = start(command, copy_env, log)
        try:
            wait_for(
                lambda log=log, attempt=attempt: last.exists() and (attempt == 0 or "Resuming" in log.read_text()),
                240,
                "a checkpoint",
            )
            time.sleep(1.0 * attempt)  # the second stop lands a few steps later
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=240) == 128 + signal.SIGTERM, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert f"trained so far at git {shas[0][:10]} and resumes at {shas[1][:10]}" in log.read_text()
    record = records.read_record(run_dir)
    starts = record["starts"]
    assert [s["git_sha"] for s in starts] == shas and record["git"]["sha"] == shas[1]
    assert starts[0]["resumed_from"] is None and starts[1]["resumed_from"]["epoch"] == 0
    assert record["method_code"]["files"].keys() >= {"methods/proxy_anchor.py"}
    # A committed change to the method: the same command refuses to resume it.
    method_file = repo / "methods" / "proxy_anchor.py"
    method_file.write_text(method_file.read_text() + "\nCHANGED_AFTER_THE_CHECKPOINT = True\n")
    subprocess.run([*git, "commit", "-qam", "change the method"], check=True)
    before = tree(run_dir)
    fast = {**copy_env, "SWEEP_TEST_SAMPLE_DELAY": "0"}
    refused = subprocess.run(command, env=fast, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert_one_line_error(
        refused.returncode, refused.stderr, str(last), "methods/proxy_anchor.py", shas[1][:10], "force=true"
    )
    assert tree(run_dir) == before
    # force=true moves the run aside and trains again from the start, with the new code.
    forced = subprocess.run([*command, "force=true"], env=fast, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "moved to" in forced.stdout and list(run_dir.parent.glob("r.old-*"))
    record = records.read_record(run_dir)
    assert [s["git_sha"] for s in record["starts"]] == [git_head(repo)] and record["status"] == "completed"
