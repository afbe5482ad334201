from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[-1].strip()
    assert command.startswith("python -m pip install")
    assert f"\n{command}\n" in readme, "README.md must show .ci/run's last line as its test command"


_NO_TORCH = """import sys
class _NoTorch:  # the core install has no torch: importing it fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("No module named 'torch' (made unimportable by tests/test_readme.py)")
sys.meta_path.insert(0, _NoTorch())
"""


def test_readme_python_examples_run(tmp_path):
    """Every ```python block of the README runs as written and prints what it shows.

    A block that does not say ``import torch`` runs with torch made unimportable
    (the core install has no torch); blocks with torch need it.
    """
    import re
    import subprocess
    import sys

    import pytest

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for code in blocks:
        if "import torch" in code:
            pytest.importorskip("torch")
            run = code
        else:
            run = _NO_TORCH + code
        done = subprocess.run([sys.executable, "-c", run], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip(), f"this README block prints nothing when run as a script:\n{code}"
