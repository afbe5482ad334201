from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[-1].strip()
    assert command.startswith("python -m pip install")
    assert f"\n{command}\n" in readme, "README.md must show .ci/run's last line as its test command"


def test_readme_python_examples_run(tmp_path):
    """Every ```python block of the README runs as written (torch lines need torch)."""
    import re
    import subprocess
    import sys

    import pytest

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for code in blocks:
        if "import torch" in code:
            pytest.importorskip("torch")
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
