"""Third-party backends through the entry point group ``d2lgru.backends``.

Each test makes a real installed-package layout (``*.dist-info`` with ``entry_points.txt``, and
the module) in a folder on ``PYTHONPATH`` and runs ``d2lgru`` in a fresh interpreter, so
discovery goes through importlib.metadata exactly as for a pip-installed package. The package
itself, pip-installed, is tested by ``tox -e plugin`` (tests/plugin_example/).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent / "plugin_example" / "d2lgru_example_plugin.py"


def install(site: Path, package: str, entry_points: dict, modules: dict):
    info = site / f"{package.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[d2lgru.backends]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)


def d2lgru(site, *args, data_dir=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]),
           "OMP_NUM_THREADS": "1"}
    env.pop("D2LGRU_BACKEND", None)
    if data_dir is not None:
        env["D2LGRU_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "d2lgru", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    install(site, "d2lgru-example-plugin", {"example": "d2lgru_example_plugin:ExampleBackend"},
            {"d2lgru_example_plugin": EXAMPLE.read_text()})
    return site


def test_a_plugin_backend_is_listed_selected_trained_and_checked(site, tmp_path, data_dir):
    rows = json.loads(d2lgru(site, "backends", "--json").stdout)
    names = [r["name"] for r in rows]
    assert names[-1] == "example" and names[0] == "numpy"
    row = rows[-1]
    assert row["installed"] and row["source"] == ("plugin d2lgru_example_plugin:ExampleBackend "
                                                  "from d2lgru-example-plugin 0.1.0")
    assert "plugin d2lgru_example_plugin" in d2lgru(site, "backends").stdout
    small = ["--epochs", "2", "--hidden", "8", "--max-tokens", "400", "--batch-size", "4",
             "--num-steps", "5", "--quiet"]
    out = d2lgru(site, "train", "--backend", "example", *small, "--out", str(tmp_path / "r"),
                 data_dir=data_dir)
    assert out.returncode == 0 and "(example scratch)" in out.stdout, out.stderr
    # a run trained on the plugin resumes on a built-in backend and back
    assert d2lgru(site, "train", "--resume", str(tmp_path / "r"), "--backend", "numpy",
                  "--epochs", "3", "--quiet", data_dir=data_dir).returncode == 0
    conf = d2lgru(site, "conformance", "--backend", "example", "--out", str(tmp_path / "conf"),
                  "--cases", "scratch:lm/*", data_dir=data_dir)
    assert conf.returncode == 0, conf.stdout + conf.stderr
    report = json.loads((tmp_path / "conf" / "example" / "report.json").read_text())
    assert report["backend"] == "example"


BROKEN = {
    "import": ("boom", "raise OSError('libfoo.so: cannot open shared object file')\n",
               "boom:Backend", "failed to import (OSError: libfoo.so"),
    "not a backend": ("notabackend", "Backend = 42\n", "notabackend:Backend",
                      "is a int, not a d2lgru Backend"),
    "wrong name": ("wrongname", "from d2lgru.backends import Backend, ImplInfo\n"
                   "class B(Backend):\n    name = 'other'\n"
                   "    impls = {'scratch': ImplInfo('x')}\n", "wrongname:B",
                   "calls itself 'other'"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_plugin_is_one_line_naming_its_package_and_breaks_nothing(tmp_path, data_dir,
                                                                         kind):
    module, source, target, message = BROKEN[kind]
    site = tmp_path / "site"
    install(site, "broken-plugin", {"broken": target}, {module: source})
    proc = d2lgru(site, "train", "--backend", "broken", "--epochs", "1", data_dir=data_dir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "backend 'broken'" in lines[0] and "broken-plugin" in lines[0]
    assert message in lines[0], lines[0]
    listing = d2lgru(site, "backends", "--json")
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert rows["numpy"]["installed"] and not rows["broken"]["installed"]
    assert "broken-plugin" in rows["broken"]["error"]
    ok = d2lgru(site, "train", "--backend", "numpy", "--epochs", "1", "--hidden", "8",
                "--max-tokens", "400", "--batch-size", "4", "--num-steps", "5", "--quiet",
                data_dir=data_dir)
    assert ok.returncode == 0, ok.stderr


def test_a_plugin_may_not_take_a_built_in_name_or_another_plugins(tmp_path):
    site = tmp_path / "site"
    install(site, "clash-a", {"torch": "x:B", "twin": "x:B"}, {"x": "B = None\n"})
    install(site, "clash-b", {"twin": "y:B"}, {"y": "B = None\n"})
    rows = json.loads(d2lgru(site, "backends", "--json").stdout)
    torch_rows = [r for r in rows if r["name"] == "torch"]
    assert torch_rows[0]["source"] == "built-in"
    assert torch_rows[1]["source"].endswith("from clash-a 0.1.0") and \
        "is a built-in backend's or alias" in torch_rows[1]["error"]
    twin = d2lgru(site, "train", "--backend", "twin", "--epochs", "1")
    assert twin.returncode == 2 and "declare a backend named 'twin'" in twin.stderr
    assert "uninstall one of them" in twin.stderr
