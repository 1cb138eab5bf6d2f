"""Data-parallel training (gloo, 2 CPU processes) trains the weights of one process with the same global batch."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from metadg.engine import distributed
from metadg.engine.batcher import DomainBatcher
from metadg.engine.checkpoint import read_checkpoint
from metadg.config import build_experiment
from metadg.engine.resume import StopRequested
from metadg.engine.trainer import Trainer

WORLD = 2
PER_RANK = 4  # batch_per_domain of each rank; the single-process reference uses WORLD × this
# Dropout and LayerDrop draw different masks for a batch of 8 than for two of 4: off, so only the data split differs.
NO_DROPOUT = {k: 0.0 for k in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",
                                "layerdrop", "final_dropout")}


def _config(tiny_config: dict, tmp_path: Path, name: str, algorithm: dict, adapter: dict, tracking: bool = False) -> dict:
    cfg = copy.deepcopy(tiny_config)
    cfg["name"] = name
    cfg["model"]["backbone"]["config"] = NO_DROPOUT
    cfg["algorithm"], cfg["adapter"] = algorithm, adapter
    # One validation, at the last step: the best checkpoint holds the final weights.
    cfg["train"].update({"steps": 4, "eval_every": 4, "batch_per_domain": PER_RANK, "grad_clip": 1.0})
    if tracking:
        cfg["tracking"] = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "ddp"}
    return cfg


def _single(cfg: dict, out: Path) -> dict[str, torch.Tensor]:
    # The reference: one process, the global batch (WORLD × PER_RANK per domain), tracking off.
    cfg = copy.deepcopy(cfg)
    cfg["train"]["batch_per_domain"] = WORLD * PER_RANK
    cfg["tracking"] = {"enabled": False}
    result = Trainer(build_experiment(cfg), run_dir=out / cfg["name"]).fit()
    assert result.best_step == cfg["train"]["steps"]
    return read_checkpoint(out / cfg["name"] / "checkpoints" / "best")[0]


def _record_writes(watched: str, writes: list[str]):
    # An audit hook sees every file a rank opens for writing, every folder it
    # creates or renames and every SQLite store it connects to, below `watched`.
    def hook(event: str, args: tuple) -> None:
        path = None
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
            path = args[0] if writing else None
        elif event in ("os.mkdir", "os.rename", "os.remove", "sqlite3.connect"):
            path = args[0]
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(watched):
            writes.append(f"{event} {path}")

    return hook


class _SignalOnRank1(Trainer):
    # SIGINT reaches rank 1 alone after step `stop_at`: every rank must stop after that same step.
    stop_at = 2

    def _train_step(self) -> dict[str, float]:
        metrics = super()._train_step()
        if self.dist.rank == 1 and self.loop.step == self.stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics


def _rank_main(rank: int, store: str, watched: str, configs: list[dict], queue) -> None:
    # One rank: train each config until the signal, resume its run folder; report weights and what the rank wrote.
    torch.set_num_threads(1)
    writes: list[str] = []
    sys.addaudithook(_record_writes(watched, writes))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    cpu = torch.device("cpu")
    # Rank 0's early stop and a signal that reached rank 1 only are everyone's decisions.
    decisions = [distributed.decide(rank == 0, None, cpu), distributed.decide(False, signal.SIGTERM if rank else None, cpu)]
    try:
        distributed.check_agree(rank, "the rank")
    except RuntimeError as exc:
        decisions.append(str(exc))
    runs = []
    for cfg in configs:
        cut = _SignalOnRank1(build_experiment(cfg))
        with pytest.raises(StopRequested) as stop:
            cut.fit()
        trainer = Trainer(build_experiment(cfg), run_dir=cut.run_dir)
        out = trainer.fit()
        weights = {k: v.detach().numpy().copy() for k, v in trainer.adapter.state_dict(trainer.model).items()}
        runs.append((stop.value.step, out.steps_done, out.run_dir, weights))
    dist.destroy_process_group()
    queue.put((rank, decisions, runs, writes))


def test_global_plan_is_split_evenly_across_ranks(tiny_config):
    exp = build_experiment(tiny_config)
    task = exp.task.build(seed=0)
    args = dict(partition=task.partition(task.train_set()), policy=task.sampling_policy(), crop_samples=8000, seed=3)
    whole = DomainBatcher(task.train_set(), batch_per_domain=WORLD * PER_RANK, **args).plan(5)
    shares = [DomainBatcher(task.train_set(), batch_per_domain=PER_RANK, rank=r, world_size=WORLD, **args).plan(5)
              for r in range(WORLD)]

    assert sorted(e for s in shares for e in s) == sorted(whole)
    for share in shares:  # each rank holds its part of every domain's bona fide and spoofs
        for d in {e[0] for e in whole}:
            assert sum(e[0] == d and e[1] == 0 for e in share) == PER_RANK // 2  # Draw 0: bona fide
            assert sum(e[0] == d and e[1] == 1 for e in share) == PER_RANK // 2  # Draw 1: its spoofs


def _assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for k in want:
        if k.endswith("k_proj.bias"):
            # Its true gradient is zero (a key bias shifts every attention logit of a query
            # alike), so AdamW turns float noise into ±lr steps: no exact reference exists.
            continue
        # AdamW amplifies summation-order noise in near-zero gradients: 1e-5 is 1/500 of one
        # lr-sized step (MLDG without its inner-gradient reduction is off by ~2e-2).
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_two_ranks_train_the_weights_of_one_process_with_the_global_batch(tiny_config, tmp_path):
    # MLDG × LoRA, first and second order, each stopped by a signal to rank 1 after step 2 and
    # resumed (ERM × full: the torchrun test). The tracked one logs to MLflow from rank 0 only.
    lora = {"name": "lora", "r": 4}
    configs = [_config(tiny_config, tmp_path, "mldg_lora", {"name": "mldg", "alpha": 0.1}, lora, tracking=True),
               _config(tiny_config, tmp_path, "mldg2_lora", {"name": "mldg", "alpha": 0.1, "first_order": False}, lora)]
    configs[1]["model"]["backbone"]["attn_implementation"] = "eager"  # twice differentiable
    store = tmp_path.parent / f"{tmp_path.name}-store"  # outside the watched folder
    store.mkdir()
    queue = mp.get_context("spawn").SimpleQueue()
    procs = mp.start_processes(_rank_main, args=(str(store / "rendezvous"), str(tmp_path), configs, queue),
                               nprocs=WORLD, join=False, start_method="spawn")
    got = {}
    while len(got) < WORLD:  # read while waiting: a rank blocks until its results leave the pipe
        if queue.empty():
            procs.join(timeout=0.5)  # raises with the rank's traceback if one failed
            continue
        rank, *report = queue.get()
        got[rank] = report
    while not procs.join():
        pass

    (decisions0, runs0, writes0), (decisions1, runs1, writes1) = got[0], got[1]
    assert decisions0 == decisions1 == [(True, None), (False, signal.SIGTERM), "ranks disagree on the rank: [0, 1] (rank order)"]
    assert writes0 and not writes1, writes1  # only rank 0 touches the run folders and MLflow
    for cfg, (stop0, steps0, run_dir, weights0), (stop1, steps1, _, weights1) in zip(configs, runs0, runs1):
        assert stop0 == stop1 == _SignalOnRank1.stop_at and steps0 == steps1 == cfg["train"]["steps"]
        for k in weights0:  # every rank steps on the same averaged gradient
            np.testing.assert_array_equal(weights0[k], weights1[k])
        want = _single(cfg, tmp_path / "single")
        _assert_same_weights(read_checkpoint(Path(run_dir) / "checkpoints" / "best")[0], want)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(configs[0]["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and "eval/all/eer" in runs[0].data.metrics  # the resumed run logged into the first one


def test_metadg_run_distributed_under_torchrun(tiny_config, tmp_path):
    cfg = _config(tiny_config, tmp_path, "erm_full", {"name": "erm"}, {"name": "full"})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "metadg", "run", "--distributed", "--nproc", str(WORLD), str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("run folder:") == 1  # rank 0 reports

    runs = Path(cfg["output_dir"])
    assert sorted(p.name for p in runs.iterdir()) == ["erm_full"]  # one run folder, not one per rank
    _assert_same_weights(read_checkpoint(runs / "erm_full" / "checkpoints" / "best")[0], _single(cfg, tmp_path / "single"))


def test_run_distributed_without_a_gpu_asks_for_the_number_of_processes(tiny_config, tmp_path, monkeypatch, capsys):
    from metadg.cli import main

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["run", "--distributed", str(path)]) == 2
    assert "--nproc" in capsys.readouterr().err
    assert not Path(tiny_config["output_dir"]).exists()


@pytest.mark.parametrize("command", ["bench", "search"])
def test_sweeps_refuse_to_run_under_torchrun(command, tmp_path, monkeypatch, capsys):
    from metadg.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it in every rank
    assert main([command, str(tmp_path / "any.yaml")]) == 2
    assert f"metadg {command} runs single-process" in capsys.readouterr().err
