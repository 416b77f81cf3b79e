"""``edgevit demo`` reaches the camera app only by importing ``edgevit_pi`` (an optional
dependency): without it the command fails with the install command, and no path is searched."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_APP = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "edgevit_pi":
                raise ImportError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, _Block())
    from edgevit.cli import main
    sys.exit(main(["demo", "model.tflite", "--json"]))
    """
)


def test_demo_without_the_app_names_the_install_command(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCK_APP], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "pip install ./apps/raspberry_pi" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_package_does_not_reach_into_apps():
    from pathlib import Path

    import edgevit.cli.demo as demo

    source = Path(demo.__file__).read_text()
    assert "sys.path" not in source and '"apps"' not in source
