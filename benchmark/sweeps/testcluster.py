"""A throwaway single-node SLURM cluster on this machine, for the tests and for trying the sweeps on a laptop.

``python -m benchmark.sweeps.testcluster start [--dir DIR]`` starts munged, a private MariaDB, slurmdbd, slurmctld and
``slurmd -N localhost`` from a configuration written under DIR (a new temporary directory by default), all bound to
loopback, and prints the ``export SLURM_CONF=...`` line that points every SLURM command (and job) at it;
``python -m benchmark.sweeps.testcluster stop [--dir DIR]`` cancels its jobs and stops every daemon by its PID.
From Python: ``with TestCluster() as cluster: ...`` (``cluster.env`` holds ``SLURM_CONF``).

Needs the Debian/Ubuntu packages ``slurm-wlm slurmdbd mariadb-server munge`` (``apt-get install -y
--no-install-recommends ...``) and root (slurmd starts the jobs as their user). Facts measured on such a machine
(SLURM 22.05): submitit reads job states with ``sacct``, so accounting goes through slurmdbd and a database;
``KillWait=5`` because submitit ignores SIGTERM; ``preempt_send_user_signal`` or a pre-empted job never reaches
submitit's checkpoint; ``DefMemPerCPU`` or one job takes all the memory; a requeued job waits ``cred_expire`` + 1 s
(120 s by default: we set 10 s; ``scontrol update JobId=X StartTime=now`` releases it at once).
(Hand-written: no maintained library starts a SLURM cluster without systemd or containers.)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PACKAGES = "slurm-wlm slurmdbd mariadb-server munge"
INSTALL_HINT = f"apt-get update && apt-get install -y --no-install-recommends {PACKAGES}"
BINARIES = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")  # start order; stopped in reverse
CLUSTER_NAME = "dmltest"
REQUEUE_WAIT_S = 10  # cred_expire: a requeued job becomes eligible this long after its requeue (+1 s)


class TestClusterError(RuntimeError):
    """The throwaway cluster cannot start here (missing packages, not root, a daemon that did not come up)."""


def missing_requirements() -> str | None:
    """Why the cluster cannot start on this machine (with what to do), or None when it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"SLURM test cluster: {', '.join(missing)} not found. Install them with: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "SLURM test cluster: needs root (slurmd starts jobs as their user and munged checks ownership)."
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_resources() -> dict[str, str]:
    """What ``slurmd -C`` reports for this machine (CPUs, sockets, cores, threads, RealMemory in MB)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(tok.split("=", 1) for tok in out.split("\n", 1)[0].split() if "=" in tok)
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    return {k: fields[k] for k in keep if k in fields}


def _slurm_conf(d: Path, ports: dict[str, int]) -> str:
    node = node_resources()
    mem_per_cpu = max(256, int(node.get("RealMemory", 1024)) // max(int(node.get("CPUs", 1)), 1) // 2)
    return f"""# Throwaway single-node cluster (benchmark/sweeps/testcluster.py); loopback only.
ClusterName={CLUSTER_NAME}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports["slurmctld"]}
SlurmdPort={ports["slurmd"]}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket,cred_expire={REQUEUE_WAIT_S}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={mem_per_cpu}
KillWait=5
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["slurmdbd"]}
AccountingStoragePass={d}/munge/munge.socket
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 {" ".join(f"{k}={v}" for k, v in node.items())} State=UNKNOWN
PartitionName=low Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=high Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""


def _slurmdbd_conf(d: Path, ports: dict[str, int], password: str) -> str:
    return f"""AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
CommunicationParameters=NoInAddrAny
DbdPort={ports["slurmdbd"]}
SlurmUser=root
PidFile={d}/run/slurmdbd.pid
LogFile={d}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["mariadb"]}
StorageUser=slurm
StoragePass={password}
StorageLoc=slurm_acct_db
"""


