"""The layers of ARCHITECTURE.md, checked on the source: every `import` of a showtell
module, at the top of a file or inside a function, goes down the layers (or stays in
its own layer), never up and never sideways between training and the applications."""

from __future__ import annotations

import ast
from pathlib import Path

import showtell

SOURCE = Path(showtell.__file__).parent

# Layer of each module, by the longest matching name prefix; lower layers come first.
LAYERS: dict[str, tuple[int, str]] = {
    "showtell.errors": (0, "base"),
    "showtell.logs": (0, "base"),
    "showtell.config": (0, "base"),
    "showtell.device": (0, "base"),
    "showtell.generation": (0, "base"),  # beam search: knows no images, no vocabularies
    "showtell.data": (1, "data"),
    "showtell.evaluation.metrics": (1, "metrics"),
    "showtell.evaluation.cider": (1, "metrics"),
    "showtell.evaluation.ptb_tokenizer": (1, "metrics"),
    "showtell.encoders": (2, "model"),
    "showtell.encoder_weights": (2, "model"),
    "showtell.timm_backbones": (2, "model"),
    "showtell.torchvision_backbones": (2, "model"),
    "showtell.model": (2, "model"),
    "showtell.ensemble": (2, "model"),
    "showtell.checkpoint": (2, "model"),
    "showtell.tf_import": (2, "model"),
    "showtell.training": (3, "training"),
    "showtell.inference": (3, "applications"),
    "showtell.evaluation": (3, "applications"),
    "showtell.export": (3, "applications"),
    "showtell.serve": (3, "applications"),
    "showtell.demo": (4, "demo"),
    "showtell.cli": (5, "cli"),
    "showtell.__main__": (5, "cli"),
}


def layer(module: str) -> tuple[int, str]:
    matches = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    assert matches, f"{module}: in no layer of ARCHITECTURE.md (add it to LAYERS and the doc)"
    return LAYERS[max(matches, key=len)]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    return (SOURCE / f"{name}.py").is_file() or (SOURCE / name).is_dir()


def showtell_imports(path: Path) -> set[str]:
    """Every showtell module the file imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("showtell.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "showtell":  # from showtell import timm_backbones (a module)
                found |= {f"showtell.{a.name}" for a in node.names if _is_module(a.name)}
            elif node.module.startswith("showtell."):
                found.add(node.module)
    return found


def test_imports_go_down_the_layers() -> None:
    violations = []
    modules = sorted(SOURCE.rglob("*.py"))
    assert len(modules) > 30  # the whole package, not an empty glob
    for path in modules:
        importer = module_name(path)
        if importer == "showtell":
            continue
        rank, group = layer(importer)
        for imported in sorted(showtell_imports(path)):
            other_rank, other_group = layer(imported)
            upward = other_rank > rank or (other_rank == rank and other_group != group)
            if upward:
                violations.append(f"{importer} ({group}) imports {imported} ({other_group})")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_function_level_and_package_imports(tmp_path: Path) -> None:
    """The checker itself: imports inside functions and `from showtell import x` count."""
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from showtell.training.train import train\n"
        "from showtell import timm_backbones\nimport showtell.serve\n"
    )
    assert showtell_imports(source) == {
        "showtell.training.train",
        "showtell.timm_backbones",
        "showtell.serve",
    }
    assert layer("showtell.evaluation.evaluate") == (3, "applications")
    assert layer("showtell.evaluation.cider") == (1, "metrics")
