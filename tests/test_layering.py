"""The package's layers (README, "Design"): a module imports only modules of its own layer or
below, lazily imported ones too; data imports no model code; nothing below the CLI imports it."""
import ast
from pathlib import Path


PACKAGE = Path(__file__).parent.parent / "src" / "spikebridge"

#: module (or package) -> layer; the longest matching prefix decides
LAYERS = {
    "errors": 0, "utils": 0,
    "surrogate": 1, "kernels": 1, "neurons": 1, "layers": 1, "config": 1, "train.checkpoint": 1,
    "models": 2,
    "bridge": 3, "spikify": 3, "export": 3, "nir_import": 3,
    "data": 4,
    "train": 5, "restore": 5, "conversion": 5,
    "analysis": 6,
    "pipelines": 7,
    "cli": 8, "__main__": 8, "": 8,  # "": the package's own __init__ (the public surface)
}
DATA_MAY_IMPORT = ("errors", "utils", "data")


def layer(module: str) -> int:
    matches = [name for name in LAYERS if module == name or module.startswith(name + ".") or name == ""]
    return LAYERS[max(matches, key=len)]


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported spikebridge module, line) for every relative import."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_init else parts)
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.append((module, ".".join([*base, node.module]), node.lineno))
            else:  # from .. import neurons
                found += [(module, ".".join([*base, alias.name]), node.lineno) for alias in node.names]
    return found


def test_the_scan_sees_the_imports():
    edges = {(a, b) for a, b, _ in imports()}
    assert ("pipelines.ann", "restore") in edges and ("cli.finetune", "pipelines.context") in edges and len(edges) > 100


def upward(edges: list[tuple[str, str, int]]) -> list[str]:
    return [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)}), line {n}" for a, b, n in edges if layer(b) > layer(a)]


def test_an_upward_import_is_seen():
    planted = [("models.cnn", "pipelines.plan", 1), ("bridge", "train.engine", 2), ("data.odg", "data.loading", 3)]
    assert [line.split(" ")[0] for line in upward(planted)] == ["models.cnn", "bridge"]


def test_no_module_imports_upward():
    found = upward(imports())
    assert not found, "\n".join(found)


def test_data_imports_no_model_code():
    bad = [f"{a} imports {b}, line {n}" for a, b, n in imports()
           if a.startswith("data") and not b.startswith(DATA_MAY_IMPORT) and b]
    assert not bad, "\n".join(bad)


def test_nothing_below_the_cli_imports_it():
    bad = [f"{a} imports {b}" for a, b, _ in imports() if b.startswith("cli") and not a.startswith(("cli", "__main__"))]
    assert not bad, "\n".join(bad)
