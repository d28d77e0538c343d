"""The MLflow seam: `harmonica.*` tag keys are named once, in harmonica/tracking/names.py."""

import ast
import re
from pathlib import Path

import harmonica

PKG = Path(harmonica.__file__).resolve().parent
NAMES = PKG / "tracking" / "names.py"
TAG = re.compile(r"harmonica\.[a-z_]")


def _is_module(text: str) -> bool:
    """`harmonica.codec.mel_rvq`, `harmonica.cli`, `harmonica.codec.mel_rvq:MelRVQCodec`: code, not a tag."""
    for word in re.findall(r"harmonica(?:\.[A-Za-z_0-9]+)+", text):
        parts = word.split(".")[1:]
        for n in range(len(parts), 0, -1):
            p = PKG.joinpath(*parts[:n])
            if p.with_suffix(".py").exists() or p.is_dir():
                break
        else:
            return False
    return True


def _strings(tree: ast.AST):
    """Every string constant that is not a docstring (f-string parts included)."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def test_no_tag_literal_outside_the_names_module():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path == NAMES:
            continue
        for node in _strings(ast.parse(path.read_text(), str(path))):
            if TAG.search(node.value) and not _is_module(node.value):
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "harmonica.* tag literals outside harmonica/tracking/names.py:\n" + "\n".join(found)


def test_the_check_sees_a_literal_and_ignores_module_paths():
    tree = ast.parse('"""doc harmonica.stage"""\nx = {"harmonica.stage": 1}\ny = "harmonica.cli"\n'
                     'z = f"tags.`harmonica.project` = {x}"\nw = "harmonica.codec.mel_rvq:MelRVQCodec"\n')
    hits = [n.value for n in _strings(tree) if TAG.search(n.value) and not _is_module(n.value)]
    assert hits == ["harmonica.stage", "tags.`harmonica.project` = "]


def _mlflow_imports(path: Path) -> list[int]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mlflow" for a in node.names):
            out.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            out.append(node.lineno)
    return out


def test_only_the_tracking_package_imports_mlflow():
    """Every module under harmonica/ reaches MLflow through harmonica/tracking/, except the documented
    serving exception (the pyfunc class MLflow itself loads, and its models-from-code entry)."""
    from harmonica.tracking import MLFLOW_OUTSIDE_TRACKING

    assert all((PKG / p).is_file() for p in MLFLOW_OUTSIDE_TRACKING), MLFLOW_OUTSIDE_TRACKING
    found = [f"{path.relative_to(PKG)}:{line}" for path in sorted(PKG.rglob("*.py"))
             if path.relative_to(PKG).parts[0] != "tracking"
             and path.relative_to(PKG).as_posix() not in MLFLOW_OUTSIDE_TRACKING for line in _mlflow_imports(path)]
    assert not found, "mlflow imported outside harmonica/tracking/:\n" + "\n".join(found)
    for exception in MLFLOW_OUTSIDE_TRACKING:  # the exceptions are real, not stale entries
        assert _mlflow_imports(PKG / exception), exception


def test_the_import_check_sees_both_import_forms(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nimport mlflow.pyfunc\nfrom mlflow.tracking import MlflowClient\nfrom harmonica import x\n")
    assert _mlflow_imports(f) == [2, 3]
