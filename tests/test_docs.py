"""README.md and docs/*.md run as written.

Every ``spann ...`` line of a shell block is parsed by the real click CLI (the command must
exist, every option and argument must be known, take the right number of values and convert;
files need not exist); every ``python benchmarks/X.py ...`` line is parsed by that script's
argparse parser (without running it); every ``pip install -e ".[extras]"`` names real extras;
every ``spann.module.name`` the text mentions exists; the README's test command is the one CI
runs; every Python block compiles, and the README's library quick start and the format recipe
run on tiny data.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import click
import numpy as np
import pytest

from spann.cli.datasets_cmd import VectorPath
from spann.cli.main import cli
from spann.params import BuildParams
from spann.tools.eval import check_point, parse_sweep

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SEPARATORS = {"&&", "||", ";", "|"}
README_MAX_LINES = 400


def blocks(path: Path) -> list[tuple[int, str, str, str]]:
    """(line, language, heading, code) of every fenced block of ``path``."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()]
        headings = re.findall(r"^#+ (.+)$", before, re.M)
        out.append((before.count("\n") + 1, m.group(1), headings[-1] if headings else "", m.group(2)))
    return out


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped, split at
    ``&&``/``||``/``;``/``|``, leading ``VAR=value`` assignments dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        cmd: list[str] = []
        for tok in [*shlex.split(line, comments=True), ";"]:
            if tok in SEPARATORS:
                while cmd and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0]):
                    cmd.pop(0)
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
    return out


def doc_commands(first: str) -> list:
    """pytest params (id file:line) of every documented command whose first word is ``first``."""
    found = []
    for path in DOCS:
        for line, lang, _heading, code in blocks(path):
            if lang in SHELL:
                for argv in commands(code):
                    if argv[0] == first:
                        found.append(pytest.param(argv, id=f"{path.name}:{line}:{' '.join(argv[:3])}"))
    return found


def test_documents_have_commands():
    assert len(doc_commands("spann")) >= 30
    assert len(doc_commands("python")) >= 10


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_placeholders_in_shell_blocks(path):
    """A command is copied as it stands: no ``[--optional]`` brackets, no ``...`` arguments."""
    for line, lang, _heading, code in blocks(path):
        if lang in SHELL:
            assert not re.search(r"\[-|\[[A-Z_]+\]|<[a-z_-]+>", code), f"{path.name}:{line}: bracket notation"
            for argv in commands(code):
                assert "..." not in argv, f"{path.name}:{line}: '...' in {' '.join(argv)}"


def test_readme_is_a_manual():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for path in DOCS:
        found = re.findall(r"\b[Ss]essions?\b|not kept|\bissue #?\d+", path.read_text())
        assert not found, f"{path.name}: {found}"


def test_readme_test_command_is_the_ci_command():
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1] == 'python -m pip install -e ".[test]" && pytest'
    readme = [code.strip() for _l, lang, _h, code in blocks(ROOT / "README.md") if lang in SHELL]
    assert ci[-1] in readme


@pytest.fixture
def no_file_checks(monkeypatch):
    """Let click parse paths that do not exist here (types and arity are still checked)."""

    def walk(cmd: click.Command):
        for p in cmd.params:
            if isinstance(p.type, click.Path):
                monkeypatch.setattr(p.type, "exists", False)
            elif isinstance(p.type, VectorPath):
                monkeypatch.setattr(p, "type", click.STRING)
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                walk(sub)

    walk(cli)


def parse_cli(argv: list[str]) -> click.Context:
    """Resolve ``spann ARGS`` down to its command and parse the arguments as click would."""
    cmd: click.Command = cli
    ctx = cmd.make_context("spann", list(argv), resilient_parsing=False)
    while isinstance(cmd, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        assert rest, f"{' '.join(argv)}: no command"
        name, cmd, args = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, args, parent=ctx, resilient_parsing=False)
    return ctx


@pytest.mark.parametrize("argv", doc_commands("spann"))
def test_spann_command_parses(argv, no_file_checks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        ctx = parse_cli(argv[1:])
    except click.exceptions.Exit:  # --help / --version
        return
    except click.ClickException as e:
        pytest.fail(f"{' '.join(argv)}: {e.format_message()}")
    # values the commands parse themselves
    if ctx.command.name == "build":
        BuildParams().replace(**BuildParams.parse_assignments(ctx.params["extra"]))
    if ctx.command.name == "eval":
        for point in parse_sweep(list(ctx.params["sweep"])):
            check_point(point)


class _Parsed(Exception):
    pass


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv", doc_commands("python"))
def test_python_command_parses(argv, monkeypatch, capsys):
    if argv[1:3] == ["-m", "pip"]:
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for target in argv[3:]:
            m = re.fullmatch(r"(?:\.|spann-ann)\[([\w,-]+)\]", target)
            if m:
                missing = set(m.group(1).split(",")) - set(extras)
                assert not missing, f"{' '.join(argv)}: no extra {missing}"
        return
    script = ROOT / argv[1]
    assert argv[1].startswith("benchmarks/") and script.is_file(), f"{' '.join(argv)}: no such script"
    if "def main(" not in script.read_text():  # a plain script: one positional argument
        assert len(argv) == 3, f"{' '.join(argv)}: takes one argument"
        return
    monkeypatch.syspath_prepend(str(script.parent))
    mod = _load_script(script)
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *argv[2:]])
    try:
        mod.main()
    except _Parsed:
        return
    except SystemExit:
        pytest.fail(f"{' '.join(argv)}: {capsys.readouterr().err.strip()}")
    pytest.fail(f"{' '.join(argv)}: the script did not parse its arguments")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_named_modules_exist(path):
    """Every ``spann.a.b`` the text names is a module or an attribute of one."""
    for name in sorted(set(re.findall(r"(?<![\w./-])spann(?:\.[A-Za-z_]\w*)+", path.read_text()))):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"{path.name}: {name} does not exist"
                obj = getattr(obj, attr)
            break


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_compile(path):
    for line, lang, _heading, code in blocks(path):
        if lang == "python":
            compile(code, f"{path.name}:{line}", "exec")


def _block(path: Path, heading: str) -> str:
    found = [code for _l, lang, h, code in blocks(path) if lang == "python" and h == heading]
    assert len(found) == 1, f"{path.name}: one python block under {heading!r}"
    return found[0]


def test_quick_start_and_format_recipe_run(tmp_path, monkeypatch):
    """The README's library quick start as written (it makes its own tiny data), then the
    format recipe of docs/format.md on the index it built."""
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_block(ROOT / "README.md", "Quick start: library"), "README quick start", "exec"), ns)
    assert ns["ids"].shape == (100, 10)
    assert ns["stored"].shape == (3, 32)
    recipe: dict = {}
    exec(compile(_block(ROOT / "docs" / "format.md", "Reading a list with zarr-python"), "format recipe", "exec"),
         recipe)
    c = recipe["c"]
    assert c > 0 and recipe["ids"].shape == (c,) and recipe["codes"].shape[0] == c
    assert np.all((recipe["ids"] >= 0) & (recipe["ids"] < 5_000))  # sq8: rows of the vector store
