"""Run by `tox -e plugin` (which pip-installs this folder as a package): the installed example
plugin is found through its entry point and works everywhere a built-in backend does."""

import json
import subprocess
import sys

from d2lgru.backends import available_backends, get_backend, plugin_backends, source_of


def test_the_installed_plugin_is_discovered_by_its_entry_point():
    plugin = plugin_backends()["example"]
    assert plugin.package == "d2lgru-example-plugin" and plugin.problem is None
    assert "example" in available_backends()
    assert source_of("example").startswith("plugin d2lgru_example_plugin:ExampleBackend from "
                                           "d2lgru-example-plugin 0.1.0")
    assert get_backend("example").name == "example"


def test_the_cli_lists_and_trains_the_plugin(tmp_path, data_dir):
    rows = json.loads(subprocess.run([sys.executable, "-m", "d2lgru", "backends", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    row = next(r for r in rows if r["name"] == "example")
    assert row["installed"] and row["source"].startswith("plugin ") and "scratch" in row["impls"]
    out = subprocess.run([sys.executable, "-m", "d2lgru", "train", "--backend", "example",
                          "--epochs", "2", "--hidden", "8", "--max-tokens", "400",
                          "--batch-size", "4", "--num-steps", "5", "--data", str(data_dir),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True,
                         check=True)
    assert "(example scratch)" in out.stdout
