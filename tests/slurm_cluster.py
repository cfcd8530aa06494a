"""A real single-node Slurm cluster for the tests, started once per session.

Daemons (all as root, all in the foreground as children of pytest, all state in one
temporary folder, all on free ports of 127.0.0.1 so that concurrent sessions do not clash):

  munged      authentication (generated key)
  mariadbd    the accounting database (empty data folder, --skip-grant-tables, 127.0.0.1 only)
  slurmdbd    accounting daemon: gives `sacct`, which submitit reads job states from
  slurmctld   controller
  slurmd      the one compute node (CPUs and memory of this machine)

Container-friendly settings: proctrack/linuxproc, task/none, jobacct_gather/linux, no cgroups.
The Debian packages are installed by tools/install_slurm.sh when missing (root only).
Tests skip with the reason when the machine cannot start Slurm (not root, no packages),
unless SPECNB_REQUIRE_SLURM=1, where that is a failure.

Fixtures (session scope; test modules load them with ``pytest_plugins = ["slurm_cluster"]``, so
that every module shares one cluster): ``slurm_cluster``, and ``time_limit_run`` (a cell past its
1-minute limit, started early so that its wait overlaps the other tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / "tools" / "install_slurm.sh"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sacct", "sacctmgr", "sinfo", "scancel", "srun")
NODE = "specnb-node"
CLUSTER = "specnb"


def _find(exe: str) -> str | None:
    return shutil.which(exe) or next(
        (str(p) for p in (Path("/usr/sbin") / exe, Path("/sbin") / exe) if p.exists()), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the daemon when pytest dies (PR_SET_PDEATHSIG = 1)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _why_unavailable() -> str | None:
    """None when Slurm can be started here, else the reason (after trying to install)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "starting slurmd/slurmctld needs root"
    if all(_find(x) for x in DAEMONS + CLIENTS):
        return None
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    missing = [x for x in DAEMONS + CLIENTS if not _find(x)]
    if proc.returncode or missing:
        return f"Slurm packages unavailable ({INSTALL_SCRIPT.name}: {proc.stderr.strip()[-400:]}); missing {missing}"
    return None


