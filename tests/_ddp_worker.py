"""Run under ``torchrun --standalone --nproc_per_node=2`` by test_distributed.py (gloo, CPU).

1. Exactness, in float64: every rank trains a DDP + SyncBN copy of a model on its share of each
   global batch (``iterate_batches`` sharding) and, beside it, a plain copy on the whole global
   batch in this process; the largest gradient / weight difference per step goes to
   ``OUT/float64_rank<r>.json``.
2. The library path: ``pipelines.pretrain_ann`` under DDP; *this rank's* final weights go to
   ``OUT/rank<r>.safetensors`` (so the test can compare the ranks).
3. The command line: ``spikebridge.cli.main(["pretrain", ...])``, what ``torchrun -m spikebridge``
   runs, into ``OUT/cli`` (rank 0 writes the run).
(5., run before 3.) ``sync_bn=false`` with precise BN (``fit``): each rank re-estimates the BN
   statistics on its share of the samples, then they are averaged over the ranks; this rank's final
   state goes to ``OUT/precise_rank<r>.safetensors``.
(4., run before 3.) A loss that turns NaN on rank 1 only: every rank must stop with a TrainingError (a rank that
   raised alone would leave the other blocked in the next all-reduce); the messages go to
   ``OUT/nan_rank<r>.txt``.

argv: OUT, then the ``pretrain`` flags shared with the test's one-process run.
"""
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from spikebridge import cli, create_model, pipelines
from spikebridge.pipelines.ann import RegistryFamily
from spikebridge.pipelines.context import RunContext
from spikebridge.pipelines.plan import build_plan
from spikebridge.data.datasets import open_dataset
from spikebridge.data.loading import iterate_batches
from spikebridge.train import distributed


def float64_steps(info: distributed.DistInfo, steps: int = 6) -> dict:
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, neuron="relu", in_channels=1).double()
    single = copy.deepcopy(model)
    distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    ddp = distributed.wrap_model(model, torch.device("cpu"))
    opt_ddp = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt_single = torch.optim.SGD(single.parameters(), lr=0.05, momentum=0.9)
    bundle = open_dataset("mnist5k", max_shift=2, limit_train=32 * steps)
    shards = iterate_batches(bundle, bundle.train, 32, train=True, generator=torch.Generator().manual_seed(5),
                             rank=info.rank, world_size=info.world_size)
    whole = iterate_batches(bundle, bundle.train, 32, train=True, generator=torch.Generator().manual_seed(5))
    record = {"grad": [], "weight": [], "moved": 0.0}
    start = [p.detach().clone() for p in single.parameters()]
    for (x_local, y_local), (x, y) in zip(shards, whole):
        for net, opt, xb, yb in ((ddp, opt_ddp, x_local, y_local), (single, opt_single, x, y)):
            loss = F.cross_entropy(net(xb.double()), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        pairs = list(zip(model.parameters(), single.parameters()))
        record["grad"].append(max((a.grad - b.grad).abs().max().item() for a, b in pairs))
        record["weight"].append(max((a - b).abs().max().item() for a, b in pairs))
    record["moved"] = max((p - s).abs().max().item() for p, s in zip(single.parameters(), start))
    return record


def main() -> int:
    out, flags = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    info = distributed.setup_distributed(torch.device("cpu"))
    assert info.world_size == 2, info
    out.mkdir(parents=True, exist_ok=True)
    (out / f"float64_rank{info.rank}.json").write_text(json.dumps(float64_steps(info)))

    args = cli.build_parser().parse_args(["pretrain", "--out", str(out / "library"), *flags])
    cfg = build_plan(cli.request(args, "pretrain")).config
    ann, _result = RegistryFamily().pretrain(RunContext.from_config(cfg), cfg, pipelines.open_static(cfg))
    state = {k: v.detach().contiguous() for k, v in ann.state_dict().items()}
    save_file(state, str(out / f"rank{info.rank}.safetensors"))
    distributed.barrier()
    (out / f"nan_rank{info.rank}.txt").write_text(nan_on_one_rank(info))
    distributed.barrier()
    save_file(precise_bn_without_sync_bn(), str(out / f"precise_rank{info.rank}.safetensors"))
    distributed.barrier()
    return cli.main(["pretrain", "--out", str(out / "cli"), *flags])  # last: it ends the process group


class NaNOnRankOne(torch.nn.Module):
    """A linear classifier whose output is NaN on rank 1 from the second step on."""

    def __init__(self, rank: int):
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)
        self.rank, self.calls = rank, 0

    def forward(self, x):
        self.calls += 1
        y = self.fc(x.flatten(1))
        return y * float("nan") if self.rank == 1 and self.calls >= 2 and self.training else y


def nan_on_one_rank(info: distributed.DistInfo) -> str:
    from spikebridge.config import TrainConfig
    from spikebridge.errors import TrainingError
    from spikebridge.train.engine import fit

    bundle = open_dataset("mnist5k", max_shift=0, limit_train=128, limit_test=32)
    try:
        fit(NaNOnRankOne(info.rank), bundle, TrainConfig(epochs=1, batch_size=32), name="nan", run_dir=None,
            progress=False)
    except TrainingError as exc:
        return str(exc)
    return "no error"


PRECISE_BN_DATA = dict(limit_train=256, limit_test=32)
PRECISE_BN_TRAIN = dict(epochs=1, optimizer="sgd", lr=0.05, batch_size=32, precise_bn=128)


def precise_bn_without_sync_bn() -> dict[str, torch.Tensor]:
    """DDP without SyncBN (``fit(sync_bn=False)``), with precise BN after the epoch (seed 0)."""
    from spikebridge.config import TrainConfig
    from spikebridge.train.engine import fit

    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, neuron="relu", in_channels=1)
    bundle = open_dataset("mnist5k", **PRECISE_BN_DATA)
    fit(model, bundle, TrainConfig(**PRECISE_BN_TRAIN), name="precise", run_dir=None, seed=0, progress=False,
        sync_bn=False)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    sys.exit(main())
