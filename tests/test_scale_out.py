"""Scale-out that survives faults: two launchers, elastic restarts, a lost rank, seeded random weights, uneven data.

Every run is a real ``torchrun`` on 127.0.0.1 (gloo, one thread a process) of the README's
multi-node commands: resnet18 fine-tuned for two epochs (deterministic) and random-weight
features, on a folder of ten 12x12 images in two classes at 32x32. Starting a process costs ~3 s
(importing torch), so each run serves several tests through module fixtures, and a run of
several commands runs them in one process group (a job script that calls the CLI in turn).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backbones.apps.extract.store import INDEX_NAME, MANIFEST_NAME, shard_path
from backbones.apps.finetune.checkpoint import CHECKPOINT_DIR, latest_checkpoint

from .helpers import REPO_ROOT
from .image_folders import make_image_folder

# One xdist worker runs them all: the module's runs then happen once.
pytestmark = pytest.mark.xdist_group("scale-out")

LIMIT = 180  # hard limit of any one launcher, in seconds
ENDPOINT = "host0:29500"

# The job script: the CLI commands of argv[1] (JSON) in turn, in one process group when there are
# several. Test hooks, read only here. DIED (a file) makes a run faulty: every process meets at a
# barrier after the epoch-1 checkpoint on the first attempt (so rank 0 has committed it), and there
# this launcher's worker DIE_LOCAL_RANK writes its rank and the time to DIED and dies by SIGKILL.
# DIE_IN_EXTRACT: the same on the second attempt once every process has written its first shard,
# the others then waiting to be stopped (the attempt completes exactly those). SHARD_LOG: attempt and
# shard of every shard written.
JOB = r"""
import json, os, signal, sys, time
import torch.distributed as dist
import backbones.apps.extract.runner as runner
import backbones.apps.finetune.run as run
from backbones.apps.cli.main import main

attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
faulty = "DIED" in os.environ
dies = faulty and os.environ.get("LOCAL_RANK") == os.environ.get("DIE_LOCAL_RANK")
written = []

def fault():
    dist.barrier()
    if dies:
        with open(os.environ["DIED"], "w") as died:
            died.write(f"{os.environ['RANK']} {time.time()}")
        os.kill(os.getpid(), signal.SIGKILL)

save_checkpoint, write_shard = run.save_checkpoint, runner.write_shard

def save_then_die(folder, epoch, *args, **kwargs):
    save_checkpoint(folder, epoch, *args, **kwargs)
    if faulty and attempt == 0 and epoch == 1:
        fault()

def write_then_die(out, shard, *args, **kwargs):
    path = write_shard(out, shard, *args, **kwargs)
    written.append(shard)
    if os.environ.get("SHARD_LOG"):
        with open(os.environ["SHARD_LOG"], "a") as log:
            log.write(f"{attempt} {shard}\n")
    if faulty and attempt == 1 and os.environ.get("DIE_IN_EXTRACT") and len(written) == 1:
        fault()
        time.sleep(600)
    return path

run.save_checkpoint, runner.write_shard = save_then_die, write_then_die
commands = json.loads(sys.argv[1])
if len(commands) > 1:
    dist.init_process_group("gloo")
status = 0
for command in commands:
    status = status or main(command)
if len(commands) > 1:
    dist.destroy_process_group()
