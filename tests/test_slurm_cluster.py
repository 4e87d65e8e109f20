"""The SLURM profile on a real SLURM: a single-node cluster (munged, slurmctld, slurmd) started on localhost.

`snakemake --executor slurm` with the project's profile (workflow/profiles/slurm) runs the synthetic demo,
every rule instance (download, preprocess, train, evaluate) one sbatch job that runs its rule with srun in the
allocation. Needs root and SLURM with munge installed (Debian: `apt-get install slurm-wlm munge`); skipped with
the reason otherwise. The test installs nothing and touches nothing under /etc: the daemons' config, key,
state and logs lie in the test's tmp dirs and the commands find the config through SLURM_CONF.

What a localhost cluster cannot give, and what the test does instead (see also docs/workflow.md, "Cluster
runs (SLURM)"):
- CPUs and memory: the profile's cpus_per_task/threads and mem_mb are capped (JOB_CPUS, JOB_MEM_MB) in a
  copy of the profile; partitions, GPU requests and runtimes stay as the profile has them.
- a GPU: the node declares one GPU without a device (tests/slurm/slurm.conf.in), so a training's GPU request
  is granted by the scheduler while the training runs on the CPU (the project copy trains with device=cpu).
- accounting: without slurmdbd, `sacct` fails ("Slurm accounting storage is disabled") and the executor,
  whose default status command is sacct when sacct is installed, loses its jobs and waits forever; the test
  passes --slurm-status-command squeue (the cluster keeps finished jobs in squeue for MinJobAge=600 s).
- SLURM_CONF inside jobs: the jobstep plugin removes it before its srun; tests/slurm/srun puts it back.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .test_end_to_end import _project_copy

pytestmark = pytest.mark.slow  # end to end: daemons, a workflow and a training

HERE = Path(__file__).resolve().parent / "slurm"
TARGET = "results/synthetic/mclrec.json"
TRAIN_RULE = "train"  # the training rule of TARGET: its job (alone) must ask for the GPU
TARGET_RULES = ("download", "preprocess", TRAIN_RULE, "evaluate")  # one sbatch job each
JOB_CPUS = 1  # every job asks for this many CPUs (cpus_per_task and threads), whatever the profile says
JOB_MEM_MB = 1000  # and at most this much memory (not enforced: no cgroups)
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
RUN_TIMEOUT_S = 420  # the run takes about 1.5 min on 2 CPUs; a status query that never answers hangs it


@dataclass
class Cluster:
    root: Path  # config, state, spool and logs
    conf: Path  # slurm.conf (SLURM_CONF)
    env: dict[str, str]  # for every command: SLURM_CONF, the srun shim and the venv first on PATH
    bins: dict[str, str]  # absolute paths of the SLURM and munge commands
    partitions: dict[str, bool]  # partition name -> default


def _find(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *SBIN]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


def _node_hardware(slurmd: str) -> dict[str, str]:
    """`slurmd -C`: this host's NodeName (hostname -s), CPUs, sockets, cores, threads and RealMemory."""
    proc = subprocess.run([slurmd, "-C"], check=False, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or "NodeName=" not in proc.stdout:
        pytest.skip(f"slurmd -C failed: {proc.stderr.strip()[-500:]}")
    return dict(field.split("=", 1) for field in proc.stdout.splitlines()[0].split())


def _profile_partitions(profile: dict) -> dict[str, bool]:
    """The partitions the profile submits to: name -> whether it is the default one (default-resources')."""
    default = (profile.get("default-resources") or {}).get("slurm_partition")
    names = [default] + [res.get("slurm_partition") for res in (profile.get("set-resources") or {}).values()]
    names = [str(n) for n in dict.fromkeys(names) if n] or ["cpu"]
    return {name: name == str(default) or (default is None and i == 0) for i, name in enumerate(names)}


def _test_profile(project: Path, dest: Path) -> dict:
    """The project's SLURM profile with only CPU and memory amounts capped to what the test node has.

    Snakemake replaces a profile's top-level entry (set-resources, set-threads, default-resources) as a whole
    when a later profile or the command line sets it, so the caps are applied to a copy instead of being
    layered on top. Every rule named in the profile (and TRAIN_RULE) runs with JOB_CPUS threads.
    """
    profile = yaml.safe_load((project / "workflow/profiles/slurm/config.yaml").read_text())

    def cap(resources: dict) -> dict:
        resources = dict(resources or {})
        if "cpus_per_task" in resources:
            resources["cpus_per_task"] = JOB_CPUS
        if "mem_mb" in resources:
            resources["mem_mb"] = min(int(resources["mem_mb"]), JOB_MEM_MB)
        if "gpu" in resources:  # the node has one (device-less) GPU
            resources["gpu"] = min(int(resources["gpu"]), 1)
        return resources

    profile["default-resources"] = cap(profile.get("default-resources"))
    profile["set-resources"] = {rule: cap(res) for rule, res in (profile.get("set-resources") or {}).items()}
    rules = {*profile["set-resources"], *(profile.get("set-threads") or {}), TRAIN_RULE}
    profile["set-threads"] = {rule: JOB_CPUS for rule in sorted(rules)}
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return profile


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the daemon's process group (it was started in its own session), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def _wait_for(check, timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def _prerequisites() -> dict[str, str]:
    """The commands the cluster needs, or a skip saying what is missing."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the SLURM test cluster runs on Linux only")
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")
    pytest.importorskip("snakemake_executor_plugin_slurm_jobstep", reason="slurm-jobstep plugin not installed")
    bins = {name: _find(name) for name in (*DAEMONS, *CLIENTS, "munge")}
    missing = sorted(name for name, path in bins.items() if path is None)
    if missing:
        pytest.skip(f"SLURM or munge not installed (missing {', '.join(missing)}; "
                    "Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root (SlurmUser=root, slurmd starts jobs): not root")
    return bins


@pytest.fixture
def project(tmp_path):
    return _project_copy(tmp_path)


@pytest.fixture
def slurm_cluster(tmp_path_factory, project) -> Cluster:
    """munged, slurmctld and slurmd on localhost with the profile's partitions; all stopped afterwards."""
    bins = _prerequisites()
    hardware = _node_hardware(bins["slurmd"])
    memory = int(hardware["RealMemory"]) * 9 // 10  # below what slurmd measures, else the node is invalid
    if memory < 2 * JOB_MEM_MB:
        pytest.skip(f"{memory} MB of memory for the test node, {2 * JOB_MEM_MB} MB needed")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "bin"):
        (root / sub).mkdir()
    (root / "plugstack.conf").write_text("")  # none of /etc/slurm/plugstack.conf.d
    # munged requires every directory above its socket to be searchable by all (pytest's basetemp is not):
    # socket and key in a directory of their own under the system tmp dir.
    munge_dir = Path(tempfile.mkdtemp(prefix="mclrec-munge-"))
    munge_dir.chmod(0o755)
    (munge_dir / "key").mkdir(mode=0o700)
    key = munge_dir / "key" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = munge_dir / "munge.socket"

    profile = yaml.safe_load((project / "workflow/profiles/slurm/config.yaml").read_text())
    partitions = _profile_partitions(profile)
    node = hardware["NodeName"]
    conf = root / "slurm.conf"
    conf.write_text(string.Template((HERE / "slurm.conf.in").read_text()).substitute(
        root=root, munge_socket=socket_path, ctld_port=_free_port(), slurmd_port=_free_port(), node=node,
        cpus=hardware["CPUs"], boards=hardware.get("Boards", 1), sockets=hardware.get("SocketsPerBoard", 1),
        cores=hardware.get("CoresPerSocket", hardware["CPUs"]), threads=hardware.get("ThreadsPerCore", 1),
        memory=memory, partitions="\n".join(
            f"PartitionName={name} Nodes={node} Default={'YES' if default else 'NO'} MaxTime=INFINITE State=UP"
            for name, default in partitions.items())))
    (root / "gres.conf").write_text(f"NodeName={node} Name=gpu Count=1 File=/dev/null\n")
    shutil.copy(HERE / "srun", root / "bin" / "srun")
    (root / "bin" / "srun").chmod(0o755)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env.update(SLURM_CONF=str(conf), MCLREC_TEST_SLURM_CONF=str(conf), MCLREC_TEST_SRUN=bins["srun"],
               PATH=os.pathsep.join([str(root / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")]))
    cluster = Cluster(root=root, conf=conf, env=env, bins=bins, partitions=partitions)
    daemons: list[subprocess.Popen] = []
    logs = root / "log"

    def node_state() -> str:
        proc = subprocess.run([bins["sinfo"], "-h", "-N", "-n", node, "-o", "%T"], check=False,
                              capture_output=True, text=True, env=env, timeout=30)
        return proc.stdout.strip().split("\n")[0] if proc.returncode == 0 else ""

    try:
        daemons.append(_start([bins["munged"], "-F", f"--socket={socket_path}", f"--key-file={key}",
                               f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={logs / 'munged.log'}",
                               f"--seed-file={munge_dir / 'key' / 'munged.seed'}"], logs / "munged.out", env))
        if not _wait_for(lambda: socket_path.exists() or daemons[0].poll() is not None, 15) \
                or daemons[0].poll() is not None:
            pytest.skip(f"munged did not start:\n{_tail(logs / 'munged.out')}")
        daemons.append(_start([bins["slurmctld"], "-D"], logs / "slurmctld.out", env))
        daemons.append(_start([bins["slurmd"], "-D"], logs / "slurmd.out", env))
        if not _wait_for(lambda: node_state() in {"idle", "mixed", "allocated"}, 60, 1.0):
            pytest.skip(f"the SLURM node did not come up (state '{node_state()}'):\n"
                        f"{_tail(logs / 'slurmctld.log')}\n{_tail(logs / 'slurmd.log')}")
        yield cluster
    finally:
        if len(daemons) == 3 and daemons[1].poll() is None:  # cancel what still runs, so no slurmstepd stays
            jobs = subprocess.run([bins["squeue"], "-h", "-o", "%i"], check=False, capture_output=True,
                                  text=True, env=env, timeout=30).stdout.split()
            if jobs:
                subprocess.run([bins["scancel"], *jobs], check=False, env=env, timeout=30)
                _wait_for(lambda: not subprocess.run([bins["squeue"], "-h", "-t", "R,CG", "-o", "%i"],
                                                     check=False, capture_output=True, text=True,
                                                     env=env, timeout=30).stdout.split(), 30, 1.0)
        for proc in reversed(daemons):
            _stop(proc)
        shutil.rmtree(munge_dir, ignore_errors=True)


def _sbatch_calls(output: str) -> dict[str, list[str]]:
    """The sbatch command lines the executor ran (--verbose), by rule, without the wrapped command."""
    calls: dict[str, list[str]] = {}
    for line in re.findall(r"^sbatch call: (sbatch .*)$", output, re.MULTILINE):
        options = line.split(" --wrap=", 1)[0]
        comment = shlex.split(re.search(r"--comment (\S+)", options).group(1))[0]
        rule = comment.removeprefix("rule_").split("_wildcards_", 1)[0]
        calls.setdefault(rule, []).append(options)
    return calls


def _gpu_requests(options: str) -> list[str]:
    return re.findall(r"--gpus(?:-per-\w+)?[= ]\S+|--gres[= ]\S*gpu\S*", options)


def test_profile_names_only_existing_rules(project):
    """A profile entry for a rule the workflow lacks is silently ignored by Snakemake (a renamed training rule
    would lose its GPU): every rule named in the SLURM profile must exist."""
    profile = yaml.safe_load((project / "workflow/profiles/slurm/config.yaml").read_text())
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    proc = subprocess.run(["snakemake", "--list-rules"], check=False, cwd=project, capture_output=True, text=True,
                          env={**os.environ, "PATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rules = set(proc.stdout.split())
    named = {*(profile.get("set-resources") or {}), *(profile.get("set-threads") or {})}
    assert named <= rules, f"workflow/profiles/slurm/config.yaml names rules the workflow lacks: {named - rules}"
    assert TRAIN_RULE in rules and (profile.get("set-resources") or {}).get(TRAIN_RULE, {}).get("gpu")


def test_synthetic_demo_through_sbatch(project, slurm_cluster, tmp_path):
    cluster = slurm_cluster
    profile = _test_profile(project, tmp_path / "profile")
    cmd = ["snakemake", "--workflow-profile", str(tmp_path / "profile"),
           "--slurm-status-command", "squeue",  # no slurmdbd: sacct cannot answer (module docstring)
           "--slurm-init-seconds-before-status-checks", "2",  # poll often: jobs take seconds here, not hours
           "--slurm-keep-successful-logs", "--verbose", TARGET]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, check=False, cwd=project, capture_output=True, text=True, env=cluster.env,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        out = "".join(o if isinstance(o, str) else o.decode(errors="replace") for o in (e.stdout, e.stderr) if o)
        pytest.fail(f"{shlex.join(cmd)} ran past {RUN_TIMEOUT_S} s:\n{out[-4000:]}\n"
                    f"{_tail(cluster.root / 'log' / 'slurmctld.log')}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{output[-5000:]}\n" \
                                 f"{_tail(cluster.root / 'log' / 'slurmctld.log')}"
    print(f"snakemake --executor slurm: {time.monotonic() - started:.0f} s")

    # The results: a training and an evaluation happened.
    result = json.loads((project / TARGET).read_text())
    assert (result["dataset"], result["variant"]) == ("synthetic", "mclrec")
    test = result["metrics"]["test"]
    assert "HR@10" in test and all(0 <= value <= 1 for value in test.values())

    # Each rule instance was one sbatch call as the profile asks: partition, 1 CPU, the GPU for the training
    # only, requested once (--gpus=1 from `gpu: 1`; a `gres: gpu:1` beside it would request it twice).
    calls = _sbatch_calls(output)
    assert Counter({rule: len(c) for rule, c in calls.items()}) == Counter(dict.fromkeys(TARGET_RULES, 1))
    resources = profile["set-resources"]
    for rule, (options,) in calls.items():
        partition = resources.get(rule, {}).get("slurm_partition", profile["default-resources"]["slurm_partition"])
        assert f" -p {partition} " in options and f"--cpus-per-task={JOB_CPUS}" in options, options
        assert len(_gpu_requests(options)) == (1 if rule == TRAIN_RULE else 0), options
    assert _gpu_requests(calls[TRAIN_RULE][0]) == ["--gpus=1"]

    # SLURM ran them: every job of this run (the job name is the run id) completed, the training on its
    # partition with one GPU; the training's rule ran with srun inside its allocation.
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", output))
    squeue = subprocess.run([cluster.bins["squeue"], "-h", "--states=all", "--name", run_id, "-O",
                             "JobID:20,State:20,Partition:40,tres-per-job:40,Comment:400"],
                            check=False, capture_output=True, text=True, env=cluster.env, timeout=30)
    jobs = {fields[0]: fields[1:] for fields in map(str.split, squeue.stdout.splitlines())}
    assert set(jobs) == set(submitted), squeue.stdout
    assert {state for state, *_ in jobs.values()} == {"COMPLETED"}, squeue.stdout
    (train_job,) = [job for job, (_, _, _, comment) in jobs.items() if comment.startswith(f"rule_{TRAIN_RULE}_")]
    assert jobs[train_job][1:3] == [resources[TRAIN_RULE]["slurm_partition"], "gres:gpu:1"], squeue.stdout
    train_log = Path(submitted[train_job]).read_text(errors="replace")
    assert re.search(r"The call for this job is: srun .*--gpus=1", train_log), train_log[-3000:]
