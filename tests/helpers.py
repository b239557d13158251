"""Test helpers shared by the test modules (fixtures live in `conftest`): tiny media with
known content, test servers, running the jobs as a user would, model packages.

Lossless clips (FFV1 in Matroska, RGB pixel format, PCM audio) make sampling exactly
checkable: frame i is a flat colour with red = i % 256, green = 32 * (i // 256) and
blue = 255 - i % 256, so the decoded pixel says which frame was sampled, and the audio is a
pure tone of known frequency.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import unicodedata
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TEST_KEY = "emotiw-test-key"
TEST_SECRET = "emotiw-test-secret-9f1c2e"
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The CPU / offline modality set (scene on EfficientNet-Lite0, log-mel audio, faces) as flags.
SMOKE_ARGS = ["--preset", "cpu-smoke"]

# Object keys that break naive URL handling, all valid on a file system and on S3.
ODD_NAMES = [
    "with space.mp4", "per%cent.mp4", "per%20cent.mp4", "hash#tag.mp4", "what?.mp4",
    "plus+sign.mp4", unicodedata.normalize("NFC", "café.mp4"),
    unicodedata.normalize("NFD", "café.mp4"), "x" * 180 + ".mp4",
]  # fmt: skip


def frame_colour(i: int) -> tuple[int, int, int]:
    """The flat RGB colour painted into frame `i` of a fixture clip."""
    return (i % 256, 32 * (i // 256), 255 - i % 256)


def index_from_pixel(rgb: np.ndarray) -> int:
    """Inverse of `frame_colour` for one decoded pixel."""
    return int(rgb[0]) + 256 * (int(rgb[1]) // 32)


def write_clip(
    path: Path,
    *,
    n_frames: int = 150,
    fps: int = 25,
    size: tuple[int, int] = (480, 320),
    tone_hz: float | None = 1000.0,
    audio_rate: int = 48_000,
    channels: int = 1,
    audio_s: float | None = None,
    video: bool = True,
) -> Path:
    """Write a lossless clip with numbered frames and (optionally) a pure tone."""
    import av

    width, height = size
    with av.open(str(path), "w", format="matroska") as out:
        vstream = None
        if video:
            vstream = out.add_stream("ffv1", rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "bgr0"
        astream = None
        if tone_hz is not None:
            layout = "mono" if channels == 1 else "stereo"
            astream = out.add_stream("pcm_s16le", rate=audio_rate, layout=layout)
        if vstream is not None:
            for i in range(n_frames):
                frame = np.empty((height, width, 3), dtype=np.uint8)
                frame[...] = frame_colour(i)
                out.mux(vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            out.mux(vstream.encode(None))
        if astream is not None:
            seconds = audio_s if audio_s is not None else n_frames / fps
            t = np.arange(round(seconds * audio_rate)) / audio_rate
            mono = (0.5 * np.sin(2 * np.pi * tone_hz * t) * 32767).astype(np.int16)
            interleaved = np.repeat(mono[:, None], channels, axis=1).reshape(1, -1)
            layout = "mono" if channels == 1 else "stereo"
            for start in range(0, len(mono), 1024):
                piece = interleaved[:, start * channels : (start + 1024) * channels]
                piece = np.ascontiguousarray(piece)
                aframe = av.AudioFrame.from_ndarray(piece, format="s16", layout=layout)
                aframe.sample_rate, aframe.pts = audio_rate, start
                out.mux(astream.encode(aframe))
            out.mux(astream.encode(None))
    return path


def real_photos() -> list[np.ndarray]:
    """Two real photos of people that installed packages ship, RGB uint8: scikit-image's
    astronaut and matplotlib's Grace Hopper (for tests that need real faces and people)."""
    from matplotlib import cbook
    from PIL import Image
    from skimage import data

    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    return [data.astronaut(), np.asarray(hopper)]


# The session's Ray cluster (conftest's `ray_cluster`), while an e2e or nightly test (or a
# module fixture of one) runs: its jobs connect to it. Never in this process's environment,
# so a unit test's command sees no cluster, whichever tests ran before it.
SESSION: dict[str, str | None] = {"ray_address": None}


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What every job subprocess gets: this process's environment, the session cluster's
    address (when an e2e or nightly test runs), no token auth, unbuffered output."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    if SESSION["ray_address"]:
        env["RAY_ADDRESS"] = SESSION["ray_address"]
    return {**env, **(extra or {})}


def free_port() -> int:
    """A port free now. Another process can take it before ours binds it: whatever starts a
    server on it goes through `serve` or `RayNode`, which retry on fresh ports."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    """The live processes of process session `sid`: a child started with
    ``start_new_session=True`` and everything it spawned (unless one called setsid)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # session id; zombies are gone already
            found.append(int(proc.name))
    return found


def title_of(pid: int) -> str:
    """A process's title (Ray renames its workers: ``ray::MapWorker(...)``); "" if gone."""
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]).decode(errors="replace")
    except OSError:
        return ""