sys.exit(status)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _readme_commands() -> list[list[str]]:
    """The README's multi-node commands (node rank 0), as argument lists."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith("torchrun ") and ENDPOINT in line]
    assert len(lines) == 2, lines  # finetune, then extract
    return [shlex.split(line) for line in lines]


def _launcher(
    command: list[str], *, port: int, node_rank: int | None = None, job: list[str] | None = None, extra: tuple = ()
) -> list[str]:
    """A README ``torchrun`` command as this interpreter runs it, on 127.0.0.1:``port``.

    ``job``: the job script and its argument in place of ``-m backbones ...``; ``extra``: more
    launcher options (``--max-restarts 2``).
    """
    args = [arg.replace(ENDPOINT, f"127.0.0.1:{port}") for arg in command[1:]]
    if node_rank is not None:
        args[args.index("--node-rank") + 1] = str(node_rank)
    if job is not None:
        args[args.index("-m") :] = job
    return [sys.executable, "-m", "torch.distributed.run", *extra, *args]


def _single_node(command: list[str], port: int, nproc: int, job: list[str], extra: tuple = ()) -> list[str]:
    """The README's launcher options for one launcher of ``nproc`` processes running the job script."""
    options = command[1 : command.index("-m")]
    node = options.index("--node-rank")
    del options[node : node + 2]
    options[options.index("--nnodes") + 1] = "1"
    options[options.index("--nproc-per-node") + 1] = str(nproc)
    return _launcher(["torchrun", *options, "-m"], port=port, job=job, extra=extra)


def _cli_args(command: list[str]) -> list[str]:
    """What follows ``-m backbones`` in a README command."""
    return command[command.index("backbones") + 1 :]


def _job(workspace: Path, commands: list[list[str]]) -> list[str]:
    """The job script's command line running the CLI ``commands`` in turn."""
    return [str(workspace / "job.py"), json.dumps(commands)]


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1", **extra)


@dataclass
class _Launched:
    """What a launcher did: its exit status, what it printed, and when it ended (``time.time()``)."""

    returncode: int
    stdout: str
    stderr: str
    ended: float


def _wait_for_listener(port: int, process: subprocess.Popen) -> None:
    # The store's host is the launcher that binds the endpoint first: on one machine, the one started alone.
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"the first launcher never served 127.0.0.1:{port}")


