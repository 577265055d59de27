"""Trust and safety, written as the attacks (issue 15): a checkpoint is data (its JSON never runs
code nobody named, its fields and tensors are checked before a model is built), a recipe cannot
bomb memory, error lines stay short, and values that size threads and memory are bounded."""
import json
import math
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import spikebridge as sb
from spikebridge.cli import main
from spikebridge.config import MAX_T, PipelineConfig, load_config, max_threads, parse_override, read_yaml
from spikebridge.errors import CheckpointError, ConfigError
from spikebridge.restore import (
    ann_class_meta,
    import_ann,
    load_ann_weights,
    load_model,
    model_from_checkpoint,
    parse_ann_kwargs,
    spikified_meta,
)
from spikebridge.train.checkpoint import save_checkpoint

NET = textwrap.dedent('''
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 2, 3)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(2 * 6 * 6, num_classes)

        def forward(self, x):
            return self.fc(self.relu(self.conv1(x)).flatten(1))
''')


def payload(marker: Path) -> str:
    """The same class, plus a line that runs when the file is imported."""
    return f"open({str(marker)!r}, 'w').write('pwned')\n" + NET


def one_line(exc: Exception, limit: int = 300) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < limit, text
    return text


@pytest.fixture
def user_ckpt(tmp_path):
    """The user's class in ``code/net.py`` and a checkpoint of it in ``ckpt/``, as pipes writes it."""
    (tmp_path / "code").mkdir()
    source = tmp_path / "code" / "net.py"
    source.write_text(NET)
    spec = f"{source}:Net"
    torch.manual_seed(0)
    model = import_ann(spec)
    meta = ann_class_meta(spec, {}, num_classes=3, in_channels=1, data="mnist5k")
    path = save_checkpoint(tmp_path / "ckpt", "last", model, meta)
    return path, spec, model


def hostile(path: Path, ann: str, **extra) -> Path:
    record = json.loads(path.read_text())
    record["meta"]["model"].update(ann=ann, **extra)
    path.write_text(json.dumps(record))
    return path


# ------------------------------------------------------------------------------------------------
# 1. a checkpoint JSON runs no Python nobody named
# ------------------------------------------------------------------------------------------------
def test_a_checkpoint_records_the_hash_of_its_code(user_ckpt):
    path, spec, _model = user_ckpt
    info = json.loads(path.read_text())["meta"]["model"]
    import hashlib
    assert info["ann_sha256"] == hashlib.sha256(Path(spec.rpartition(":")[0]).read_bytes()).hexdigest()
    spikified = spikified_meta(spec, {}, sb.NeuronConfig(), num_classes=3, in_channels=1, T=2, input_ndim=4,
                               data="mnist5k")
    assert spikified["model"]["ann_sha256"] == info["ann_sha256"]


@pytest.mark.parametrize("where", ["absolute", "relative to the cwd", "beside the JSON"])
def test_a_payload_named_by_the_json_is_never_imported(user_ckpt, tmp_path, monkeypatch, capsys, where):
    path, spec, _model = user_ckpt
    marker = tmp_path / "marker"
    if where == "beside the JSON":
        target = path.parent / "payload.py"
        monkeypatch.chdir(path.parent)  # the user evaluates from the checkpoint's folder
        ann = "payload.py:Net"
    elif where == "relative to the cwd":
        target = tmp_path / "payload.py"
        monkeypatch.chdir(tmp_path)
        ann = "./payload.py:Net"
    else:
        target = tmp_path / "payload.py"
        ann = f"{target}:Net"
    target.write_text(payload(marker))
    hostile(path, ann)
    advice = {"model_from_checkpoint": "name it with --ann FILE.py:Class or pass --trust-code to import",
              "load_model": 'name it with code="FILE.py:Class" or pass trust_code=True to import'}  # the caller's terms
    for name, load in (("model_from_checkpoint", lambda: model_from_checkpoint(path)),
                       ("load_model", lambda: load_model(path)), ("load_model", lambda: load_model(path, T=2))):
        with pytest.raises(CheckpointError) as info:
            load()
        assert f"{path}: this checkpoint needs Python code (Net from " in one_line(info.value)
        assert advice[name] in str(info.value)
    # the command line, as a user runs it on a shared checkpoint
    assert main(["evaluate", str(path), "--data", "mnist5k", "--samples", "8", "--out", str(tmp_path / "ev")]) == 2
    assert main(["export", str(path), "--out", str(tmp_path / "net.nir")]) == 2
    err = capsys.readouterr().err
    assert err.count("needs Python code") == 2 and "Traceback" not in err
    # naming the genuine file runs the genuine file only; trusting a relative recorded path is refused
    model, meta, _ = model_from_checkpoint(path, code=spec)
    assert type(model).__name__ == "Net" and meta["model"]["ann"] == spec
    with pytest.raises(CheckpointError, match="changed since|not absolute"):
        model_from_checkpoint(path, trust_code=True)
    assert not marker.exists()