def stop_session(leader: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the session's leader, then SIGKILL whatever of its session is left: ends a
    server or a Ray node this test suite started, and nothing else on the host."""
    import signal

    sid = leader.pid
    if leader.poll() is None:
        leader.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=grace_s)
    for pid in session_pids(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait(timeout=5)


@contextlib.contextmanager
def serve(
    make_args: Any,
    health_path: str,
    name: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    tries: int = 3,
) -> Iterator[str]:
    """Run a server (``make_args(port)``: its command line) on a free port until
    ``http://127.0.0.1:PORT{health_path}`` answers, in a process session of its own; yields
    its base URL and stops it (and anything it spawned) afterwards. A server that exits
    before answering (its port was taken in the meantime) is started again on another port."""
    for attempt in range(tries):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            make_args(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + health_path, timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            stop_session(proc, grace_s=5)
            if attempt + 1 < tries and time.monotonic() < deadline:
                continue
            raise RuntimeError(f"{name} did not start")
        try:
            yield url
        finally:
            stop_session(proc, grace_s=5)
        return


class RayNode:
    """One Ray node, ``ray start --block`` in a process session of its own: its GCS, raylet,
    dashboard, agents and workers share that session, so `stop` ends exactly them (never
    another Ray on the host, as `ray stop` would) and `pids_titled` finds only its actors.
    Every port is chosen free (a second node on this machine needs its own agents' ports);
    a start that fails on a port taken meanwhile is retried on fresh ones."""

    PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")  # fmt: skip

    def __init__(self, *args: str, head: bool, env: dict[str, str], tries: int = 3) -> None:
        import tempfile

        self.temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths stay short
        ray = str(BIN / "ray")
        for attempt in range(tries):
            self.port, self.dashboard_port = free_port(), free_port()
            ports = [f"--{name}={free_port()}" for name in self.PORTS]
            if head:
                ports += [f"--port={self.port}", f"--dashboard-port={self.dashboard_port}",
                          f"--ray-client-server-port={free_port()}",
                          "--include-dashboard=true"]  # fmt: skip
            # Every node its own temp dir: two nodes on one host sharing one would unpack a
            # job's working dir into the same folder, the second replacing the first under
            # the other node's running actors (their working folder gone).
            ports.append(f"--temp-dir={self.temp}")
            self.log = Path(self.temp + f"-{attempt}.log")
            with self.log.open("w") as log:
                self.proc = subprocess.Popen(
                    [ray, "start", "--block", "--disable-usage-stats", *ports, *args],
                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )  # fmt: skip
            deadline = time.monotonic() + 120
            while self.proc.poll() is None and time.monotonic() < deadline:
                if "Ray runtime started" in self.log.read_text(errors="replace"):
                    return
                time.sleep(0.2)
            stop_session(self.proc, grace_s=5)
        raise RuntimeError("ray start failed:\n" + self.log.read_text(errors="replace")[-3000:])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def pids_titled(self, prefix: str) -> list[int]:
        """This node's processes whose title starts with `prefix`."""
        return [pid for pid in session_pids(self.proc.pid) if title_of(pid).startswith(prefix)]

    def stop(self) -> None:
        import shutil

        stop_session(self.proc, grace_s=10)
        shutil.rmtree(self.temp, ignore_errors=True)


def run_job(
    job: str, *args: str, timeout: int = 900, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``python jobs/<job>.py ARGS`` as a user would run it; asserts success unless told not."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{job}.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=job_env(env),
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def run_here(
    job: str, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`run_job` without the process: ``emotiw.cli.commands.main([job, *args])`` in this process
    (the entrypoints are that call and nothing else), on the session's Ray cluster, with `env` set
    and stdout / stderr captured for the call, then everything put back: environment, log handlers,
    Ray connection. For tests where no process boundary is under test."""
    import ray

    try:
        proc = main_here(job, *args, env=job_env(env))
    finally:
        ray.shutdown()  # disconnect: the cluster stays up
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def main_here(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``emotiw.cli.commands.main(argv)`` in this process as the console script runs it (argparse's
    usage errors become their exit code), with `env` set and stdout / stderr captured, then
    the environment, the log handlers and MLflow's tracking URI put back."""
    import io

    from emotiw.cli.commands import main
    from emotiw.core import logs

    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exit_:
                code = int(exit_.code or 0)
    finally:
        logs.setup("info", "text")  # the handler on this process's stderr again
        if "mlflow" in sys.modules:  # a job pointed MLflow at its store: point it back
            import mlflow

            mlflow.set_tracking_uri(saved.get("MLFLOW_TRACKING_URI"))
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def run_cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """The installed `emotiw` console script."""
    proc = subprocess.run(
        [str(BIN / "emotiw"), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def smoke_configs() -> Any:
    """The `cpu-smoke` preset's modality configs (what tests, benchmarks and the demo use)."""
    from emotiw.models.features import ModalityConfigs

    return ModalityConfigs.preset("cpu-smoke")


def make_package(
    folder: Path, configs: Any, seed: int = 0, fusion_options: dict[str, Any] | None = None
) -> Path:
    """A packaged model of seeded random-init heads and an FC fusion over `configs`
    (`fusion_options`: its settings other than the defaults)."""
    import torch

    from emotiw.models import fusion
    from emotiw.models.packaging import PackagedModel, save_model

    torch.manual_seed(seed)
    heads, provenance = {}, {"heads": "random-init (test)"}
    for spec in configs.specs():  # as training does: pretrained front-ends put back
        cfg = configs.of(spec.name)
        heads[spec.name] = spec.head_with_frontend(cfg, spec.head(cfg).state_dict())
        provenance.update({k: str(v) for k, v in spec.provenance(heads[spec.name]).items()})
    options = {"method": "fc", "modalities": configs.modalities, **(fusion_options or {})}
    fc = fusion.build(heads, fusion.Config(**options))
    package = PackagedModel(configs, heads, {"fc": fc}, "fc", provenance, {"note": "test"})
    return save_model(folder, package)


def write_bad_files(folder: Path) -> None:
    """A corrupt and an empty "video" next to good ones."""
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500)
    (folder / "empty.mp4").write_bytes(b"")


class FaultyS3Proxy:
    """A real HTTP proxy in front of the S3 test server, for fault injection into a job that
    runs in another process: `fail_gets` drops the connection of the next GETs of a key
    (every client retry layer sees a network failure), `outage` cuts every open connection
    (a request in flight may have reached S3 without its answer reaching the client) and
    refuses new ones for a few seconds, then serves again. The S3 server keeps its data."""

    def __init__(self, upstream: str) -> None:
        import threading
        from urllib.parse import urlparse

        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.failures: dict[str, int] = {}
        self.dropped = 0
        self.lock = threading.Lock()
        self.server: Any = None
        self.connections: set[Any] = set()  # client sockets open now (kept alive between calls)
        self.cut = 0  # connections cut by `stop` / `outage`
        self.start()

    def fail_gets(self, key_part: str, times: int) -> None:
        with self.lock:
            self.failures[key_part] = times

    def _should_fail(self, method: str, path: str) -> bool:
        with self.lock:
            for part, left in self.failures.items():
                if method == "GET" and part in path and left > 0:
                    self.failures[part] = left - 1
                    self.dropped += 1
                    return True
        return False

    def start(self) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a connection cut by `outage` mid-request: expected, not news

        self.server = Server(("127.0.0.1", self.port), _proxy_handler(self))
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        """Stop listening and cut the open connections (keep-alive ones would otherwise go
        on being served: a client with a pooled connection would never see the outage)."""
        import contextlib
        import socket

        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            open_now, self.connections = list(self.connections), set()
            self.cut += len(open_now)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def outage(self, seconds: float) -> None:
        """Refuse connections for `seconds` (returns at once)."""
        import threading

        self.stop()
        threading.Timer(seconds, self.start).start()


def _proxy_handler(proxy: FaultyS3Proxy) -> type:
    import http.client
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            with proxy.lock:
                proxy.connections.add(self.connection)

        def finish(self) -> None:
            with proxy.lock:
                proxy.connections.discard(self.connection)
            super().finish()

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _relay(self) -> None:
            body = self._body()
            if proxy._should_fail(self.command, self.path):
                self.close_connection = True
                return  # no response: the client sees the connection closed
            skip = {"transfer-encoding", "content-length", "connection", "host"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            headers["Host"] = self.headers.get("Host", "")
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            try:
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


def cookbook() -> dict[str, str]:
    """The docs' query cookbook: first comment line -> SQL (over ``runs/demo/scores``)."""
    text = (ROOT / "docs" / "tutorials" / "query.md").read_text()
    start = text.index("## Query cookbook")
    block = text[
        text.index("```sql\n", start) + 7 : text.index("```", text.index("```sql\n", start) + 7)
    ]
    queries = {}
    for part in block.split(";"):
        lines = [line for line in part.strip().splitlines() if line.strip()]
        if lines:
            queries[lines[0].removeprefix("-- ")] = "\n".join(lines[1:])
    return queries


def run_cookbook(scores: Path) -> dict[str, list[tuple]]:
    """Every cookbook query over the scores table at `scores`, with DuckDB."""
    import duckdb

    return {
        name: duckdb.sql(sql.replace("runs/demo/scores", str(scores))).fetchall()
        for name, sql in cookbook().items()
    }


def doc_commands(page: Path) -> list[list[str]]:
    """Every command of a page's ``sh`` blocks (continuations joined, comments dropped)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                if part.strip() and not part.strip().startswith("#"):
                    out.append(shlex.split(part))
    return out