def _machine_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class SlurmCluster:
    """Paths, ports and processes of one private cluster; `env` is what clients need."""

    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    startup_s: float = 0.0
    cpus: int = 1
    memory_mb: int = 1024

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def log(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    def cmd(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Runs a Slurm client command against this cluster; returns stdout."""
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def logs_tail(self) -> str:
        return "\n".join(f"--- {d}\n{_tail(self.log(d), 15)}" for d in DAEMONS)

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        self.root.chmod(0o755)  # munged wants its socket reachable by all
        for sub in ("etc", "log", "run", "state", "spool", "munge", "db", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.ports = {k: _free_port() for k in ("mysql", "dbd", "ctld", "slurmd")}
        # At least 4 job slots even on 2 cores (config_overrides lets slurmd accept it): the
        # slow TIMEOUT test holds one slot, sleeping, while the other tests run.
        self.cpus = max(os.cpu_count() or 1, 4)
        self.memory_mb = int(_machine_memory_mb() * 0.9)  # below slurmd's own measure
        self._start_munge()
        self._start_mariadb()
        self._write_configs()
        self._spawn("slurmdbd", [_find("slurmdbd"), "-D"])
        self._wait("slurmdbd answers", lambda: self._ok("sacctmgr", "-n", "list", "cluster"))
        self.cmd("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self._spawn("slurmctld", [_find("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [_find("slurmd"), "-D", "-N", NODE])
        self._wait("node idle", self._node_idle, timeout=60)
        self.startup_s = time.monotonic() - t0

    def _ok(self, *args: str) -> bool:
        try:
            return subprocess.run(args, env=self.env, capture_output=True, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%t"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _spawn(self, name: str, argv: list) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(
            [str(a) for a in argv], env=self.env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )
        out.close()

    def _wait(self, what: str, ready, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"Slurm test cluster: {dead} exited while waiting for {what}\n{self.logs_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"Slurm test cluster: no {what} after {timeout}s\n{self.logs_tail()}")

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        m = self.root / "munge"
        self._spawn("munged", [
            _find("munged"), "-F", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}",
            f"--log-file={self.log('munged')}",
        ])
        self._wait("munge socket", self.munge_socket.exists)

    def _start_mariadb(self) -> None:
        db = self.root / "db"
        self._spawn("mariadbd", [
            _find("mariadbd"), "--no-defaults", f"--datadir={db}", f"--socket={self.root / 'run' / 'mysql.sock'}",
            f"--port={self.ports['mysql']}", "--bind-address=127.0.0.1", "--user=root",
            "--skip-grant-tables", "--innodb-buffer-pool-size=32M", f"--log-error={self.log('mariadbd')}",
            f"--pid-file={self.root / 'run' / 'mariadbd.pid'}",
        ])
        self._wait("mariadb port", lambda: _port_open(self.ports["mysql"]))

    def _write_configs(self) -> None:
        r, p = self.root, self.ports
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        dbd = self.conf.with_name("slurmdbd.conf")
        dbd.write_text(auth + "\n".join([
            "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={p['dbd']}", "SlurmUser=root",
            f"PidFile={r / 'run' / 'slurmdbd.pid'}", f"LogFile={self.log('slurmdbd')}",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={p['mysql']}",
            "StorageUser=root", "StorageLoc=specnb_slurm_acct", "DebugLevel=info", "",
        ]))
        dbd.chmod(0o600)  # slurmdbd refuses a readable-by-all slurmdbd.conf
        # AccountingStoragePass: for slurmdbd connections Slurm takes the munge socket from it.
        host = socket.gethostname()
        self.conf.write_text(auth + "\n".join([
            f"ClusterName={CLUSTER}", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={p['ctld']}",
            f"SlurmdPort={p['slurmd']}", "SlurmUser=root", "SlurmdUser=root", "CredType=cred/munge",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}", f"TmpFS={r / 'tmp'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log('slurmctld')}", f"SlurmdLogFile={self.log('slurmd')}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=task=2", "SwitchType=switch/none", "MpiDefault=none",
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
            f"AccountingStoragePort={p['dbd']}", f"AccountingStoragePass={self.munge_socket}",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0",
            "ReturnToService=2", "SlurmdParameters=config_overrides", "InactiveLimit=0", "KillWait=2", "MinJobAge=300", "Waittime=0",
            "SlurmctldDebug=info", "SlurmdDebug=info", "MailProg=/bin/true",
            f"NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", "",
        ]))

    # -- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancels every job, then stops the daemons in reverse start order (kill after 10 s)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self.cmd("scancel", "--full", "--user=root", check=False, timeout=10)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and self.cmd("squeue", "-h", check=False, timeout=5).strip():
                    time.sleep(0.5)
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_cluster() -> Iterator[SlurmCluster]:
    """Starts a cluster in a fresh temporary folder, points SLURM_CONF at it, stops it at the end."""
    root = Path(tempfile.mkdtemp(prefix="specnb-slurm-"))
    cluster = SlurmCluster(root)
    old_conf = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Session-wide real single-node Slurm (skips with the reason where it cannot start)."""
    reason = _why_unavailable()
    if reason:
        if os.environ.get("SPECNB_REQUIRE_SLURM") == "1":
            pytest.fail(f"SPECNB_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    with running_cluster() as cluster:
        print(f"\n[slurm_cluster] started in {cluster.startup_s:.1f}s at {cluster.root}")
        yield cluster


@pytest.fixture(scope="session")
def time_limit_run(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One cell longer than its 1-minute Slurm limit, run by SlurmExecutor in a thread from the
    first test that asks, so that its 60-90 s (slurmctld checks limits every 30 s) overlap the
    other tests; the last Slurm test joins it. Yields {"cell", "thread", "result" (once ended)}."""
    from fake_notebooks import make_fake_notebook

    from specnb.grid import Cell
    from specnb.params import NOTEBOOKS
    from specnb.slurm import SlurmExecutor

    run_dir = tmp_path_factory.mktemp("time-limit")
    notebook = run_dir / NOTEBOOKS["edge"]
    make_fake_notebook(notebook, "edge")
    cell_dir = run_dir / "cells" / "edge-float32"
    cell = Cell(cell_id="edge-float32", method="edge", notebook=str(notebook), cell_dir=str(cell_dir),
                parameters={"dtype": "float32", "result_path": str(cell_dir / "result.json")})
    out: dict = {"cell": cell}
    executor = SlurmExecutor(run_dir, time_min=1, poll_s=1)
    out["thread"] = threading.Thread(
        target=executor.run, args=([cell], lambda c, result: out.update(result=result)), daemon=True)
    os.environ["FAKE_SLEEP_S"] = "600"  # the job's environment is taken at submission
    try:
        out["thread"].start()
        deadline = time.monotonic() + 60
        while not (run_dir / "slurm" / "jobs.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.environ.pop("FAKE_SLEEP_S", None)
    yield out
    if out["thread"].is_alive():  # its test did not run (deselected, or -x stopped earlier): end it now
        job_id = json.loads((run_dir / "slurm" / "jobs.json").read_text())["cells"][cell.cell_id]["job_id"]
        slurm_cluster.cmd("scancel", job_id, check=False)
    out["thread"].join(timeout=60)