def test_the_named_code_must_be_the_recorded_code(user_ckpt, tmp_path):
    path, spec, model = user_ckpt
    marker = tmp_path / "marker"
    (tmp_path / "payload.py").write_text(payload(marker))
    with pytest.raises(CheckpointError, match=r"--ann .*payload\.py is not the code this checkpoint was written with"):
        model_from_checkpoint(path, code=f"{tmp_path / 'payload.py'}:Net")
    with pytest.raises(CheckpointError, match="--ann names class Other, but this checkpoint needs Net"):
        model_from_checkpoint(path, code=f"{tmp_path / 'payload.py'}:Other")
    # an attacker who also sets the recorded hash to the payload's: still nothing without an opt-in
    import hashlib
    hostile(path, f"{tmp_path / 'payload.py'}:Net",
            ann_sha256=hashlib.sha256((tmp_path / "payload.py").read_bytes()).hexdigest())
    with pytest.raises(CheckpointError, match="needs Python code"):
        load_model(path)
    with pytest.raises(CheckpointError, match="is not the code"):
        load_model(path, code=spec)
    assert not marker.exists()


def test_trust_code_imports_the_recorded_file_only_while_its_hash_matches(user_ckpt):
    path, spec, model = user_ckpt
    loaded = load_model(path, trust_code=True)
    assert not loaded.training and loaded.T == 1
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    source = Path(spec.rpartition(":")[0])
    source.write_text(source.read_text() + "\n# edited\n")
    with pytest.raises(CheckpointError, match=r"the recorded code file .*net\.py changed since the checkpoint was written"):
        load_model(path, trust_code=True)
    with pytest.raises(CheckpointError, match="is not the code"):
        load_model(path, code=spec)


def test_a_spikified_checkpoint_needs_its_code_too(user_ckpt, tmp_path):
    _path, spec, _model = user_ckpt
    snn = sb.spikify(import_ann(spec), sb.NeuronConfig(), T=2, input_ndim=4)
    meta = spikified_meta(spec, {}, sb.NeuronConfig(), num_classes=3, in_channels=1, T=2, input_ndim=4, data="mnist5k")
    path = save_checkpoint(tmp_path / "snn", "last", snn, meta)
    with pytest.raises(CheckpointError, match="needs Python code"):
        load_model(path)
    loaded = load_model(path, code=spec, T=3)
    assert loaded.T == 3 and not loaded.training
    assert torch.equal(loaded.state_dict()["fc.weight"], snn.state_dict()["fc.weight"])


# ------------------------------------------------------------------------------------------------
# 2. checkpoint fields by type and range, before any model is built
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def registry_ckpt(tmp_path):
    model = sb.create_model("cnn", num_classes=3, neuron="lif", T=2, in_channels=1)
    meta = {"model": {"name": "cnn", "num_classes": 3, "in_channels": 1, "T": 2},
            "neuron": {"kind": "lif", "decay": 0.25}, "data": "mnist5k"}
    return save_checkpoint(tmp_path / "reg", "last", model, meta), model


