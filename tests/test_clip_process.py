"""`emotiw.io.clip_process`: a child process that dies costs one call, says how it died, and
the next call gets a fresh child (the unit under the poison-clip isolation of the extract
actors; `tests/test_poison_clip.py` runs it inside the jobs)."""

from __future__ import annotations

import os
import signal

import pytest

from emotiw.io.clip_process import ClipProcess, ProcessDied, describe_exit


class Doubler:
    """Built in the child (this module is importable there: the child gets our sys.path)."""

    def info(self) -> int:
        return os.getpid()

    def __call__(self, x: object) -> object:
        if x == "exit":
            os._exit(3)
        if x == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if x == "raise":
            raise ValueError("boom")
        return 2 * x  # type: ignore[operator]


def test_a_child_that_dies_is_described_and_the_next_call_gets_a_new_one() -> None:
    child = ClipProcess(Doubler)
    child.start()
    try:
        first = child.info
        assert first != os.getpid() and child.call(2) == 4
        with pytest.raises(ValueError, match="boom"):  # an exception is not a death
            child.call("raise")
        assert child.call(3) == 6 and child.info == first
        with pytest.raises(ProcessDied) as died:
            child.call("exit")
        assert died.value.returncode == 3 and str(died.value) == "exited with code 3"
        assert child.call(4) == 8 and child.info != first  # a fresh child
        with pytest.raises(ProcessDied) as died:
            child.call("kill")
        assert "killed by signal 9 (SIGKILL: the kernel's OOM killer" in str(died.value)
        assert child.call(5) == 10
    finally:
        child.close()
    assert describe_exit(-11) == "killed by signal 11 (SIGSEGV: a crash in native code)"
