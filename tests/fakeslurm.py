"""A fake SLURM for the sweep tests: ``sbatch``, ``srun``, ``sacct``, ``scontrol`` and ``scancel`` on PATH.

Standard library only (the binaries run with ``python -S``). State lives in ``$FAKE_SLURM_DIR``:
``scripts/<job>.sh`` (every submitted script), ``tasks/<job>_<task>.json`` (state, restarts, exit code),
``tasks/<job>_<task>.pid`` (the job step's process, written by srun), ``requeue/<job>_<task>`` (requeue requests).

``sbatch`` returns at once; a detached driver runs the array's tasks in the background, at most ``%N`` at a
time, with SLURM's environment variables. A task whose requeue was requested (``scontrol requeue``) is started
again when it exits, with ``SLURM_RESTART_COUNT`` incremented, as SLURM does.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/tmp/fakeslurm"))


def _write(path, obj):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _read(path):
    for _ in range(50):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.02)
    return {}


def _sbatch_flags(script_text):
    flags = {}
    for line in script_text.splitlines():
        match = re.match(r"#SBATCH --([\w-]+)(?:=(.*))?", line)
        if match:
            flags[match.group(1)] = (match.group(2) or "true").strip("'")
    return flags


def _expand(pattern, job, task, task_rank="0"):
    return (
        pattern.replace("%A", job)
        .replace("%a", task)
        .replace("%j", job if task == "" else f"{job}_{task}")
        .replace("%t", task_rank)
    )


def sbatch(argv):
    script = Path(argv[-1])
    text = script.read_text()
    flags = _sbatch_flags(text)
    (STATE / "scripts").mkdir(parents=True, exist_ok=True)
    (STATE / "tasks").mkdir(parents=True, exist_ok=True)
    counter = STATE / "counter"
    job = str(int(counter.read_text()) + 1 if counter.exists() else 1000)
    counter.write_text(job)
    (STATE / "scripts" / f"{job}.sh").write_text(text)
    if "array" in flags:
        span, _, parallel = flags["array"].partition("%")
        first, _, last = span.partition("-")
        tasks = [str(i) for i in range(int(first), int(last or first) + 1)]
    else:
        tasks, parallel = [""], "1"
    for task in tasks:
        _write(STATE / "tasks" / f"{job}{'_' + task if task else ''}.json", {"state": "PENDING", "restarts": 0})
    if os.environ.get("FAKE_SLURM_HOLD"):  # the queue never starts them (tests of submission alone)
        print(f"Submitted batch job {job}")
        return
    log = open(STATE / f"driver-{job}.log", "ab")
    subprocess.Popen(
        [sys.executable, "-S", __file__, "_driver", job, str(script), parallel or str(len(tasks)), *tasks],
        start_new_session=True,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    print(f"Submitted batch job {job}")


def _start(job, task, script, flags, restarts):
    env = dict(os.environ)
    env.update(
        SLURM_JOB_ID=job,
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NTASKS="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NODEID="0",
        SLURM_RESTART_COUNT=str(restarts),
        SLURM_JOB_NODELIST="fakenode",
        FAKE_SLURM_TASK=f"{job}_{task}" if task else job,
    )
    if task:
        env.update(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=task)
    out = open(_expand(flags["output"], job, task), "ab")
    err = open(_expand(flags.get("error", flags["output"]), job, task), "ab")
    return subprocess.Popen(["bash", script], env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)


def _driver(job, script, parallel, tasks):
    flags = _sbatch_flags(Path(script).read_text())
    queue, running = list(tasks), {}
    while queue or running:
        while queue and len(running) < int(parallel):
            task = queue.pop(0)
            name = f"{job}_{task}" if task else job
            state = _read(STATE / "tasks" / f"{name}.json")
            running[task] = _start(job, task, script, flags, state.get("restarts", 0))
            _write(STATE / "tasks" / f"{name}.json", {**state, "state": "RUNNING"})
        time.sleep(0.1)
        for task, proc in list(running.items()):
            if proc.poll() is None:
                continue
            name = f"{job}_{task}" if task else job
            state = _read(STATE / "tasks" / f"{name}.json")
            flag = STATE / "requeue" / name
            if flag.exists():
                flag.unlink()
                state.update(state="REQUEUED", restarts=state.get("restarts", 0) + 1)
                queue.insert(0, task)
            else:
                state.update(state="COMPLETED" if proc.returncode == 0 else "FAILED", exit=proc.returncode)
            _write(STATE / "tasks" / f"{name}.json", state)
            del running[task]


def srun(argv):
    args, files = list(argv), {}
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            files[flag] = args.pop(0)
    job, task = os.environ["SLURM_JOB_ID"], os.environ.get("SLURM_ARRAY_TASK_ID", "")
    (STATE / "tasks" / f"{os.environ['FAKE_SLURM_TASK']}.pid").write_text(str(os.getpid()))
    for flag, fd in (("--output", 1), ("--error", 2)):
        if flag in files:
            handle = os.open(_expand(files[flag], job, task), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(handle, fd)
    os.execvp(args[0], args)  # the job step keeps this pid, so signals reach it


def sacct(argv):
    ids = [argv[i + 1] for i, a in enumerate(argv) if a == "-j"]
    print("JobID|State|NodeList")
    for path in sorted((STATE / "tasks").glob("*.json")):
        if path.stem.split("_")[0] in ids:
            print(f"{path.stem}|{_read(path).get('state', 'UNKNOWN')}|fakenode")


def scontrol(argv):
    if argv[:1] == ["requeue"]:
        (STATE / "requeue").mkdir(exist_ok=True)
        (STATE / "requeue" / argv[1]).write_text("")


def scancel(argv):
    sig = None
    if "--signal" in argv:
        i = argv.index("--signal")
        sig = argv.pop(i + 1)
        argv.pop(i)
    for name in argv:
        pid = int((STATE / "tasks" / f"{name}.pid").read_text())
        os.kill(pid, getattr(signal, "SIG" + sig.removeprefix("SIG")) if sig else signal.SIGKILL)


if __name__ == "__main__":
    command = Path(sys.argv[1]).name if sys.argv[1] != "_driver" else "_driver"
    if command == "_driver":
        _driver(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol, "scancel": scancel}[command](
            sys.argv[2:]
        )


def install(bin_dir, state_dir):
    """Write the fake binaries into ``bin_dir`` (each calls this file); return the env additions."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "srun", "sacct", "scontrol", "scancel"):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec {sys.executable} -S {Path(__file__).resolve()} {name} "$@"\n')
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state_dir)}
