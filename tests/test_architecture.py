"""The house's import rules, read from the source (lab/import_graph.py walks every module's AST):
no import loops; the runtime never imports the lab (except the CLI's lab commands, inside the command);
core/ and models/ import no host; importing the ComfyUI pack or a node never loads the lab or training code.
"""
import json
import subprocess
import sys
from pathlib import Path

from facerefine.lab import import_graph as ig

ROOT = Path(__file__).resolve().parent.parent
# the CLI's train/eval/bench commands are the lab's front door: they import the lab inside run()
LAB_COMMANDS = {"cli.train_cmd", "cli.eval_cmd", "cli.bench_cmd"}
HOSTS = ("comfy", "folder_paths", "modules", "gradio", "server", "execution")


def test_the_graph_reader_sees_loops_and_upward_imports(tmp_path):
    pkg = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", "core/__init__.py": "", "core/a.py": "from . import b\n",
                      "core/b.py": "def f():\n    from .a import x\n", "lab/__init__.py": "",
                      "lab/t.py": "from ..core import a\n", "cli/__init__.py": "",
                      "cli/c.py": "def run():\n    from ..lab.t import y\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    g = ig.graph(pkg)
    assert ig.loops(g) == [["core.a", "core.b"]]
    assert ig.upward_imports(g) == [("cli.c", "lab.t")]


def test_no_import_loops():
    assert ig.loops(ig.graph(ROOT)) == []


def test_runtime_never_imports_the_lab():
    upward = [(a, b) for a, b in ig.upward_imports(ig.graph(ROOT)) if a not in LAB_COMMANDS]
    assert upward == []


def test_lab_commands_import_the_lab_only_inside_the_command():
    import ast
    for name in LAB_COMMANDS:
        tree = ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not any(isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("lab") for n in top), name


def test_core_and_models_import_no_host():
    g_root = ig.modules(ROOT)
    import ast
    for name, path in g_root.items():
        if not name.startswith(("core", "models")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for m in mods:
                assert m.split(".")[0] not in HOSTS, f"{name} imports {m}"


def test_loading_the_nodes_and_the_pipeline_loads_no_lab_code():
    code = ("import sys, json; import facerefine; facerefine.NODE_CLASS_MAPPINGS; "
            "import facerefine.core.pipeline, facerefine.ui.service, facerefine.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('facerefine.lab'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT.parent),
                         env={**__import__("os").environ, "FACEREFINE_OFFLINE": "1"}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_report_counts(capsys):
    r = ig.report(ROOT)
    assert r["loops"] == [] and r["runtime_modules"] > 50
    assert ig.main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["modules"] == r["modules"]


def _imports(path: Path):
    """(level, module, names) of every import statement in a file, at any depth."""
    import ast
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield 0, None, [a.name for a in node.names]


def test_models_never_import_core():
    g = ig.graph(ROOT)
    wrong = sorted((a, b) for a, deps in g.items() if a.startswith("models") for b in deps if b.startswith("core"))
    assert wrong == []


def test_every_internal_import_is_relative():
    # ComfyUI imports the pack under its folder's name, so `facerefine.` imports would load a second copy
    absolute = []
    for name, path in ig.modules(ROOT).items():
        if name.startswith("tests"):
            continue
        for level, module, names in _imports(path):
            mods = names if module is None else [module]
            if level == 0 and any(m == ig.PACKAGE or m.startswith(ig.PACKAGE + ".") for m in mods):
                absolute.append(name)
    assert absolute == []


def test_no_package_imports_another_packages_private_names():
    private = []
    for name, path in ig.modules(ROOT).items():
        if name.startswith("tests"):
            continue
        for level, module, names in _imports(path):
            if level == 0 or module is None:
                continue
            if level > 1 or "." in module:  # reaches into another package (a sibling module is level 1, no dot)
                private += [f"{name}: from {'.' * level}{module} import {n}" for n in names if n.startswith("_")]
    assert private == []


STEP_FOLDERS = ("crop", "lookup", "refine", "paste")


def test_every_step_folder_has_the_same_layout():
    import ast
    for step in STEP_FOLDERS:
        folder = ROOT / "core" / step
        assert (folder / "options.py").is_file() and (folder / "step.py").is_file(), step
        init = ast.parse((folder / "__init__.py").read_text())
        assert not [n for n in init.body if isinstance(n, (ast.Import, ast.ImportFrom))], \
            f"core/{step}/__init__.py imports: importing its options must stay light"


def test_the_controls_table_and_step_options_load_without_torch():
    code = ("import sys, facerefine.core.controls, facerefine.core.crop.options, facerefine.core.lookup.options, "
            "facerefine.core.refine.options, facerefine.core.paste.options; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT.parent),
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_functions_take_options_objects_not_long_argument_lists():
    # docs/ARCHITECTURE.md: at most two runtime functions over 8 parameters and two over 80 lines
    big = ig.oversized(ROOT)
    assert len(big["params"]) <= 2, big["params"]
    assert len(big["lines"]) <= 2, big["lines"]


def test_front_ends_read_controls_from_the_table():
    # a control's name is spelled in at most 4 front-end files (issue 24: fidelity was in 11)
    front = [p for d in ("cli", "nodes", "ui", "scripts") for p in (ROOT / d).rglob("*.py")]
    spelled = [str(p.relative_to(ROOT)) for p in front if "fidelity" in p.read_text()]
    assert len(spelled) <= 4, spelled
