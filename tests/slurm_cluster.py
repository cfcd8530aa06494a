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
Tests skip with the reason when the machine cannot start Slurm (not root, no packages,
clients of another Slurm version, a cluster that did not start), unless
SPECNB_REQUIRE_SLURM=1, where that is a failure.

Isolated from any Slurm already on the machine (a login node, a workstation with its own
/etc/slurm/slurm.conf and munged on the default socket): every daemon and every client command
(ours, submitit's, ``specnb grid``'s, and the jobs' own) authenticates through this cluster's
munged (its own socket and key: ``AuthInfo=socket=...`` and ``AccountingStoragePass``), reads
this cluster's slurm.conf (``SLURM_CONF``), runs the Slurm clients of the same installation as
the daemons (a ``bin/`` of links first on ``PATH``), and sees none of the caller's ``SLURM_*`` /
``SBATCH_*`` ... variables (site defaults, or those of an allocation the tests run inside). The
cluster name is unique and job ids start at a random high ``FirstJobId``, so a command that
reached another cluster would name no job of it. :meth:`SlurmCluster.check_isolation` verifies
this after start-up (else the tests skip, or fail under SPECNB_REQUIRE_SLURM=1), and the
session's first line names any other Slurm or munged it found on the default paths.

Fixtures (session scope; test modules load them with ``pytest_plugins = ["slurm_cluster"]``, so
that every module shares one cluster): ``slurm_cluster``, and ``time_limit_run`` (a cell past its
1-minute limit, started early so that its wait overlaps the other tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / "tools" / "install_slurm.sh"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sacct", "sacctmgr", "sinfo", "scancel", "scontrol", "srun")
NODE = "specnb-node"
# The caller's Slurm client settings (site defaults like SBATCH_PARTITION, or SLURM_JOB_ID & co.
# inside an allocation) must not reach this cluster's commands or jobs.
CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SACCT_", "SACCTMGR_", "SINFO_",
                       "SCANCEL_", "SCONTROL_", "SSTAT_", "SPANK_")
DEFAULT_MUNGE_SOCKETS = (Path("/run/munge/munge.socket.2"), Path("/var/run/munge/munge.socket.2"))
DEFAULT_SLURM_CONF = Path("/etc/slurm/slurm.conf")


class Unavailable(RuntimeError):
    """The test cluster cannot run (isolated) on this machine; the message says why."""


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


def _clients_beside(daemon: str) -> dict[str, str]:
    """The client commands of the installation ``daemon`` belongs to (``/usr/sbin/slurmctld`` ->
    ``/usr/bin/sbatch``...), not whichever comes first on PATH (another Slurm, a site wrapper)."""
    prefix = Path(daemon).resolve().parent.parent
    out = {}
    for exe in CLIENTS:
        here = prefix / "bin" / exe
        found = str(here) if here.exists() else _find(exe)
        if not found:
            raise Unavailable(f"no {exe} beside {daemon}")
        out[exe] = found
    return out


def _version(*argv: str, env: Mapping[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    return (proc.stdout or proc.stderr).strip()


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
    name: str = field(default_factory=lambda: f"specnb{secrets.token_hex(3)}")  # ClusterName: unique
    first_job_id: int = field(default_factory=lambda: random.randrange(20_000_000, 60_000_000))
    others: list[str] = field(default_factory=list)  # other Slurm/munge seen on the default paths

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def bin(self) -> Path:
        """Links to the Slurm clients of the daemons' installation; first on PATH."""
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """The environment of every daemon and client of this cluster (see the module's docstring)."""
        return isolated_env(os.environ, self)

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
        for sub in ("etc", "log", "run", "state", "spool", "munge", "db", "tmp", "bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._link_clients()
        self.ports = {k: _free_port() for k in ("mysql", "dbd", "ctld", "slurmd")}
        # At least 4 job slots even on 2 cores (config_overrides lets slurmd accept it): the
        # slow TIMEOUT test holds one slot, sleeping, while the other tests run.
        self.cpus = max(os.cpu_count() or 1, 4)
        self.memory_mb = int(_machine_memory_mb() * 0.9)  # below slurmd's own measure
        self._start_munge()
        self._start_mariadb()
        self._write_configs()
        self._check_versions()
        self._spawn("slurmdbd", [_find("slurmdbd"), "-D"])
        self._wait("slurmdbd answers", lambda: self._ok("sacctmgr", "-n", "list", "cluster"))
        self.cmd("sacctmgr", "-i", "add", "cluster", self.name)
        self._spawn("slurmctld", [_find("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [_find("slurmd"), "-D", "-N", NODE])
        self._wait("node idle", self._node_idle, timeout=60)
        self.check_isolation(self.env)
        self.startup_s = time.monotonic() - t0

    def _link_clients(self) -> None:
        """bin/: the clients of the daemons' own installation."""
        for exe, path in _clients_beside(_find("slurmctld")).items():
            (self.bin / exe).symlink_to(path)

    def _check_versions(self) -> None:
        """The clients and the daemons are one Slurm version (clients read slurm.conf even for
        ``--version``: run once it is written)."""
        ctld = _find("slurmctld")
        daemon_v, client_v = _version(ctld, "-V"), _version(str(self.bin / "sbatch"), "--version", env=self.env)
        if not daemon_v or daemon_v.split()[-1:] != client_v.split()[-1:]:
            raise Unavailable(f"Slurm clients ({(self.bin / 'sbatch').resolve()}: {client_v}) and daemons "
                              f"({ctld}: {daemon_v}) differ in version")

    def config(self, env: dict[str, str], timeout: float = 30) -> dict[str, str]:
        """``scontrol show config`` as seen from ``env``: {"ClusterName": ..., ...}."""
        out = subprocess.run(["scontrol", "show", "config"], env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"scontrol show config failed: {out.stderr.strip()}")
        pairs = (line.split("=", 1) for line in out.stdout.splitlines() if " = " in line)
        return {k.strip(): v.strip() for k, v in pairs}

    def check_isolation(self, env: dict[str, str]) -> None:
        """Raise unless the Slurm clients run with ``env`` are this cluster's (bin/), see no inherited
        client variables, and reach this controller, authenticating with this cluster's munged."""
        path = env.get("PATH")
        wrong = {exe: shutil.which(exe, path=path) for exe in CLIENTS
                 if shutil.which(exe, path=path) != str(self.bin / exe)}
        leaked = sorted(k for k in env if k.startswith(CLIENT_ENV_PREFIXES) and k != "SLURM_CONF")
        cfg = self.config(env)
        want = {"ClusterName": self.name, "SlurmctldPort": str(self.ports["ctld"]),
                "AuthInfo": f"socket={self.munge_socket}", "FirstJobId": str(self.first_job_id)}
        differ = {k: (cfg.get(k), v) for k, v in want.items() if cfg.get(k) != v}
        if wrong or leaked or differ:
            raise RuntimeError(f"Slurm test cluster not isolated: clients {wrong}, inherited {leaked}, "
                               f"config (seen, wanted) {differ}")


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
            f"ClusterName={self.name}", f"FirstJobId={self.first_job_id}",
            f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={p['ctld']}",
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


def isolated_env(base: Mapping[str, str], cluster: SlurmCluster) -> dict[str, str]:
    """``base`` without Slurm client variables, with this cluster's SLURM_CONF and clients first on PATH."""
    env = {k: v for k, v in base.items() if not k.startswith(CLIENT_ENV_PREFIXES)}
    path = [p for p in base.get("PATH", os.defpath).split(os.pathsep) if p and p != str(cluster.bin)]
    env["PATH"] = os.pathsep.join([str(cluster.bin), *path])
    env["SLURM_CONF"] = str(cluster.conf)
    return env


def outside_env(cluster: SlurmCluster) -> dict[str, str]:
    """An environment whose Slurm commands go to the machine's default Slurm (/etc/slurm/slurm.conf)."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"} | {"SLURM_CONF": str(DEFAULT_SLURM_CONF)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != str(cluster.bin))
    return env


def describe_other_slurm(cluster: SlurmCluster) -> list[str]:
    """What else runs here on the default paths (for the record; nothing of it is used)."""
    seen = []
    for sock in DEFAULT_MUNGE_SOCKETS:
        if sock.exists():
            seen.append(f"munged on {sock}")
            break
    if DEFAULT_SLURM_CONF.exists():
        seen.append(f"{DEFAULT_SLURM_CONF}")
        with contextlib.suppress(Exception):
            cfg = cluster.config(outside_env(cluster), timeout=15)
            auth = cfg.get("AuthInfo") if cfg.get("AuthInfo") not in (None, "(null)") else "(the default munge socket)"
            seen.append(f"its controller answers: ClusterName={cfg.get('ClusterName')}, "
                        f"SlurmctldPort={cfg.get('SlurmctldPort')}, AuthInfo={auth}")
    return seen


@contextlib.contextmanager
def running_cluster() -> Iterator[SlurmCluster]:
    """Starts a cluster in a fresh temporary folder and gives this process its environment
    (:func:`isolated_env`: what submitit and ``specnb grid`` inherit); restores it at the end."""
    root = Path(tempfile.mkdtemp(prefix="specnb-slurm-"))
    cluster = SlurmCluster(root)
    saved = dict(os.environ)
    try:
        cluster.start()
        cluster.others = describe_other_slurm(cluster)
        env = isolated_env(os.environ, cluster)
        for key in [k for k in os.environ if k not in env]:
            del os.environ[key]
        os.environ.update(env)
        cluster.check_isolation(dict(os.environ))
        yield cluster
    finally:
        cluster.stop()
        for key in ("SLURM_CONF", "PATH", *(k for k in saved if k.startswith(CLIENT_ENV_PREFIXES))):
            if key in saved:
                os.environ[key] = saved[key]
            else:
                os.environ.pop(key, None)
        shutil.rmtree(root, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("SPECNB_REQUIRE_SLURM") == "1":
        pytest.fail(f"SPECNB_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Session-wide real single-node Slurm (skips with the reason where it cannot start)."""
    reason = _why_unavailable()
    if reason:
        _unavailable(reason)
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_cluster())
        except (Unavailable, RuntimeError, OSError, subprocess.SubprocessError) as err:
            _unavailable(f"the isolated Slurm test cluster did not start: {err}")
        others = "; ".join(cluster.others) or "none"
        print(f"\n[slurm_cluster] {cluster.name} started in {cluster.startup_s:.1f}s at {cluster.root}; "
              f"other Slurm/munge on this machine: {others}")
        yield cluster


@pytest.fixture(scope="session")
def time_limit_run(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One cell longer than its 1-minute Slurm limit, run by SlurmExecutor in a thread from the
    first test that asks, so that its 60-90 s (slurmctld checks limits every 30 s) overlap the
    other tests; the last Slurm test joins it. Yields {"cell", "thread", "result" (once ended)}."""
    from fake_notebooks import make_fake_notebook

    from specnb.grid.cells import Cell
    from specnb.study.params import NOTEBOOKS
    from specnb.grid.slurm import SlurmExecutor

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
