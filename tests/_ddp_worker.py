"""Run under ``torchrun --nproc_per_node=2`` by test_distributed.py (gloo, CPU).

1. The library path: join the process group, train the ANN with ``pipelines.pretrain_ann`` and save
   *this rank's* final weights to ``OUT/rank<r>.safetensors`` (so the test can compare the ranks).
2. The command line: ``spikebridge.cli.main(["pretrain", ...])``, what ``torchrun -m spikebridge``
   runs, into ``OUT/cli`` (rank 0 writes the checkpoint).

argv: OUT, then the ``pretrain`` flags shared with the test's one-process run.
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from spikebridge import cli, pipelines
from spikebridge.train import distributed


def main() -> int:
    out, flags = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    info = distributed.setup_distributed(torch.device("cpu"))
    assert info.world_size == 2, info
    args = cli.build_parser().parse_args(["pretrain", "--out", str(out / "library"), *flags])
    cfg = cli._pipeline_config(args)
    bundle = pipelines.open_static(cfg)
    ann, _result = pipelines.pretrain_ann(cfg, bundle, torch.device("cpu"))
    state = {k: v.detach().contiguous() for k, v in ann.state_dict().items()}
    save_file(state, str(out / f"rank{info.rank}.safetensors"))
    distributed.barrier()
    return cli.main(["pretrain", "--out", str(out / "cli"), *flags])


if __name__ == "__main__":
    sys.exit(main())
