"""The shared daemon's Unix socket server: `ecoq daemon` runs it when `shared.socket` is set.

The socket is mode 0666 in a root-owned folder that only root may write (0755), so any local
user can connect and nobody can replace it. Each connection carries one request: the server
reads the caller's credentials from the kernel, reads and checks the request, runs it through
the `Backend` and answers. Requests run on their own threads, at most `max_clients` at once;
a client that sends nothing for `timeout_s` is dropped. No request, however malformed, stops the
server: the caller gets an error answer and the connection is closed.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import stat
import threading
from pathlib import Path
from typing import Any

from ecoq.errors import ConfigError, EcoqError
from ecoq.shared.access import Admins, identify, peer_credentials
from ecoq.shared.backend import Backend
from ecoq.shared.protocol import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    ProtocolError,
    Streamed,
    check_socket_path,
    failure,
    ok,
    parse_request,
    recv,
    send,
    send_stream,
)

__all__ = ["SharedServer"]

log = logging.getLogger(__name__)
_DRAIN_BYTES = 1024 * 1024


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        shared = self.server.owner
        if not shared.slots.acquire(timeout=shared.timeout_s):
            self._answer(sock, failure(EcoqError("the ecoq daemon is busy; try again")))
            return
        try:
            sock.settimeout(shared.timeout_s)
            self._serve(sock, shared)
        except Exception:  # one bad connection never stops the server
            log.exception("socket request failed")
        finally:
            shared.slots.release()

    def _serve(self, sock: socket.socket, shared: SharedServer) -> None:
        pid, uid, gid = peer_credentials(sock)
        caller = identify(pid, uid, gid, shared.admins)
        try:
            request = parse_request(recv(sock, limit=MAX_REQUEST_BYTES))
        except ProtocolError as exc:
            log.warning("%s (pid %s): bad request: %s", caller.label, pid, exc)
            self._answer(sock, failure(exc))
            return
        except OSError as exc:  # timed out, or the client went away
            log.debug("%s (pid %s): no request: %s", caller.label, pid, exc)
            return
        stream: str | None = None
        try:
            result = shared.backend.handle(caller, request)
            if isinstance(result, Streamed):  # a report: its text follows the answer
                answer, stream = ok(result.head), result.text
            else:
                answer = ok(result)
        except EcoqError as exc:
            answer = failure(exc)
        except Exception:
            log.exception("%s: %s failed", caller.label, request.op)
            answer = failure(EcoqError("internal error in the ecoq daemon; see its log"))
        self._answer(sock, answer, stream)

    @staticmethod
    def _answer(sock: socket.socket, message: dict[str, Any], stream: str | None = None) -> None:
        try:
            try:
                if stream is None:
                    send(sock, message, limit=MAX_RESPONSE_BYTES)
                else:
                    send_stream(sock, message, stream)
            except ProtocolError as exc:  # the answer itself is too large
                send(sock, failure(exc), limit=MAX_RESPONSE_BYTES)
            # Closing with unread input would reset the connection, and the client could lose
            # the answer: read what is left of a refused request (a little, briefly) first.
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.2)
            left = _DRAIN_BYTES
            while left > 0 and (chunk := sock.recv(min(left, 65536))):
                left -= len(chunk)
        except OSError:
            pass  # the client went away; nothing to tell it


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, owner: SharedServer) -> None:
        self.owner = owner
        super().__init__(path, _Handler)


class SharedServer:
    """Serves `backend` on the Unix socket at `path` (start with `start()`, stop with `close()`).

    Raises ConfigError from `start()` when the socket cannot be set up safely: a relative or
    too long path, a folder others may write, a live daemon already on it, or a path that is
    not a socket.
    """

    def __init__(
        self,
        path: Path,
        backend: Backend,
        admins: Admins,
        *,
        max_clients: int = 16,
        timeout_s: float = 10.0,
    ) -> None:
        self.path = check_socket_path(str(path))
        self.backend = backend
        self.admins = admins
        self.timeout_s = timeout_s
        self.slots = threading.BoundedSemaphore(max_clients)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def start(self) -> None:
        self._prepare_folder()
        self._clear_stale()
        try:
            server = _Server(str(self.path), self)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.path}: {exc.strerror}; check shared.socket"
            ) from exc
        os.chmod(self.path, 0o666)  # connecting needs write permission on the socket
        self._inode = os.lstat(self.path).st_ino
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="ecoq-socket"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("serving users on %s", self.path)

    def _prepare_folder(self) -> None:
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(mode=0o755, parents=True)
            folder.chmod(0o755)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"the socket's folder {folder} is not a folder; fix shared.socket")
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise ConfigError(
                f"the socket's folder {folder} (owner uid {info.st_uid}, mode "
                f"{stat.S_IMODE(info.st_mode):o}) may be written by others, who could replace "
                "the socket; use a folder only root may write, such as /run/ecoq (0755)"
            )

    def _clear_stale(self) -> None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ConfigError(
                f"{self.path} exists and is not a socket; remove it or change shared.socket"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except OSError:
            os.unlink(self.path)  # left by a daemon that died: nobody listens
            return
        finally:
            probe.close()
        raise ConfigError(
            f"another ecoq daemon is listening on {self.path}; stop it first "
            "(`systemctl stop ecoq`)"
        )

    def close(self) -> None:
        """Stop serving and remove the socket (if it is still the one this server made)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        try:
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        log.info("stopped serving on %s", self.path)

    def __enter__(self) -> SharedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
