import subprocess
import sys
from pathlib import Path


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
    code = ("import spann, spann.search as s, spann.head_index as h, spann.assign as a\n"
            "print(sum(len(f.signatures) for f in (s.search_one, s.select_batch, s.scan_batch, h.beam_search, a.assign_block)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"
