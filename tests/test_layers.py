"""The package's layers: commands on top, the library below, imports running one way and never in a circle; and
the command line answers --help and argument errors without loading torch."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edt_lab.cli import COMMANDS

PACKAGE = Path(__file__).resolve().parent.parent / "edt_lab"
HEAVY = ("torch", "numpy", "diffusers", "gradio", "accelerate", "PIL", "safetensors")


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package ("edt_lab.models" for models/__init__.py)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, modules) -> set[str]:
    """The package's modules that module `name` imports anywhere in its file, inside functions too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            # `from . import accel` imports the module accel; `from . import __version__` the package itself
            found.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                         for alias in node.names)
    return {module for module in found if module in modules and module != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


# The layers, lowest first: a module imports modules of its own layer or lower ones, never higher ones. A name
# stands for the module and, for a package, everything in it.
LAYERS = (
    # plain helpers and values: argument checks, names, files, devices, assets, the AMM's matrix, guidance and
    # sampling settings, the noise schedule, datasets, the trainer's released defaults
    ("checks", "names", "files", "devices", "addresses", "assets", "amm", "guidance", "settings", "diffusion", "data",
     "training.recipe"),
    # models and what reads or changes one model: loading, hardware paths, masks, cost, callbacks, the judges
    ("models", "accel", "precision", "checkpoints", "diffusers_dit", "masking", "flops", "callbacks", "classifier",
     "realism"),
    # pipeline and training, and what runs them in bulk
    ("pipeline", "training", "generation", "export", "metrics"),
    # the commands, the explorer, and the package's own top-level helpers
    ("commands", "cli", "explorer", ""),
)


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest name that `module` is or lies in ("" is the package itself)."""
    name = module.removeprefix("edt_lab").removeprefix(".")
    matches = [(len(entry), rank) for rank, names in enumerate(LAYERS) for entry in names
               if name == entry or (entry and name.startswith(entry + "."))]
    assert matches, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return max(matches)[1]


def imports_upward_in_layers(graph) -> list[str]:
    return sorted(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
                  for module, targets in graph.items() for target in targets if layer_of(target) > layer_of(module))


def is_command(module: str) -> bool:
    """The command layer: the `edt-lab` entry point and edt_lab/commands/, which build and fill parsers."""
    return module == "edt_lab.cli" or module == "edt_lab.commands" or module.startswith("edt_lab.commands.")


def upward_imports(graph) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items() if not is_command(module)
                  for target in targets if is_command(target))


def find_cycle(graph) -> list[str] | None:
    """One import circle (a list of modules, the first repeated at the end), or None."""
    state = {}  # module -> "open" while on the current path, "done" after

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_no_library_module_imports_the_command_layer():
    graph = import_graph()
    assert "edt_lab.commands.sample" in graph and "edt_lab.generation" in graph["edt_lab.commands.sample"]
    assert upward_imports(graph) == []


def test_modules_import_only_their_own_layer_or_lower_ones():
    graph = import_graph()
    assert layer_of("edt_lab.models.edt") == 1 and layer_of("edt_lab.training.recipe") == 0
    for module in graph:
        layer_of(module)  # every module has its place
    assert imports_upward_in_layers(graph) == []


def test_no_import_circle_among_the_package_modules():
    assert find_cycle(import_graph()) is None


def test_the_checks_find_upward_imports_and_circles(tmp_path):
    package = tmp_path / "edt_lab"
    (package / "commands").mkdir(parents=True)
    files = {"__init__.py": "", "cli.py": "from .commands import sample\n",
             "commands/__init__.py": "", "commands/sample.py": "def run():\n    from ..a import f\n",
             "a.py": "from .b import g\n", "b.py": "def g():\n    from edt_lab.a import f\n",
             "c.py": "def h():\n    from . import cli\n", "d.py": "from .commands.sample import run\n"}
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(package)
    assert graph["edt_lab.commands.sample"] == {"edt_lab.a"} and graph["edt_lab.c"] == {"edt_lab.cli"}
    assert upward_imports(graph) == ["edt_lab.c imports edt_lab.cli", "edt_lab.d imports edt_lab.commands.sample"]
    assert find_cycle(graph) == ["edt_lab.a", "edt_lab.b", "edt_lab.a"]  # b's import inside a function counts
    assert find_cycle({"x": {"y"}, "y": set()}) is None


PARSE_ONLY = """
import contextlib, io, json, sys
from edt_lab.cli import COMMANDS, build_parser
codes = {}
for command in COMMANDS:
    for argv in ([command, "--help"], [command, "--no-such-option"]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                build_parser(command).parse_args(argv)
            except SystemExit as exit:
                codes[" ".join(argv)] = exit.code
heavy = sorted({name.partition(".")[0] for name in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_and_argument_errors_load_no_heavy_library():
    """`edt-lab CMD --help` and a bad option answer before torch, diffusers or gradio load (they take seconds)."""
    result = subprocess.run([sys.executable, "-c", PARSE_ONLY, *HEAVY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["codes"] == {**{f"{c} --help": 0 for c in COMMANDS}, **{f"{c} --no-such-option": 2 for c in COMMANDS}}
    assert report["heavy"] == []


@pytest.mark.parametrize("argv", [["app.py", "--help"], ["app.py", "--port", "x"], ["app.py", "--port", "99999"],
                                  ["app.py", "--threads", "0"]])
def test_app_script_parses_without_heavy_libraries(argv):
    code = ("import runpy, sys; sys.argv = %r\ntry:\n    runpy.run_path('app.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint(sorted({m.partition('.')[0] for m in sys.modules} & set(%r)))"
            % (argv, HEAVY))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=PACKAGE.parent)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def test_no_function_is_over_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert long == []