def _run_launchers(
    commands: list[list[str]], cwd: Path, envs: list[dict[str, str]], *, host_first: int | None = None
) -> list[_Launched]:
    """Start every launcher, wait for all (within LIMIT seconds), return what each did.

    ``host_first``: the endpoint's port, when the first launcher must serve it before the others start.
    """
    logs = cwd / "launchers"
    logs.mkdir(exist_ok=True)
    started = []
    try:
        for index, (command, env) in enumerate(zip(commands, envs, strict=True)):
            with open(logs / f"{index}.out", "w") as out, open(logs / f"{index}.err", "w") as err:
                started.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err))
            if index == 0 and host_first is not None:
                _wait_for_listener(host_first, started[0])
        ended: dict[int, float] = {}
        deadline = time.monotonic() + LIMIT
        while len(ended) < len(started) and time.monotonic() < deadline:
            ended.update((i, time.time()) for i, p in enumerate(started) if i not in ended and p.poll() is not None)
            time.sleep(0.05)
        assert len(ended) == len(started), f"a launcher ran past {LIMIT} s"
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [
        _Launched(p.returncode, (logs / f"{i}.out").read_text(), (logs / f"{i}.err").read_text(), ended[i])
        for i, p in enumerate(started)
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared folder: ``photos/`` (5 blue and 5 red images), the job script, and one subfolder per run."""
    root = tmp_path_factory.mktemp("scale-out")
    make_image_folder(root / "photos", per_class=5)
    (root / "job.py").write_text(JOB)
    return root


def _run_folder(workspace: Path, name: str) -> Path:
    """A run's working folder whose ``photos/`` is the shared one (resolved to the same path: the same plan)."""
    folder = workspace / name
    folder.mkdir()
    (folder / "photos").symlink_to(workspace / "photos")
    return folder


@pytest.fixture(scope="module")
def one_launcher(workspace: Path) -> Path:
    """The reference: the README's fine-tune and extraction on one launcher of 2 processes, uninterrupted."""
    folder = _run_folder(workspace, "one-launcher")
    commands = _readme_commands()
    job = _job(workspace, [_cli_args(c) for c in commands])
    (done,) = _run_launchers([_single_node(commands[0], _free_port(), 2, job)], folder, [_env()])
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def two_launchers(workspace: Path) -> Path:
    """The README's two commands exactly, each on two launchers of 1 process meeting at a c10d rendezvous."""
    folder = _run_folder(workspace, "two-launchers")
    for command in _readme_commands():
        port = _free_port()
        launchers = [_launcher(command, port=port, node_rank=rank) for rank in (0, 1)]
        for done in _run_launchers(launchers, folder, [_env(), _env()]):
            assert done.returncode == 0, done.stderr[-3000:]
    return folder


@dataclass
class _Restarted:
    """A run under ``torchrun --max-restarts 2`` whose worker was killed twice, and what it printed."""

    folder: Path
    launched: _Launched


@pytest.fixture(scope="module")
def restarted(workspace: Path) -> _Restarted:
    """The README's fine-tune and extraction (no ``--resume``) on one launcher of 2 processes restarting twice.

    Rank 1 is killed after the epoch-1 checkpoint on the first attempt, and after its first shard
    on the second.
    """
    folder = _run_folder(workspace, "restarted")
    commands = _readme_commands()
    job = _job(workspace, [_cli_args(c) for c in commands])
    launcher = _single_node(commands[0], _free_port(), 2, job, extra=("--max-restarts", "2"))
    faults = {"DIED": str(folder / "died"), "DIE_LOCAL_RANK": "1", "DIE_IN_EXTRACT": "1"}
    (done,) = _run_launchers([launcher], folder, [_env(**faults, SHARD_LOG=str(folder / "shards.log"))])
    assert done.returncode == 0, done.stderr[-3000:]
    return _Restarted(folder, done)


TIMEOUT = 20  # --timeout of the run that loses a rank, in seconds


@dataclass
class _LostRank:
    """A two-launcher fine-tune (no restarts) whose node-1 worker died after the epoch-1 checkpoint."""

    folder: Path
    survivor: _Launched
    dead_rank: int
    died_at: float


@pytest.fixture(scope="module")
def lost_rank(workspace: Path) -> _LostRank:
    """The README's two-launcher fine-tune with ``--timeout 20``; node 0 serves the store, node 1's worker dies."""
    folder = _run_folder(workspace, "lost-rank")
    finetune = _readme_commands()[0]
    job = _job(workspace, [[*_cli_args(finetune), "--timeout", str(TIMEOUT)]])
    port = _free_port()
    launchers = [_launcher(finetune, port=port, node_rank=rank, job=job) for rank in (0, 1)]
    died = folder / "died"
    envs = [_env(DIED=str(died)), _env(DIED=str(died), DIE_LOCAL_RANK="0")]
    survivor, dead = _run_launchers(launchers, folder, envs, host_first=port)
    assert dead.returncode != 0 and died.exists(), dead.stderr[-3000:]
    rank, died_at = died.read_text().split()
    return _LostRank(folder, survivor, int(rank), float(died_at))


@pytest.fixture(scope="module")
def resumed(workspace: Path, lost_rank: _LostRank) -> _Launched:
    """``finetune --resume`` of the lost-rank run on one launcher of 2 processes (issue 32's crashing resume)."""
    finetune = _readme_commands()[0]
    job = _job(workspace, [[*_cli_args(finetune), "--resume"]])
    (done,) = _run_launchers([_single_node(finetune, _free_port(), 2, job)], lost_rank.folder, [_env()])
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _assert_same_shards(actual: Path, expected: Path) -> None:
    manifest = json.loads((expected / MANIFEST_NAME).read_text())
    for shard in range(manifest["shards"]):
        # Tensors bit-identical; the files' metadata order is issue 32 item 16's, not this test's.
        mine, theirs = load_file(shard_path(actual, shard)), load_file(shard_path(expected, shard))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), shard
    assert (actual / INDEX_NAME).read_bytes() == (expected / INDEX_NAME).read_bytes()