class TestCluster:
    """Start (``start``/``__enter__``) and stop (``stop``/``__exit__``) the throwaway cluster under ``directory``.

    ``env`` is what a client needs (``SLURM_CONF``). Every daemon's PID is kept in ``<dir>/pids.json``; ``stop``
    cancels the cluster's jobs, then ends the daemons by PID (SIGTERM, then SIGKILL) and any job process left.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | Path | None = None, remove: bool | None = None) -> None:
        self.dir = Path(directory or tempfile.mkdtemp(prefix="dml-slurm-")).resolve()
        self.remove = directory is None if remove is None else remove
        self.conf = self.dir / "etc" / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._argv: dict[str, list[str]] = {}
        self._ready: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- start
    def start(self, timeout: float = 90) -> TestCluster:
        """Write the configuration, start every daemon and wait until the node takes jobs."""
        problem = missing_requirements()
        if problem:
            raise TestClusterError(problem)
        d = self.dir
        for sub in ("etc", "munge", "db", "state", "spool", "run", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        (d / "munge").chmod(0o700)
        ports = {k: _free_port() for k in ("mariadb", "slurmdbd", "slurmctld", "slurmd")}
        password = secrets.token_hex(16)
        self.conf.write_text(_slurm_conf(d, ports))
        dbd = d / "etc" / "slurmdbd.conf"
        dbd.touch(mode=0o600)
        dbd.chmod(0o600)
        dbd.write_text(_slurmdbd_conf(d, ports, password))
        try:
            self._start_munge()
            self._start_mariadb(ports["mariadb"], password)
            self._ready["slurmdbd"] = lambda: self._listening(ports["slurmdbd"])
            self.start_daemon("slurmdbd", [_which("slurmdbd"), "-D"])
            self._ready["slurmctld"] = lambda: self._run(["scontrol", "ping"]).returncode == 0
            self.start_daemon("slurmctld", [_which("slurmctld"), "-D", "-i"])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost"])
            self._wait(self._node_idle, timeout, "the node to be idle")
            self._wait(lambda: self._run(["sacct", "-n", "-X"]).returncode == 0, 30, "sacct to answer")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        m = self.dir / "munge"
        self._spawn(
            "munged",
            [_which("munged"), "-F", "--force", f"--socket={m}/munge.socket", f"--key-file={key}",
             f"--pid-file={m}/munged.pid", f"--log-file={self.dir}/log/munged.log", f"--seed-file={m}/munged.seed"],
        )  # fmt: skip
        self._wait(lambda: (m / "munge.socket").exists(), 20, "munged's socket")

    def _start_mariadb(self, port: int, password: str) -> None:
        db, sock = self.dir / "db", self.dir / "run" / "mariadb.sock"
        install = [_which("mariadb-install-db"), f"--datadir={db}", "--user=root", "--skip-test-db",
                   "--auth-root-authentication-method=socket"]  # fmt: skip
        done = subprocess.run(install, capture_output=True, text=True)
        if done.returncode:
            raise TestClusterError(f"mariadb-install-db failed: {done.stderr.strip()[-500:]}")
        self._spawn(
            "mariadbd",
            [_which("mariadbd"), "--no-defaults", f"--datadir={db}", f"--socket={sock}", f"--port={port}",
             "--bind-address=127.0.0.1", "--user=root", f"--pid-file={self.dir}/run/mariadb.pid",
             f"--log-error={self.dir}/log/mariadb.log", "--skip-log-bin", "--innodb-buffer-pool-size=32M"],
        )  # fmt: skip
        self._wait(lambda: sock.exists() and self._listening(port), 60, "MariaDB to listen")
        sql = (
            f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; "
            f"CREATE USER 'slurm'@'localhost' IDENTIFIED BY '{password}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
        )
        client = shutil.which("mariadb") or shutil.which("mysql") or "mariadb"
        done = subprocess.run([client, f"--socket={sock}", "-u", "root", "-e", sql], capture_output=True, text=True)
        if done.returncode:
            raise TestClusterError(f"could not create the database user: {done.stderr.strip()[-500:]}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(
            argv, env={**os.environ, **self.env}, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.dir,
        )  # fmt: skip
        log.close()
        self.pids[name], self._procs[name], self._argv[name] = proc.pid, proc, argv
        (self.dir / "pids.json").write_text(json.dumps(self.pids))
        time.sleep(0.2)
        if proc.poll() is not None:
            raise TestClusterError(f"{name} exited at once ({proc.returncode}): {self.log_tail(name)}")

    def start_daemon(self, name: str, argv: list[str] | None = None, timeout: float = 30) -> None:
        """Start one daemon (again, after :meth:`stop_daemon`, with its first command line) and wait until it answers."""
        self._spawn(name, argv or self._argv[name])
        if name in self._ready:
            self._wait(self._ready[name], timeout, f"{name} to answer")

    def stop_daemon(self, name: str) -> None:
        """Stop one daemon by its PID (the tests stop slurmdbd to see what a sweep does when sacct cannot answer)."""
        _terminate(self.pids.pop(name))
        self._procs.pop(name, None)
        (self.dir / "pids.json").write_text(json.dumps(self.pids))

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise TestClusterError(f"{name} died while waiting for {what}: {self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise TestClusterError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.dir / 'log'}")

    def _listening(self, port: int) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    def _node_idle(self) -> bool:
        out = self._run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.split()
        return bool(out) and all(s.rstrip("*") in ("idle", "mixed", "allocated") for s in out)

    def _run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(argv, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout)

    def log_tail(self, name: str, lines: int = 8) -> str:
        """The last lines of a daemon's log (its own log file, else its captured output)."""
        for path in (self.dir / "log" / f"{name}.log", self.dir / "log" / f"{name}.out"):
            if path.exists() and path.stat().st_size:
                return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no log)"

    # ------------------------------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Cancel the cluster's jobs, end every daemon by its PID, then any job process still holding SLURM_CONF."""
        pids = dict(self.pids)
        if not pids and (self.dir / "pids.json").exists():
            pids = json.loads((self.dir / "pids.json").read_text())
        if pids.get("slurmctld") and _alive(pids["slurmctld"]):
            try:
                self._run(["scancel", "--full", "--user", str(os.getuid())], timeout=10)
                deadline = time.time() + 15
                while time.time() < deadline and self._run(["squeue", "-h"], timeout=10).stdout.strip():
                    time.sleep(0.3)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in reversed(DAEMONS):
            if name in pids:
                _terminate(pids[name])
        for pid in _processes_with_env("SLURM_CONF", str(self.conf)):  # job steps outliving slurmd
            _terminate(pid, grace=2)
        self.pids = {}
        if self.remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TestCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of ours counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _terminate(pid: int, grace: float = 10) -> None:
    """SIGTERM ``pid``, wait up to ``grace`` seconds, then SIGKILL; reap it if it is our child."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        if not _alive(pid):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + wait
        while time.time() < deadline and _alive(pid):
            time.sleep(0.1)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def listening_addresses(pids: Any) -> list[tuple[str, int]]:
    """The (address, port) of every listening TCP socket that the processes ``pids`` hold (read from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            if width == 8:
                addr = socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_addr)[::-1])
            else:
                words = [bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, 32, 8)]
                addr = socket.inet_ntop(socket.AF_INET6, b"".join(words))
                addr = addr.removeprefix("::ffff:") if addr.startswith("::ffff:") else addr
            found.append((addr, int(hex_port, 16)))
    return found


