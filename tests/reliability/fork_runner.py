"""A fork server for the kill-anywhere harness: runs ``shortcut-detect`` commands fast.

Started once as a subprocess; it imports torch and the package (seconds on a busy machine)
and then, for every JSON request ``{"argv": [...], "env": {...}}`` on stdin, forks a child
that runs ``shortcut_detect.cli.main(argv)`` with ``env`` added to its environment and its
output sent to ``log``. It prints ``{"pid": PID}`` when the child starts and
``{"exit": CODE}`` (negative: killed by that signal) when it ends. The parent runs no torch
operation, so each child starts from the same state a fresh ``shortcut-detect`` would.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot  # noqa: F401 - imported once here, not in every child
import pyarrow.parquet  # noqa: F401
import torch

import shortcut_detect.audit.analysis  # noqa: F401
import shortcut_detect.cli as cli


def _child(request: dict) -> None:
    os.environ.pop("SHORTCUT_DETECT_FAULT", None)
    os.environ.update(request.get("env", {}))
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(1)
    try:
        code = cli.main(request["argv"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 70
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