def test_two_launchers_fine_tune_the_weights_one_launcher_of_two_processes_does(
    one_launcher: Path, two_launchers: Path
) -> None:
    reference = load_file(one_launcher / "runs/photos/model.safetensors")
    assert _max_difference(load_file(two_launchers / "runs/photos/model.safetensors"), reference) <= 1e-6
    records = [json.loads(line) for line in (two_launchers / "runs/photos/metrics.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in records] == [2, 2]


def test_two_launchers_extract_the_shards_one_launcher_of_two_processes_writes(
    one_launcher: Path, two_launchers: Path
) -> None:
    manifest = json.loads((two_launchers / "features" / MANIFEST_NAME).read_text())
    assert manifest["complete"] and manifest["shards"] == 3 and manifest["images"] == 10
    _assert_same_shards(two_launchers / "features", one_launcher / "features")


# Not yet passing (issue 31): a group torchrun restarts can fail to start, its gloo mesh reading the killed
# attempt's addresses left in the agent's shared store (this torch adds no per-attempt prefix). The fix
# (a fresh store per attempt, agreed through the agent's) is to be made in backbones/apps/parallel.py.
_STALE_STORE = pytest.mark.skip(reason="issue 31: restarted groups read stale gloo keys; fix pending in parallel.py")


@_STALE_STORE
def test_a_group_torchrun_restarts_resumes_the_fine_tune_by_itself_and_ends_with_the_uninterrupted_weights(
    one_launcher: Path, restarted: _Restarted
) -> None:
    assert (restarted.folder / "died").exists()  # the kill happened
    assert "torchrun restarted the group: resuming runs/photos after epoch 1 of 2" in restarted.launched.stdout
    reference = load_file(one_launcher / "runs/photos/model.safetensors")
    assert _max_difference(load_file(restarted.folder / "runs/photos/model.safetensors"), reference) <= 1e-6


@_STALE_STORE
def test_a_restarted_extraction_redoes_only_the_shards_the_killed_attempt_left_unfinished(
    one_launcher: Path, restarted: _Restarted
) -> None:
    log = [tuple(map(int, line.split())) for line in (restarted.folder / "shards.log").read_text().splitlines()]
    # The second attempt completed each process's first shard (0 and 1) and was killed; the third did shard 2.
    assert sorted(log) == [(1, 0), (1, 1), (2, 2)]
    _assert_same_shards(restarted.folder / "features", one_launcher / "features")


def test_without_restarts_a_lost_rank_stops_the_others_within_the_timeout_naming_it(lost_rank: _LostRank) -> None:
    survivor = lost_rank.survivor
    assert survivor.returncode != 0
    assert survivor.ended - lost_rank.died_at < TIMEOUT
    # What the worker printed comes before torchrun's own report of its failure (a traceback of torchrun's).
    printed = survivor.stderr.split("failed (exitcode")[0].splitlines()[:-1]
    errors = [line for line in printed if line.startswith("backbones finetune: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in printed), survivor.stderr[-3000:]
    assert f"rank {lost_rank.dead_rank} of 2 is gone" in errors[0] and "--resume" in errors[0], errors[0]


def test_a_lost_rank_leaves_only_the_complete_epoch_1_checkpoint(lost_rank: _LostRank) -> None:
    run = lost_rank.folder / "runs/photos"
    assert latest_checkpoint(run) == 1
    # No temporary (".epoch-0002.state.pt.ab12cd34.tmp") and nothing of epoch 2.
    assert all(p.name.startswith("epoch-0001.") for p in (run / CHECKPOINT_DIR).iterdir())
    assert not (run / "model.safetensors").exists()  # no final model of an unfinished run
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_two_process_resume_after_a_lost_rank_ends_with_the_uninterrupted_weights(
    one_launcher: Path, lost_rank: _LostRank, resumed: _Launched
) -> None:
    assert "resuming runs/photos after epoch 1 of 2" in resumed.stdout
    reference = load_file(one_launcher / "runs/photos/model.safetensors")
    assert _max_difference(load_file(lost_rank.folder / "runs/photos/model.safetensors"), reference) <= 1e-6
