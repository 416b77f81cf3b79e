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
