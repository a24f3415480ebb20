"""The package imports, exports what it documents, and says once when the extension is missing."""
import subprocess
import sys

import scar


def test_every_documented_name_resolves():
    for name in scar.__all__:
        assert getattr(scar, name) is not None, name


def test_unknown_attribute_is_an_attribute_error():
    try:
        scar.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def _import_without_extension(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys, warnings; warnings.simplefilter('always'); sys.modules['scar_kernels._C'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300)


def test_import_without_extension_works_and_warns_once():
    run = _import_without_extension(
        "import scar\n"
        "assert not scar.has_extension()\n"
        "from scar_kernels.ops import implementation\n"
        "assert implementation('build_pack') == implementation('tree_attention') == 'torch'\n"
        "print('ok')\n"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
    assert run.stderr.count("C++ extension scar_kernels._C is not available") == 1
    assert "slower paths" in run.stderr