def _processes_with_env(key: str, value: str) -> list[int]:
    """PIDs (not this process or its parents) whose environment holds ``key=value``: this cluster's leftovers."""
    mine = {os.getpid(), os.getppid()}
    found, needle = [], f"{key}={value}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmark.sweeps.testcluster start|stop [--dir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.sweeps.testcluster", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", help="the cluster's directory (start: a new temporary one; stop: $SLURM_CONF's)")
    args = parser.parse_args(argv)
    if args.action == "start":
        try:
            cluster = TestCluster(args.dir, remove=False).start()
        except TestClusterError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"# SLURM test cluster '{CLUSTER_NAME}' up (partitions low, high). Stop it with:", file=sys.stderr)
        print(f"#   python -m benchmark.sweeps.testcluster stop --dir {cluster.dir}", file=sys.stderr)
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    directory = args.dir or (Path(os.environ["SLURM_CONF"]).parent.parent if os.environ.get("SLURM_CONF") else None)
    if directory is None or not (Path(directory) / "pids.json").exists():
        print("error: no test cluster to stop: pass --dir DIR (printed by 'start') or export its SLURM_CONF.",
              file=sys.stderr)  # fmt: skip
        return 2
    TestCluster(directory, remove=False).stop()
    print(f"Stopped the test cluster in {directory}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
