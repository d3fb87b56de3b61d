"""The cluster path, run for real (slow): DDP over 2 CPU processes (gloo), a killed run that
the same command resumes, sweeps through submitit's local executor (SLURM's code path without
a cluster) with a preempted job that requeues itself, and W&B offline."""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import FAST
from ude.distill.cli import load_run
from ude.train import job as train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# Four Lotka-Volterra conditions; rk4 steps on the data's grid, so that a condition's trajectory
# is the same arithmetic whichever conditions share its batch (an adaptive solver picks one
# step size per batch: split runs would then agree only to its tolerance).
FOUR = "data.measurements.initial=[[0.44,4.6],[1.0,2.0],[2.0,1.0],[0.8,3.0]]"
# 8 epochs of Adam, then 2 of L-BFGS (whose line search must take the same path everywhere).
DDP_RUN = [
    FOUR,
    "solver=rk4",
    "trainer.max_epochs=10",
    "trainer.check_val_every_n_epoch=2",
    "optim.polish_epochs=2",
    "optim.warm_start_steps=200",
    "callbacks.progress.every=1",
    "distill=none",
    "logger=csv",
]
DDP = ["trainer=ddp", "trainer.devices=2"]


def probe(*overrides: str, log: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    """``python train.py`` with the probes of tests/train_probe.py, in its own session (so
    that a kill reaches every process of the run)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train_probe", *overrides],
        cwd=ROOT,
        env={**ENV, "UDE_PROBE_LOG": str(log), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s (a process left waiting?)\n{err}")
    return proc.returncode, out, err


def state(run_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"], ckpt["epoch"]


def log_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def epoch_losses(run_dir: Path, key: str) -> dict[int, float]:
    return {int(float(r["epoch"])): float(r[key]) for r in log_rows(run_dir) if r.get(key)}


def probe_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.is_file() else []


def all_exited(log: Path, wait: float = 30.0) -> bool:
    """Whether every process that noted its pid in ``log`` has exited (within ``wait`` s)."""
    pids = [int(line.split()[1]) for line in probe_lines(log) if line.startswith("pid ")]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and _not_zombie(p)]
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_and_resumes_after_a_kill(make_cfg, tmp_path):
    # one process, in this interpreter
    one = tmp_path / "one"
    train.train(make_cfg(*DDP_RUN, run_dir=one))

    # the same on 2 processes, each with 2 of the 4 conditions
    whole, log = tmp_path / "ddp", tmp_path / "ddp.log"
    rc, out, err = finish(probe(*DDP, *DDP_RUN, f"hydra.run.dir={whole}", log=log))
    assert rc == 0, err[-3000:]
    assert "ddp: 2 processes on the CPU (gloo); 4 training conditions, 2 per process" in out
    # one progress line per epoch, from the first process only
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == [
        f"{k}/10" for k in range(1, 11)
    ], out
    assert "sync_dist" not in err and "Initializing distributed" not in out + err
    # the warm start ran once, on the first process, and the second got its result
    assert [x for x in probe_lines(log) if x.startswith("warm_start")] == ["warm_start rank 0"]
    assert all_exited(log)

    # Same gradients, up to rounding: float64 sums of 2 + 2 conditions reduced across the
    # processes instead of one sum of 4 (relative 1e-16 per operation). 10 epochs of Adam and
    # L-BFGS amplify that to at most 3e-12 on parameters of size 1 here (measured: 3 % of the
    # tolerance below), while an error of weighting (a condition counted twice, a mean of
    # means, a prior counted once per process) moves them by 1e-3 or more.
    # (both saved as training ended, after its 10th epoch: ude.train.callbacks.Checkpoint)
    (ref, ref_epoch), (got, got_epoch) = state(one), state(whole)
    assert got_epoch == ref_epoch == 10
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=1e-9, atol=1e-12, msg=key)
    for key in ("train/loss", "train/mse", "val/mse"):
        ref_losses, got_losses = epoch_losses(one, key), epoch_losses(whole, key)
        assert got_losses.keys() == ref_losses.keys(), key
        for epoch, value in ref_losses.items():
            assert got_losses[epoch] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, epoch)
    ref_metrics = json.loads((one / "metrics.json").read_text())
    got_metrics = json.loads((whole / "metrics.json").read_text())
    assert got_metrics["train_nmse"] == pytest.approx(ref_metrics["train_nmse"], rel=1e-9)

    # killed (every process, as a cluster's SIGKILL) after its first checkpoint, then the
    # same command again: it resumes from the run directory's last.ckpt
    killed, log2 = tmp_path / "killed", tmp_path / "killed.log"
    command = [*DDP, *DDP_RUN, f"hydra.run.dir={killed}"]
    proc = probe(*command, log=log2)
    ckpt = killed / "checkpoints" / "last.ckpt"
    while not ckpt.is_file() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert all_exited(log2)
    assert not (killed / "metrics.json").exists(), "the run ended before the kill"
    first_epoch = state(killed)[1]
    assert first_epoch < 9
    rc, out, err = finish(probe(*command, log=log2))
    assert rc == 0, err[-3000:]
    assert f"resuming from {ckpt} (epoch {first_epoch + 1})" in out
    assert [x for x in probe_lines(log2) if x.startswith("warm_start")] == ["warm_start rank 0"]
    # the resumed run is the uninterrupted one (the same split: the same arithmetic)
    resumed, epoch = state(killed)
    assert epoch == 10
    for key, value in state(whole)[0].items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-12, atol=1e-14, msg=key)
    rows, expected = log_rows(killed), log_rows(whole)
    assert [(r["epoch"], r["step"]) for r in rows] == [(r["epoch"], r["step"]) for r in expected]
    for got_row, want in zip(rows, expected, strict=True):
        for key in ("train/loss", "val/mse"):
            if want[key]:
                assert float(got_row[key]) == pytest.approx(float(want[key]), rel=1e-12), key


@pytest.mark.slow
def test_ddp_a_nan_on_one_process_stops_every_process_with_exit_2(tmp_path):
    # one condition on 2 processes: the second has nothing to fit (a warning says so), and
    # its loss turns NaN from epoch 3 on; both undo that step and halve the rate together,
    # the validation after it fails too and both stop there; the first says why and exits 2
    run_dir, log = tmp_path / "run", tmp_path / "probe.log"
    overrides = [*DDP, *[a for a in FAST if a != "trainer.max_epochs=3"], "trainer.max_epochs=8"]
    overrides.append("optim.step_backs=1")
    rc, out, err = finish(
        probe(*overrides, f"hydra.run.dir={run_dir}", log=log, env={"UDE_PROBE_NAN": "1:3"})
    )
    assert rc == 2, err[-3000:]
    assert "ddp: 1 of 2 processes have no condition to fit (1 training conditions)" in out
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]  # the first process speaks for both
    assert "training stopped at epoch 3: loss became NaN/inf on 1 of 2 processes" in errors[0]
    assert f"last good checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'}" in errors[0]
    assert all_exited(log)  # no process left waiting in an all-reduce
    saved, epoch = state(run_dir)
    # written as epoch 3 ended (its step undone, its validation failed): epoch 2's parameters
    assert epoch == 4 and all(torch.isfinite(v).all() for v in saved.values())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "epoch 3: loss became NaN/inf on 1 of 2 processes" in metrics["stop_reason"]
    assert metrics["step_backs"] == 1


@pytest.mark.slow
def test_ddp_on_the_cpu_needs_a_number_of_processes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "trainer=ddp", f"hydra.run.dir={tmp_path}/run", *FAST],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "trainer.devices: on the CPU, devices=auto is one process" in proc.stderr


# A single-process run long enough to be killed in the middle (about 0.1 s an epoch).
LONG = [
    "trainer.max_epochs=40",
    "trainer.check_val_every_n_epoch=5",
    "callbacks.progress.every=1",
    "distill=none",
    "logger=csv",
]


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    while not path.is_file() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The same final parameters and the same log, epoch by epoch, as ``reference``'s."""
    (got, epoch), (want, ref_epoch) = state(run_dir), state(reference)
    assert epoch == ref_epoch
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-12, atol=1e-14, msg=key)
    rows, expected = log_rows(run_dir), log_rows(reference)
    assert [(r["epoch"], r["step"]) for r in rows] == [(r["epoch"], r["step"]) for r in expected]
    for got_row, want_row in zip(rows, expected, strict=True):
        for key in ("train/loss", "train/mse", "val/mse"):
            if want_row[key]:
                assert float(got_row[key]) == pytest.approx(float(want_row[key]), rel=1e-12)


