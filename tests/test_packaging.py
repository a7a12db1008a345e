import ast
import json
import os
import shutil
import site as site_mod
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_cli_and_datasets_are_spann_subpackages():
    import spann.cli.main
    import spann.datasets
    assert Path(spann.cli.main.__file__).parent.name == "cli"
    assert Path(spann.datasets.__file__).parent.name == "datasets"


def test_no_generic_top_level_modules(tmp_path):
    """Installed, `import datasets` / `import cli` must not resolve to this project (it would
    shadow Hugging Face's `datasets`)."""
    code = ("import importlib.util as u\n"
            "for n in ('datasets', 'cli'):\n"
            "    s = u.find_spec(n)\n"
            "    print(n, s.origin if s else None)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        name, origin = line.split(" ", 1)
        assert origin == "None" or not origin.startswith(str(REPO)), f"top-level {name} installed from {origin}"


def test_import_compiles_nothing():
    code = ("import spann, spann.search.kernels as s, spann.heads.graph as h, spann.heads.assign as a\n"
            "fs = (s.search_one, s.select_heads_batch, s.scan_full_batch, s.scan_coded_batch, h.beam_search,\n"
            "      a.assign_block)\n"
            "print(sum(len(f.signatures) for f in fs))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The wheel built from this tree, installed alone into a directory: ``(python command, env,
    site directory)``. The interpreter runs with ``-S`` and the wheel's directory first on
    PYTHONPATH, followed by this environment's site-packages for the dependencies, so no .pth file
    (the editable install's finder among them) can hand back the source tree instead."""
    d = tmp_path_factory.mktemp("wheel")
    src = d / "src"  # the tracked files only: no build/ left over from an earlier build can leak in
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(d),
                    str(src)], check=True, capture_output=True)
    (whl,) = d.glob("spann_ann-*.whl")
    site = d / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(whl)],
                   check=True, capture_output=True)
    deps = list(dict.fromkeys([*site_mod.getsitepackages(), sysconfig.get_paths()["purelib"],
                               sysconfig.get_paths()["platlib"], site_mod.getusersitepackages()]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *deps])}
    return [sys.executable, "-S"], env, site


def test_wheel_holds_every_package(installed_wheel):
    _, _, site = installed_wheel
    want = {p.parent.relative_to(REPO / "spann").as_posix() for p in (REPO / "spann").rglob("__init__.py")}
    want |= {"cli/" + p.parent.relative_to(REPO / "cli").as_posix() for p in (REPO / "cli").rglob("__init__.py")}
    want |= {"datasets/" + p.parent.relative_to(REPO / "datasets").as_posix()
             for p in (REPO / "datasets").rglob("__init__.py")}
    got = {p.parent.relative_to(site / "spann").as_posix() for p in (site / "spann").rglob("__init__.py")}
    norm = {w.removesuffix("/.") for w in want}
    assert norm == got, (sorted(norm - got), sorted(got - norm))
    assert (site / "spann" / "py.typed").exists()


def test_installed_wheel_runs_the_cli_end_to_end(installed_wheel, tmp_path):
    py, env, site = installed_wheel
    spann_cmd = [*py, str(site / "bin" / "spann")]  # the console script pip wrote from the entry point

    def run(*args):
        p = subprocess.run([*spann_cmd, *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout + p.stderr

    where = subprocess.run([*py, "-c", "import spann; print(spann.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where
    assert "Usage" in run("--help") and "Usage" in run("bench", "--help")
    run("datasets", "prepare", "synthetic", tmp_path / "d", "--n", 3000, "--dim", 8, "--n-queries", 20, "-q")
    run("build", tmp_path / "d" / "base.fbin", tmp_path / "i.spann", "--metric", "l2", "-q")
    run("search", tmp_path / "i.spann", tmp_path / "d" / "queries.fbin", "-k", 5, "-o", tmp_path / "r.ibin",
        "--json", tmp_path / "s.json", "-q")
    assert json.loads((tmp_path / "s.json").read_text())["queries"] == 20


def test_layers_contract_holds_on_the_installed_package(installed_wheel, tmp_path):
    """import-linter's layers contract (pyproject.toml) checked on the package as installed: there
    ``spann.cli`` and ``spann.datasets`` sit inside ``spann`` as they do for users."""
    py, env, _ = installed_wheel
    p = subprocess.run([*py, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                        str(REPO / "pyproject.toml")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "1 kept, 0 broken" in p.stdout, p.stdout + p.stderr


def _module_graph() -> dict[str, set[str]]:
    """Every import between spann's modules (module top and function bodies alike)."""
    roots = {"spann": REPO / "spann", "spann.cli": REPO / "cli", "spann.datasets": REPO / "datasets"}
    files = {}
    for pkg, d in roots.items():
        for f in d.rglob("*.py"):
            parts = list(f.relative_to(d).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([pkg, *parts])] = f

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for m, f in files.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spann"):
                names = [resolve(f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                names = [resolve(a.name) for a in node.names if a.name.startswith("spann")]
            else:
                continue
            graph[m] |= {n for n in names if n and n != m}
    return graph


def test_no_import_cycles():
    graph = _module_graph()
    assert len(graph) > 60
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_ruff_is_clean():
    p = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr
