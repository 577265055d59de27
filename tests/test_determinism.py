"""Determinism: the same seed gives identical metrics and weights on CPU across two runs.

Each run goes through the real pipeline pieces (seeding, model construction, the trainer with its
shuffling and random-shift augmentation, the bridge with its BN re-calibration, SNN fine-tuning),
on a small seeded subset of the embedded MNIST, one epoch per phase. Between the two runs the
global RNGs are deliberately disturbed: the pipeline must seed everything it uses. A different
seed must give different weights (so the comparison can fail).
"""
from __future__ import annotations

import random

import numpy as np
import torch

from spikebridge.config import PipelineConfig, load_config
from spikebridge.data.datasets import open_dataset
from spikebridge.pipelines.ann import RegistryFamily
from spikebridge.pipelines.context import RunContext


def config(out, seed: int) -> PipelineConfig:
    overrides = {
        "data.name": "mnist5k", "data.limit_train": 128, "data.limit_test": 64, "model.name": "cnn", "model.T": 2,
        "ann.epochs": 1, "ann.batch_size": 32, "finetune.epochs": 1, "finetune.batch_size": 32,
        "scratch.epochs": 1, "scratch.batch_size": 32, "bridge.calibration_batches": 2,
        "bridge.calibration_batch_size": 32,
        "run.seed": seed, "run.out": str(out), "run.progress": False, "run.device": "cpu",
    }
    return load_config(PipelineConfig, None, overrides)


def run_once(out, seed: int, snn: bool = True) -> dict:
    cfg = config(out, seed)
    bundle = open_dataset(cfg.data.name, max_shift=cfg.data.max_shift, split_seed=cfg.data.split_seed,
                          limit_train=cfg.data.limit_train, limit_test=cfg.data.limit_test)
    ctx, family = RunContext.from_config(cfg), RegistryFamily()
    ann, ann_result = family.pretrain(ctx, cfg, bundle)
    if not snn:
        return {"metrics": {"ann": ann_result.history}, "weights": {"ann": ann.state_dict()}}
    bridged = family.to_snn(ctx, cfg, ann, bundle, same_data=True)
    snn = bridged.snn
    finetuned = ctx.fit(snn, bundle, cfg.finetune, name="snn_pretrained", meta=bridged.meta, evaluate_first=True)
    scratch_snn, scratch_meta = family.scratch(ctx, cfg, bundle)
    scratch = ctx.fit(scratch_snn, bundle, cfg.scratch, name="snn_scratch", meta=scratch_meta)
    metrics = {r.name: [{k: v for k, v in h.items() if k != "seconds"} for h in r.history]
               for r in (ann_result, finetuned, scratch)}
    weights = {"ann": {k: v.clone() for k, v in ann.state_dict().items()},
               "snn": {k: v.clone() for k, v in snn.state_dict().items()}}
    return {"metrics": metrics, "weights": weights}


def disturb_global_rngs() -> None:
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)
    torch.rand(1000)


def test_same_seed_same_metrics_and_weights(tmp_path):
    torch.set_num_threads(1)
    first = run_once(tmp_path / "a", seed=5)
    disturb_global_rngs()
    second = run_once(tmp_path / "b", seed=5)
    assert first["metrics"] == second["metrics"]
    assert len(first["metrics"]["ann"]) == 1 and len(first["metrics"]["snn_pretrained"]) == 2  # + the point at 0 s
    for model in ("ann", "snn"):
        assert first["weights"][model].keys() == second["weights"][model].keys()
        for key, value in first["weights"][model].items():
            assert torch.equal(value, second["weights"][model][key]), f"{model} {key} differs"
    other = run_once(tmp_path / "c", seed=6, snn=False)
    assert not torch.equal(other["weights"]["ann"]["fc.weight"], first["weights"]["ann"]["fc.weight"])
    assert other["metrics"]["ann"][0]["train_loss"] != first["metrics"]["ann"][0]["train_loss"]
