"""Run each clip's work in a child process of the actor's own, so that a clip which kills its
process costs that clip and nothing else.

A file whose decoding crashes the process (a decoder bug on malformed input, the kernel's OOM
killer on a pathological file) would otherwise kill the Ray actor: Ray Data restarts it and
retries the whole batch, forever (its actor pools run with ``max_restarts=-1`` and
``max_task_retries=-1``), and not one row of that batch is ever committed. Here the actor only
waits on a child: when the child dies, the actor reads its exit status, starts a fresh child
and carries on with the next clip. The child is a plain ``python -m emotiw.io.clip_process``
(not multiprocessing's spawn, which would re-run the Ray worker's main module), talking over
two pipes with pickled messages; it inherits the actor's environment (its GPU, its paths).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any


class ProcessDied(Exception):
    """The child died while working on a call: `returncode` as `subprocess` reports it
    (negative: killed by that signal)."""

    def __init__(self, returncode: int | None, stderr: str = "") -> None:
        self.returncode, self.stderr = returncode, stderr
        lines = stderr.strip().splitlines()
        super().__init__(describe_exit(returncode) + (f" ({lines[-1]})" if lines else ""))


def describe_exit(returncode: int | None) -> str:
    """An exit status in words: "killed by signal 9 (SIGKILL: the kernel's OOM killer or
    kill -9)", "exited with code 3"."""
    if returncode is None:
        return "did not exit"
    if returncode >= 0:
        return f"exited with code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    why = {
        "SIGKILL": ": the kernel's OOM killer or kill -9",
        "SIGSEGV": ": a crash in native code",
        "SIGABRT": ": native code aborted",
        "SIGBUS": ": a bad memory access",
    }.get(name, "")
    return f"killed by signal {number} ({name}{why})"


class ClipProcess:
    """A child process holding ``factory(*args)`` (built once per child, e.g. the
    extractors and their models) and answering ``call(*a)`` with ``built(*a)``.

    An exception raised in the child is raised again here (as `RuntimeError` with the
    child's traceback when it cannot be pickled); a child that dies raises `ProcessDied`,
    and the next call starts a new child."""

    def __init__(self, factory: Callable[..., Callable[..., Any]], *args: Any) -> None:
        self.factory, self.args = factory, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: Any = None  # what the built object's `info()` said, if it has one

    def start(self) -> None:
        """Start the child and build its object (raising what building raised)."""
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # The child imports what the actor imports (a job's working dir, a test's paths).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # Its stderr is kept (a file, not a pipe nobody drains) so a death can say why.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (open for the child's life)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emotiw.io.clip_process", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), env=env, stderr=self.stderr, cwd=_cwd(),
        )  # fmt: skip
        os.close(to_child_r)
        os.close(from_child_w)
        self.send, self.recv = Connection(to_child_w), Connection(from_child_r)
        self.send.send_bytes(pickle.dumps((self.factory, self.args)))
        try:
            self.info = self._answer()
        except ProcessDied:
            raise
        except BaseException:  # building raised (missing weights...): the child has left
            self.close()
            raise

    def call(self, *args: Any) -> Any:
        """``built(*args)`` in the child (started first if there is none)."""
        if self.proc is None:
            self.start()
        try:
            self.send.send_bytes(pickle.dumps(args))
        except OSError:  # the child is gone already
            self._died()
        return self._answer()

    def _answer(self) -> Any:
        try:
            kind, value = pickle.loads(self.recv.recv_bytes())
        except (EOFError, OSError):
            self._died()
        if kind == "raised":
            raise value
        if kind == "raised-text":
            raise RuntimeError(value)
        return value

    def _died(self) -> None:
        assert self.proc is not None
        try:
            returncode = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # closed its pipe yet lingers: end it
            self.proc.kill()
            returncode = self.proc.wait()
        self.stderr.seek(0)
        text = self.stderr.read()[-4000:].decode(errors="replace")
        sys.stderr.write(text)  # into the actor's log, as if the child had written there
        self._forget()
        raise ProcessDied(returncode, text)

    def _forget(self) -> None:
        for conn in (self.send, self.recv):
            conn.close()
        self.stderr.close()
        self.proc = None

    def close(self) -> None:
        """End the child (it exits when its input pipe closes)."""
        if self.proc is not None:
            proc = self.proc
            self._forget()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cwd() -> str:
    """The actor's working folder, or the temp folder when it no longer exists (an actor of a
    `--working-dir` job on a node that joined mid-run runs in one that is gone; a child
    started there fails in its first `os.getcwd`, importing torch)."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return tempfile.gettempdir()


def _serve(read_fd: int, write_fd: int) -> None:
    """The child: build once, then answer calls until the parent closes the pipe."""
    from multiprocessing.connection import Connection

    recv, send = Connection(read_fd), Connection(write_fd)

    def reply(kind: str, value: Any) -> None:
        try:
            send.send_bytes(pickle.dumps((kind, value)))
        except Exception:  # an unpicklable exception or result: its text
            send.send_bytes(pickle.dumps(("raised-text", traceback.format_exc())))

    built: Any = None
    try:
        factory, args = pickle.loads(recv.recv_bytes())
        built = factory(*args)
        info = built.info() if hasattr(built, "info") else None
    except EOFError:
        return
    except Exception as exc:
        reply("raised", exc)
        return
    reply("ok", info)
    while True:
        try:
            call_args = pickle.loads(recv.recv_bytes())
        except EOFError:
            return
        try:
            result = built(*call_args)
        except Exception as exc:
            reply("raised", exc)
        else:
            reply("ok", result)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