@pytest.mark.slow
def test_a_killed_run_resumes_when_the_same_command_runs_again(make_cfg, tmp_path):
    whole = tmp_path / "whole"
    train.train(make_cfg(*LONG, run_dir=whole))

    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", *LONG, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    wait_for(ckpt, proc)
    proc.send_signal(signal.SIGTERM)  # what a cluster sends first
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = state(run_dir)[1] + 1
    assert "ude: stopped by SIGTERM at epoch" in err
    assert f"{ckpt} keeps epoch {stopped}; the same command resumes it" in err
    assert stopped < 40 and not (run_dir / "metrics.json").exists()

    again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"ude: resuming from {ckpt} (epoch {stopped})" in again.stdout
    assert_same_run(run_dir, whole)
    # a finished run is not trained again; other settings in its folder are refused
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "holds a finished run (metrics.json)" in done.stdout
    other = subprocess.run([*command, "optim.lr=0.002"], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert other.returncode == 2
    assert "holds a run with other settings (optim.lr: 0.001 -> 0.002)" in other.stderr


def _holder(path: Path) -> int | None:
    """The pid of a process that holds ``path`` open (Linux /proc), or None."""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_a_submitit_sweep_runs_both_jobs_and_a_preempted_job_requeues_and_resumes(
    make_cfg, tmp_path
):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "train.py", "-m", "seed=0,1", "hydra/launcher=submitit_local",
         f"hydra.sweep.dir={sweep}", *LONG],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # preempt job 0 after its first checkpoint, as SLURM does (submitit's signal, USR2):
    # submitit checkpoints the job and requeues it; it resumes from its run directory
    ckpt, log = sweep / "0" / "checkpoints" / "last.ckpt", sweep / "0" / "train.log"
    wait_for(ckpt, proc)
    pid = None
    while pid is None and proc.poll() is None:
        pid = _holder(log)
    assert pid is not None, "job 0's process was not found"
    os.kill(pid, signal.SIGUSR2)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    for num, seed in ((0, 0), (1, 1)):
        job = sweep / str(num)
        config = (job / "config.yaml").read_text()
        assert f"\nseed: {seed}\n" in "\n" + config and "  seed: 0\n" in config  # data.seed
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["epochs"] == 40 and metrics["stop_reason"] is None
    # the preempted job ran twice and continued where it was stopped: the same parameters
    # and log as the same run uninterrupted
    text = log.read_text()
    assert text.count("ude: resuming from") == 1, text
    whole = tmp_path / "whole"
    train.train(make_cfg(*LONG, "seed=0", run_dir=whole))
    assert_same_run(sweep / "0", whole)
    # the seeds changed the initialisation, not the data
    first, second = state(sweep / "0")[0], state(sweep / "1")[0]
    assert not torch.equal(first["model.networks.0.layers.0.weight"],
                           second["model.networks.0.layers.0.weight"])  # fmt: skip
    data = [load_run(sweep / str(num), [])[2].values for num in (0, 1)]
    np.testing.assert_array_equal(data[0], data[1])
    assert (sweep / "0" / "plots" / "fit.png").is_file()


