"""DDP on CPU: 2 gloo processes under torchrun train what one process does with the same global
batch (SyncBN over both ranks), and both ranks end with identical weights.

Exactness is checked in float64 (agreement to 1e-10 over 6 SGD steps: the sharded batches, the
gradient average and the synchronised BatchNorm are the one-process computation). The float32 run
through ``pretrain_ann`` and the CLI agrees to 1e-4 after 4 steps: on MNIST the many identical
background pixels make training amplify float32 rounding (~1e-7 per step) by a few times per step.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spikebridge import cli, create_model, pipelines
from spikebridge.pipelines.ann import RegistryFamily, ann_neuron
from spikebridge.pipelines.context import RunContext
from spikebridge.pipelines.plan import build_plan
from spikebridge.train import distributed
from spikebridge.train.checkpoint import load_checkpoint
from spikebridge.utils import seed_everything

HERE = Path(__file__).parent
# a tiny real run: 64 digits, global batch 32 (16 per rank), 2 epochs of SGD with momentum, the
# sharpened-ReLU ANN (its schedule follows the epoch), random-shift augmentation, SyncBN, and
# precise BN (the statistics re-estimated over the 64 digits after each epoch)
FLAGS = [
    "--data", "mnist5k", "--model", "cnn", "--seed", "3", "--device", "cpu", "--no-progress",
    "--set", "ann.epochs=2", "--set", "ann.lr=0.01", "--set", "data.limit_train=64", "--set", "data.limit_test=64",
    "--set", "ann.batch_size=32", "--set", "ann.optimizer=sgd", "--set", "ann.schedule=step",
    "--set", "ann.milestones=[1]", "--set", "run.sync_bn=true", "--set", "ann.precise_bn=64",
]


def _torchrun(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "_ddp_worker.py"), str(out), *FLAGS]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _config(out: Path):
    args = cli.build_parser().parse_args(["pretrain", "--out", str(out), *FLAGS])
    return build_plan(cli.request(args, "pretrain")).config


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """One torchrun of ``_ddp_worker.py`` (2 gloo ranks) for the tests below."""
    out = tmp_path_factory.mktemp("ddp")
    done = _torchrun(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_the_global_batch(ddp_run, tmp_path):
    for rank in (0, 1):
        exact = json.loads((ddp_run / f"float64_rank{rank}.json").read_text())
        assert len(exact["grad"]) == 6 and exact["moved"] > 1e-2
        assert max(exact["grad"]) < 1e-10 and max(exact["weight"]) < 1e-10, exact
    rank0 = load_file(str(ddp_run / "rank0.safetensors"))
    rank1 = load_file(str(ddp_run / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # parameters and BN running statistics, bit for bit
        assert torch.equal(rank0[key], rank1[key]), key

    # one process, the same global batch of 32 (SyncBN does nothing without a process group)
    cfg = _config(tmp_path / "single")
    assert cfg.run.sync_bn and cfg.ann.batch_size == 32 and cfg.ann.optimizer == "sgd" and cfg.ann.epochs == 2
    bundle = pipelines.open_static(cfg)
    seed_everything(cfg.run.seed)
    initial = pipelines.build_model(cfg, bundle, ann_neuron(cfg), 1).state_dict()
    ann, single = RegistryFamily().pretrain(RunContext.from_config(cfg), cfg, bundle)
    moved = 0.0
    for key, value in ann.state_dict().items():
        torch.testing.assert_close(rank0[key], value, rtol=1e-4, atol=1e-4, msg=key)
        if value.is_floating_point():
            moved = max(moved, (value - initial[key]).abs().max().item())
    assert moved > 1e-2  # training really changed the weights

    # the command line under torchrun: rank 0 wrote the run, with the same weights and metrics
    ckpt = load_checkpoint(ddp_run / "cli" / "ann" / "checkpoints" / "last.json")
    assert ckpt.epoch == 2
    for key, value in ckpt.model_state.items():
        torch.testing.assert_close(value, rank0[key], rtol=1e-5, atol=1e-6, msg=key)
    for ours, theirs in zip(ckpt.meta["history"], single.history, strict=True):
        assert ours["test_acc"] == pytest.approx(theirs["test_acc"], abs=1e-9)  # counts summed over ranks
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
    assert not list(ddp_run.glob("**/*.tmp"))
    # a loss that became NaN on rank 1 alone stopped both ranks at the same step
    assert (ddp_run / "nan_rank1.txt").read_text().startswith("nan epoch 1/1, step 2: the loss became nan")
    assert (ddp_run / "nan_rank0.txt").read_text().startswith(
        "nan epoch 1/1, step 2: the loss became NaN/Inf on 1 of 2 ranks")


@pytest.mark.slow
def test_precise_bn_without_sync_bn_averages_the_ranks_statistics(ddp_run):
    """``sync_bn=false``: during training each rank's BN sees only its shard, but precise BN's
    statistics are averaged over the ranks, so both ranks end with the same running statistics, and
    the first BN's running mean is the one-process estimate over the same samples (the mean of the
    two equal shards' means)."""
    from _ddp_worker import PRECISE_BN_DATA, PRECISE_BN_TRAIN

    from spikebridge.data.datasets import open_dataset
    from spikebridge.train.engine import precise_batchnorm

    rank0 = load_file(str(ddp_run / "precise_rank0.safetensors"))
    rank1 = load_file(str(ddp_run / "precise_rank1.safetensors"))
    stats = [k for k in rank0 if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 6
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    model = create_model("cnn", num_classes=10, neuron="relu", in_channels=1)
    model.load_state_dict(rank0)
    bundle = open_dataset("mnist5k", **PRECISE_BN_DATA)
    precise_batchnorm(model, bundle, PRECISE_BN_TRAIN["precise_bn"], seed=0)  # fit's seed 0, epoch 0
    single = model.state_dict()
    torch.testing.assert_close(rank0["bn1.running_mean"], single["bn1.running_mean"], rtol=1e-5, atol=1e-6)
    assert not torch.equal(rank0["bn1.running_var"], single["bn1.running_var"])  # per-shard variances, averaged
    for key in stats:  # deeper layers: inputs normalised per shard in training mode, so close, not equal
        torch.testing.assert_close(rank0[key], single[key], rtol=0.2, atol=0.05, msg=key)


def test_global_batchnorm_equals_batchnorm_without_a_process_group():
    """Outside a process group the converted BN is the ordinary one (and converts back in place)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    reference = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    reference.load_state_dict(model.state_dict())
    keys = list(model.state_dict())
    assert distributed.convert_sync_batchnorm(model, torch.device("cpu")) == 1
    assert isinstance(model[1], distributed.GlobalBatchNorm) and list(model.state_dict()) == keys
    x = torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(model(x), reference(x))
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)
    distributed.revert_sync_batchnorm(model)
    assert type(model[1]) is torch.nn.BatchNorm2d


def test_mixed_precision_is_cuda_only_and_says_so_on_cpu():
    from spikebridge.errors import ConfigError

    precision = distributed.Precision("bf16", torch.device("cpu"))
    assert not precision.enabled and precision.scaler is None and "CUDA" in precision.note
    assert distributed.Precision("off", torch.device("cpu")).note == ""
    with pytest.raises(ConfigError, match="run.amp"):
        distributed.Precision("fp8", torch.device("cpu"))


def _cli_torchrun(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "spikebridge", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_under_torchrun_the_plan_and_refusals_are_said_once(tmp_path):
    """Every process makes the plan: ``--plan`` prints one JSON document (one per process made
    stdout invalid), and a refusal, by the plan (a global batch that does not split over the
    processes) or by rank 0's claim of the run folder, is one line from rank 0: rank 1 printed
    it again, or an internal gloo error when rank 0 ended before it had the verdict."""
    plan = _cli_torchrun("pretrain", "--data", "mnist5k", "--plan", "--out", str(tmp_path / "p"))
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert json.loads(plan.stdout)["processes"] == 2 and not (tmp_path / "p").exists()
    flag = _cli_torchrun("pipes", "--T", "four", "--plan")  # the flags too: every process parses them
    assert flag.returncode != 0 and flag.stderr.count("invalid int value: 'four'") == 1, flag.stderr[-2000:]
    odd = _cli_torchrun("pretrain", "--data", "mnist5k", "--set", "ann.batch_size=63", "--out", str(tmp_path / "o"))
    assert odd.returncode != 0 and not (tmp_path / "o").exists()
    errors = [line for line in odd.stderr.splitlines() if line.startswith("spikebridge:")]
    assert errors == ["spikebridge: error: ann: batch_size 63 is the global batch and must split evenly over the 2 "
                      "processes (e.g. 62)"], odd.stderr[-2000:]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    refused = _cli_torchrun("pretrain", "--data", "mnist5k", "--no-progress", "--out", str(foreign))
    errors = [line for line in refused.stderr.splitlines() if line.startswith("spikebridge:")]
    assert len(errors) == 1 and "was not written by spikebridge" in errors[0], refused.stderr[-2000:]
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