def test_load_model_rebuilds_a_registry_checkpoint(registry_ckpt):
    path, model = registry_ckpt
    loaded = load_model(path)
    assert not loaded.training and loaded.T == 2 and loaded.spiking
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    assert load_model(path, T=4).T == 4


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "num_classes", "ten", r"meta\.model\.num_classes must be an integer >= 1, got 'ten'"),
    ("model", "num_classes", 10**12, r"meta\.model\.num_classes must be an integer <= 1000000, got 1000000000000"),
    ("model", "num_classes", True, r"meta\.model\.num_classes"),
    ("model", "in_channels", 0, r"meta\.model\.in_channels must be an integer >= 1, got 0"),
    ("model", "T", 100000, rf"meta\.model\.T must be an integer <= {MAX_T}, got 100000"),
    ("model", "T", 2.5, r"meta\.model\.T"),
    ("model", "name", "nope", r"meta\.model\.name: unknown model 'nope'"),
    ("model", "options", {"bogus": 1}, r"cnn takes no option 'bogus' \(it takes pool_grid, widths\)"),
    ("model", "options", {"widths": {"a": 1}}, r"options\.widths must be a number, a string or a list"),
    ("model", "options", {"widths": [100000, 100000, 100000]}, r"the weights do not fit cnn \(shape mismatch"),
    ("model", "ann_kwargs", "x", None),  # ignored by a registry model: loads
    ("neuron", "decay", "x", r"checkpoint neuron settings are invalid: neuron\.decay: expected a number"),
    ("neuron", "decay", 7.0, r"checkpoint neuron settings are invalid: .*decay must be a number in \[0\.0, 1\.0\]"),
    ("neuron", "kind", "magic", r"checkpoint neuron settings are invalid: neuron: unknown neuron 'magic'"),
    ("neuron", "bogus", 1, r"checkpoint neuron settings are invalid: unknown config key 'neuron\.bogus'"),
    ("neuron", "learnable_decay", "yes", r"neuron\.learnable_decay: expected true/false"),
])
def test_hand_edited_checkpoint_fields_are_refused(registry_ckpt, section, key, value, message):
    path, _model = registry_ckpt
    record = json.loads(path.read_text())
    record["meta"][section][key] = value
    path.write_text(json.dumps(record))
    if message is None:
        assert load_model(path).T == 2
        return
    with pytest.raises(CheckpointError, match=message) as info:
        model_from_checkpoint(path)
    assert str(info.value).startswith(str(path)) and one_line(info.value)


def test_a_huge_T_override_is_refused(registry_ckpt):
    path, _model = registry_ckpt
    with pytest.raises(ConfigError, match=r"--T must be an integer <= 1024, got 100000"):
        load_model(path, T=100000)


# ------------------------------------------------------------------------------------------------
# 3. NaN / Inf / integer / bool weights are refused, not evaluated at chance
# ------------------------------------------------------------------------------------------------
def _tampered(model, how):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if how == "nan":
        state["conv1.weight"][0, 0, 0, 0] = math.nan
    elif how == "inf":
        state["fc.bias"][0] = math.inf
    else:
        state["conv1.weight"] = state["conv1.weight"].to(torch.int64 if how == "int64" else torch.bool)
    return state


@pytest.mark.parametrize("how, message", [
    ("nan", r"conv1\.weight holds NaN or Inf values"),
    ("inf", r"fc\.bias holds NaN or Inf values"),
    ("int64", r"conv1\.weight is int64 where .* has float32"),
    ("bool", r"conv1\.weight is bool where .* has float32"),
])
def test_damaged_weights_are_refused(registry_ckpt, tmp_path, how, message):
    _path, model = registry_ckpt
    state = _tampered(model, how)
    meta = json.loads(_path.read_text())["meta"]
    path = save_checkpoint(tmp_path / how, "last", types.SimpleNamespace(state_dict=lambda: state), meta)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
    # --ann-weights files: a .safetensors and a .pth of the same tensors
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    fresh = sb.create_model("cnn", num_classes=3, neuron="lif", T=2, in_channels=1)
    for weights in ("w.safetensors", "w.pth"):
        with pytest.raises(CheckpointError, match=message):
            load_ann_weights(fresh, tmp_path / weights)
    # the genuine tensors load (num_batches_tracked is int64 in the file and in the model)
    assert model.state_dict()["bn1.num_batches_tracked"].dtype == torch.int64
    load_ann_weights(fresh, _path)