def wandb_records(run_folder: Path) -> list:
    """The records of an offline W&B run (its ``run-<id>.wandb``: a header, then LevelDB-log
    framed protobuf records in 32 KiB blocks), read without wandb's service or a network."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_folder.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # a whole record
            chunks.append(chunk)
        elif kind == 2:  # first, middle, last pieces of one
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    return [pb.Record.FromString(c) for c in chunks]


def _logged_key(item) -> str:
    """The key a value was logged under (a logged image or table is stored as the fields of
    a dict under its key: ``[key, "_type"]``, ...)."""
    return item.key or "/".join(item.nested_key[:-1])


def wandb_contents(run_folder: Path) -> dict:
    """What an offline run holds: config keys, logged keys, summary keys, artifacts
    ``{name: (type, [file, ...])}``."""
    out: dict = {"config": {}, "history": set(), "summary": set(), "artifacts": {}}
    for record in wandb_records(run_folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["config"].update(
                {u.key: json.loads(u.value_json) for u in record.run.config.update}
            )
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            out["history"] |= {_logged_key(item) for item in record.history.item}
        elif kind == "summary":
            out["summary"] |= {_logged_key(u) for u in record.summary.update}
        elif kind == "artifact":
            files = [entry.path for entry in record.artifact.manifest.contents]
            out["artifacts"][record.artifact.name] = (record.artifact.type, files)
    return out


def offline_env(tmp_path: Path) -> dict:
    """W&B offline, every folder of its own under ``tmp_path``: nothing goes to the network
    or the home directory."""
    return {
        **ENV,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **{k: str(tmp_path / k.lower()) for k in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR",
                                                   "WANDB_DATA_DIR")},
    }  # fmt: skip


@pytest.mark.slow
def test_wandb_offline_holds_config_plots_equations_twin_and_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "logger=wandb", "trainer.max_epochs=30",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"wandb sync {folder}" in proc.stdout
    got = wandb_contents(folder)
    # the resolved config, as hyperparameters
    assert got["config"]["optim"]["lr"] == 0.001 and got["config"]["data"]["seed"] == 0
    assert got["config"]["model"]["spec"] == "lotka_volterra"
    # the figures, as images (their files in the run's media folder)
    plots = {"fit", "missing_terms", "distilled_terms", "forecast"}
    assert {f"plots/{p}" for p in plots} <= got["history"], got["history"]
    images = {p.name.split("_")[0] for p in (folder / "files/media/images/plots").glob("*.png")}
    assert images == {"fit", "missing", "distilled", "forecast"}
    # the twin's equations, as a table
    assert "twin/equations" in got["history"]
    (table,) = (folder / "files/media/table/twin").glob("equations_*.table.json")
    rows = json.loads(table.read_text())
    twin = json.loads((run_dir / "twin.json").read_text())
    assert rows["columns"] == ["state", "equation", "discovered"]
    assert [r[0] for r in rows["data"]] == list(twin["equations"])
    assert rows["data"][0][1] == f"dx/dt = {twin['equations']['x']}"
    # twin.json and the checkpoint, as artifacts
    kinds = {name.split("-")[0]: value for name, value in got["artifacts"].items()}
    assert kinds["twin"][0] == "twin" and "twin.json" in kinds["twin"][1]
    assert kinds["checkpoint"] == ("model", ["last.ckpt"])
    # the final numbers in the summary
    assert {"train_nmse", "epochs", "timings/warm_start_seconds"} <= got["summary"]


@pytest.mark.slow
def test_wandb_offline_holds_the_benchmark_summary_table(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "benchmark.py", "suite=tiny", "suite.methods=[sindy]", "logger=wandb",
         f"out_dir={out}"],
        cwd=ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = (out / "wandb").glob("offline-run-*")
    got = wandb_contents(folder)
    assert {"benchmark/summary", "benchmark/results"} <= got["history"]
    assert got["config"]["suite"]["name"] == "tiny"
    (summary,) = (folder / "files/media/table/benchmark").glob("summary_*.table.json")
    table = json.loads(summary.read_text())
    assert table["columns"][0] == "method" and [r[0] for r in table["data"]] == ["sindy"]
    reports = [files for kind, files in got["artifacts"].values() if kind == "report"]
    assert reports == [["report.md", "results.csv"]]
