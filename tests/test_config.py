"""Config: YAML recipes into dataclasses; unknown keys and wrong types are one-line errors."""
import pytest

from spikebridge.config import PipelineConfig, dump_yaml, load_config, parse_override, read_yaml
from spikebridge.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {name: resnet18, T: 6}\nfinetune: {lr: 1e-3, schedule: step, milestones: [2, 4]}\n")
    cfg = load_config(PipelineConfig, path, {"run.seed": 3, "finetune.epochs": 9})
    assert cfg.model.name == "resnet18" and cfg.model.T == 6
    assert cfg.finetune.lr == 1e-3 and cfg.finetune.milestones == [2, 4] and cfg.finetune.epochs == 9
    assert cfg.run.seed == 3
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(PipelineConfig, again) == cfg


def test_a_partial_section_keeps_that_fields_defaults(tmp_path):
    """Setting one key of a phase keeps the rest of *that phase's* defaults (events.finetune is a
    4-epoch cosine fine-tune; the class TrainConfig alone would say 10 epochs, one-cycle)."""
    defaults = PipelineConfig()
    cfg = load_config(PipelineConfig, None, {"events.finetune.lr": 1e-3, "finetune.lr": 0.5, "scratch.epochs": 2})
    assert cfg.events.finetune.lr == 1e-3
    assert (cfg.events.finetune.epochs, cfg.events.finetune.schedule) == (defaults.events.finetune.epochs, "cosine")
    assert cfg.finetune.epochs == defaults.finetune.epochs != 10
    assert cfg.scratch.until_plateau == defaults.scratch.until_plateau > 0
    path = tmp_path / "r.yaml"
    path.write_text("events:\n  scratch:\n    lr: 0.01\n")
    from_yaml = load_config(PipelineConfig, path)
    assert from_yaml.events.scratch.lr == 0.01 and from_yaml.events.scratch.precise_bn == defaults.events.scratch.precise_bn > 0
    assert from_yaml.events.finetune == defaults.events.finetune
    # a section with every key commented out ("finetune:" is null) took TrainConfig's class defaults
    path.write_text("finetune:\nevents:\n  finetune:\n")
    emptied = load_config(PipelineConfig, path)
    assert (emptied.finetune, emptied.events.finetune) == (defaults.finetune, defaults.events.finetune)


@pytest.mark.parametrize(
    "text, match",
    [
        ("model: {nmae: cnn}\n", "model.nmae"),
        ("finetune: {lr: fast}\n", "finetune.lr"),
        ("model: {T: 0}\n", "model.T"),
        ("neuron: {threshold: -1}\n", "threshold"),
        ("neuron: {decay: 2}\n", "decay"),
        ("ann: {epochs: 1.5}\n", "ann.epochs"),
        ("run: [1, 2]\n", "run"),
        ("- just a list\n", "mapping"),
        ("model: {name: cnn\n", "YAML"),
        ("ann: {lr: 0.02}\nann: {epochs: 7}\n", "line 2: key 'ann' is given twice"),  # the last one won silently
        ("ann:\n  lr: 0.02\n  lr: 0.03\n", "line 3: key 'lr' is given twice"),
        ("ann:\n\tlr: 0.1\n", r"line 2: not valid YAML \(found character '\\t'"),  # it named no line nor the tab
    ],
)
def test_bad_yaml_names_the_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(PipelineConfig, path)
    assert "\n" not in str(info.value).strip()


def test_parse_override():
    assert parse_override("finetune.lr=0.01") == ("finetune.lr", 0.01)
    assert parse_override("run.device=cpu") == ("run.device", "cpu")
    with pytest.raises(ConfigError):
        parse_override("nonsense")


def test_integers_are_decimal(tmp_path):
    """YAML 1.1 read ``010`` as octal 8 and ``0x10`` as 16 (``--set ann.epochs=010`` trained 8)."""
    assert load_config(PipelineConfig, None, dict([parse_override("ann.epochs=010")])).ann.epochs == 10
    path = tmp_path / "r.yaml"
    path.write_text("ann:\n  epochs: 0x10\n")
    with pytest.raises(ConfigError, match="ann.epochs: expected an integer, got '0x10'"):
        load_config(PipelineConfig, path)


def test_a_number_where_text_is_expected_says_to_quote_it(tmp_path):
    """``--set run.out=007`` (YAML: the number 7) said only 'expected a string, got 7'."""
    with pytest.raises(ConfigError, match=r"run.out: expected a string, got 7, which YAML reads as a number; quote "
                                          r"the text \(--set \"run.out='...'\", or out: '...' in a recipe\)"):
        load_config(PipelineConfig, None, dict([parse_override("run.out=007")]))
    with pytest.raises(ConfigError, match="model.name: expected a string, got True, which YAML reads as true/false"):
        load_config(PipelineConfig, None, dict([parse_override("model.name=yes")]))
    assert load_config(PipelineConfig, None, dict([parse_override("run.out='007'")])).run.out == "007"


def test_a_recipe_from_a_pipe_is_read(tmp_path):
    """``--config <(...)`` / ``/dev/stdin`` is no regular file: it was "config file not found"."""
    import os

    read, write = os.pipe()
    os.write(write, b"ann:\n  epochs: 3\n")
    os.close(write)
    try:
        assert load_config(PipelineConfig, f"/dev/fd/{read}").ann.epochs == 3
    finally:
        os.close(read)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        read_yaml("/nonexistent/recipe.yaml")
