"""Small things of a finished CLI: a closed pipe is not a traceback; a mistyped option gets the
closest one suggested."""

from __future__ import annotations

import subprocess
import sys

EDGEVIT = [sys.executable, "-m", "edgevit"]


def test_list_into_a_closed_pipe_prints_no_traceback():
    proc = subprocess.Popen([*EDGEVIT, "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()  # the reader takes one line and leaves, as `edgevit list | head -1` does
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()[-2000:]
    assert proc.returncode in (0, 141)


def test_mistyped_option_suggests_the_closest():
    res = subprocess.run([*EDGEVIT, "export", "mobilevit_xxs", "--targt", "onnx"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert "--targt" in res.stderr and "--target" in res.stderr, res.stderr


def test_host_command_on_a_device_install_names_the_extra():
    # A device install (edgevit[tflite]) has no torch: None in sys.modules makes `import torch` fail
    # with ModuleNotFoundError exactly as it does there.
    code = ("import sys; sys.modules['torch'] = None; from edgevit.cli import main; "
            "sys.exit(main(['list']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert "needs torch" in res.stderr and "pip install 'edgevit[export]'" in res.stderr, res.stderr