# ------------------------------------------------------------------------------------------------
# 4. a YAML alias bomb costs nothing; error lines stay short
# ------------------------------------------------------------------------------------------------
def bomb(levels: int = 9) -> str:
    lines = ['  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        name, prev = "abcdefghij"[level], "abcdefghij"[level - 1]
        lines.append(f"  - &{name} [{','.join(['*' + prev] * 9)}]")
    return "data:\n name:\n" + "\n".join(" " + line for line in lines) + "\n"


def test_a_yaml_alias_bomb_ends_at_once_with_a_short_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert len(path.read_bytes()) < 500  # 9^9 = 387 million strings once expanded
    script = textwrap.dedent(f'''
        import sys, time
        from spikebridge.config import PipelineConfig, load_config
        from spikebridge.errors import ConfigError
        start = time.perf_counter()
        try:
            load_config(PipelineConfig, {str(path)!r})
        except ConfigError as exc:
            message = str(exc)
        print(round(time.perf_counter() - start, 3))
        # VmHWM: this address space's peak (ru_maxrss would carry the parent's over vfork + exec)
        print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024)
        print(message)
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, peak_mb, message = done.stdout.strip().split("\n")
    assert float(seconds) < 3 and int(peak_mb) < 1024, (seconds, peak_mb)
    assert len(message) < 300 and "anchors and aliases" in message and str(path) in message


def test_overrides_refuse_aliases_and_quote_values_briefly():
    """A 184-character --set whose value repr is 480 KB (the issue's 225 characters gave 4.3 MB)."""
    levels = "abcde"
    parts = ["&a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    parts += [f"&{levels[i]} [{','.join(['*' + levels[i - 1]] * 9)}]" for i in range(1, len(levels))]
    flow = "data.name=[" + ", ".join(parts) + "]"
    assert len(flow) < 225
    with pytest.raises(ConfigError, match="anchors and aliases") as info:
        load_config(PipelineConfig, None, dict([parse_override(flow)]))
    one_line(info.value)
    # a long value (not an alias) is quoted with at most ~100 characters
    for value in ("x" * 100_000, [[list(range(1000))] * 1000], 10**5000):
        with pytest.raises(ConfigError) as info:
            load_config(PipelineConfig, None, {"run.seed": value})
        assert len(one_line(info.value)) < 200
    with pytest.raises(ConfigError) as info:
        load_config(PipelineConfig, None, {"run": {"x" * 100_000: 1}})
    assert "unknown config key" in one_line(info.value)


def test_a_huge_recipe_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="too large for a recipe"):
        read_yaml(path)


# ------------------------------------------------------------------------------------------------
# 5. values that size threads and memory are bounded
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("run.threads", 100000, rf"run\.threads must be an integer <= {max_threads()}, got 100000"),
    ("run.threads", -1, r"run\.threads"),
    ("run.device", "meta", r"run\.device must be auto, cpu, cuda, cuda:N or mps, got 'meta'"),
    ("run.device", "cuda:0; rm -rf /", r"run\.device"),
    ("model.T", 100000, r"model\.T must be an integer <= 1024"),
    ("model.num_classes", 10**12, r"model\.num_classes"),
    ("model.in_channels", 100000, r"model\.in_channels"),
    ("events.time_bins", 100000, r"events\.time_bins"),
    ("finetune.batch_size", 10**9, r"finetune\.batch_size must be an integer <= 65536"),
    ("data.image_size", 30000, r"data\.image_size must be an integer <= 4096"),
    ("events.image_size", 30000, r"events\.image_size"),
    ("bridge.calibration_batch_size", 10**7, r"bridge\.calibration_batch_size"),
    ("bridge.calibration_batches", 10**7, r"bridge\.calibration_batches"),
    ("bridge.calibration_iterations", 10**6, r"bridge\.calibration_iterations"),
    ("finetune.precise_bn", 10**12, r"finetune\.precise_bn"),
    ("demo_conversion_samples", 10**12, r"demo_conversion_samples"),
    ("data.workers", 100000, r"data\.workers"),
])
def test_unbounded_values_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(PipelineConfig, None, {key: value})
    one_line(info.value)


def test_sane_values_still_load():
    cfg = load_config(PipelineConfig, None, {"run.threads": max_threads(), "run.device": "cuda:1", "model.T": 1024,
                                             "data.image_size": 224, "finetune.batch_size": 256})
    assert cfg.run.threads == max_threads() and cfg.model.T == 1024
    for device in ("auto", "cpu", "cuda", "mps"):
        assert load_config(PipelineConfig, None, {"run.device": device}).run.device == device


def test_the_command_line_refuses_them_in_one_line(tmp_path, capsys):
    for setting in ("run.threads=100000", "run.device=meta", "model.T=100000"):
        assert main(["pretrain", "--data", "mnist5k", "--out", str(tmp_path / "o"), "--set", setting]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and setting.split("=")[0] in err, err


def test_deeply_nested_ann_kwargs_are_a_config_error():
    for depth in (5000, 100):
        with pytest.raises(ConfigError, match="nested deeper than") as info:
            parse_ann_kwargs('{"a": ' + "[" * depth + "]" * depth + "}")
        one_line(info.value)
    with pytest.raises(ConfigError, match="too long"):
        parse_ann_kwargs('{"a": "' + "x" * 100_000 + '"}')
    with pytest.raises(ConfigError, match="not a finite number"):
        parse_ann_kwargs('{"a": NaN}')
    assert parse_ann_kwargs('{"num_classes": 10, "widths": [8, 16]}') == {"num_classes": 10, "widths": [8, 16]}


def test_a_huge_checkpoint_json_is_refused_unread(registry_ckpt):
    path, _model = registry_ckpt
    record = json.loads(path.read_text())
    record["meta"]["padding"] = "x" * (17 << 20)
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="too large for checkpoint metadata") as info:
        load_model(path)
    one_line(info.value)
