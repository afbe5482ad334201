import subprocess
import sys


def test_import_loads_no_heavy_module():
    code = (
        "import sys, graft_array; "
        "heavy = [m for m in ('numba', 'torch', 'cupy', 'scipy', 'sklearn') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import graft_array loaded: {out.stdout.strip()}"


def test_public_api():
    import graft_array

    for name in graft_array.__all__:
        assert hasattr(graft_array, name)
