"""The shared daemon's socket server: setup, the kernel-given identity, and surviving garbage."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ecoq.db import EngineReader, open_engine
from ecoq.errors import ConfigError, EcoqError, JobNotFound
from ecoq.scheduler.queue import Queue
from ecoq.shared.access import Admins, peer_credentials
from ecoq.shared.backend import Backend
from ecoq.shared.client import Client
from ecoq.shared.protocol import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    SubmitRequest,
    check_socket_path,
)
from ecoq.shared.server import SharedServer
from ecoq.views import JobView
from tests.conftest import skip_or_fail


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short path (sockets allow 107 bytes; pytest's tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="ecoq-sock-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def broken_submit(req: SubmitRequest, user: str, uid: int) -> JobView:
    raise RuntimeError("a bug")


@pytest.fixture
def server(folder: Path, tmp_path: Path) -> Iterator[SharedServer]:
    engine = open_engine(f"sqlite:///{tmp_path / 'ecoq.db'}")
    backend = Backend(
        Queue(engine),
        reader=lambda: EngineReader(engine),
        submit_fn=broken_submit,
        allow_root_jobs=True,
    )
    shared = SharedServer(folder / "run" / "ecoq.sock", backend, Admins(""), timeout_s=1.0)
    shared.start()
    yield shared
    shared.close()
    engine.dispose()


def raw(path: Path, payload: bytes, *, shut: bool = True) -> dict[str, Any] | None:
    """Send raw bytes; the decoded answer, or None when the server just closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(payload)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return None
    (size,) = struct.unpack(">I", data[:4])
    answer = json.loads(data[4 : 4 + size])
    assert isinstance(answer, dict)
    return answer


def frame(message: Any) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">I", len(body)) + body


def test_socket_is_open_to_all_in_a_folder_only_its_owner_writes(server: SharedServer) -> None:
    assert stat.S_ISSOCK(os.lstat(server.path).st_mode)
    assert stat.S_IMODE(os.lstat(server.path).st_mode) == 0o666
    assert stat.S_IMODE(os.lstat(server.path.parent).st_mode) == 0o755
    hello = Client(server.path).hello()
    assert hello["uid"] == os.geteuid() and hello["admin"] is (os.geteuid() == 0)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\x00\x00\x00\x05hello", "not UTF-8 JSON"),
        (b"GET / HTTP/1.1\r\n\r\n", "exceeds the"),  # "GET " read as a length: 1 GB
        (struct.pack(">I", MAX_REQUEST_BYTES + 1), "exceeds the"),
        (b"\x00\x00\x00\x10{}", "closed after 2 of the 16 bytes"),
        (frame([1, 2, 3]), "not an object"),
        (frame({"v": 1, "op": "sudo", "args": {}}), "unknown operation 'sudo'"),
        (frame({"v": 1, "op": "cancel", "args": {"id": "all"}}), "is not an integer"),
        (frame({"v": 1, "op": "cancel", "args": {"id": 1, "uid": 0}}), "unknown field 'uid'"),
        (frame({"v": 1, "op": "show", "args": {"id": 1}, "as": "root"}), "unknown request key"),
        (frame({"v": 1, "op": "submit", "args": {"command": "x"}}), "'command'"),
    ],
)
def test_garbage_gets_a_clean_error_and_the_server_survives(
    server: SharedServer, payload: bytes, error: str
) -> None:
    answer = raw(server.path, payload)
    assert answer is not None and answer["ok"] is False
    assert answer["error"]["type"] == "ProtocolError" and error in answer["error"]["message"]
    assert Client(server.path).hello()["protocol"] == 1  # still serving


def test_silent_and_vanishing_clients_do_not_stop_the_server(server: SharedServer) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(server.path))  # sends nothing: dropped after timeout_s
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(server.path))
        s.sendall(b"\x00\x00")
        s.close()  # gone mid-header
    assert Client(server.path).hello()["uid"] == os.geteuid()
    silent.settimeout(5)
    assert silent.recv(10) == b""  # the server gave up on it
    silent.close()


def test_unknown_jobs_and_internal_errors_come_back_as_errors(server: SharedServer) -> None:
    client = Client(server.path)
    with pytest.raises(JobNotFound, match="no job 5"):
        client.show(5)
    with pytest.raises(EcoqError, match="internal error in the ecoq daemon; see its log"):
        client.call("submit", **_submit_args())
    assert client.list_jobs() == []


def test_a_missing_daemon_is_reported_with_what_to_check(folder: Path) -> None:
    with pytest.raises(EcoqError, match="cannot reach the shared ecoq daemon at .*is it running"):
        Client(folder / "none.sock").hello()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(
    server: SharedServer, folder: Path, tmp_path: Path
) -> None:
    backend = server.backend
    with pytest.raises(ConfigError, match="another ecoq daemon is listening"):
        SharedServer(server.path, backend, Admins("")).start()
    stale_path = folder / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(stale_path))  # bound, never listening: what a killed daemon leaves
    stale.close()
    with SharedServer(stale_path, backend, Admins("")) as second:
        assert Client(second.path).hello()["protocol"] == 1
    assert not stale_path.exists()  # removed on close


def test_unsafe_socket_settings_are_refused(folder: Path, server: SharedServer) -> None:
    backend = server.backend
    with pytest.raises(ConfigError, match="not an absolute path"):
        check_socket_path("run/ecoq.sock")
    with pytest.raises(ConfigError, match="longer than a Unix socket path"):
        check_socket_path("/" + "x" * 200)
    (folder / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a socket"):
        SharedServer(folder / "file", backend, Admins("")).start()
    open_folder = folder / "tmp"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    with pytest.raises(ConfigError, match="may be written by others"):
        SharedServer(open_folder / "ecoq.sock", backend, Admins("")).start()


def test_admins_setting_is_checked() -> None:
    admins = Admins("root, 4242, @root")
    assert admins.is_admin(0, 0) and admins.is_admin(4242, 4242)
    assert not Admins("").is_admin(4243, 4243)
    assert Admins("@0").is_admin(4243, 0)  # a member of the group (by the caller's gid)
    with pytest.raises(ConfigError, match="no account here"):
        Admins("no-such-user-ecoq")
    with pytest.raises(ConfigError, match="group @no-such-group-ecoq, which does not exist"):
        Admins("@no-such-group-ecoq")
    with pytest.raises(ConfigError, match="empty group"):
        Admins("@")


def in_child_as(uid: int, gid: int, work: Callable[[], Any]) -> Any:
    """Run `work` in a forked child that has become `uid`/`gid`; its JSON result."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() beside threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            out = {"result": work()}
        except BaseException as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_fd, json.dumps(out).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_the_caller_is_who_the_kernel_says(server: SharedServer) -> None:
    if os.geteuid() != 0:
        skip_or_fail("connecting as another user needs root")

    def as_nobody() -> Any:
        client = Client(server.path)
        hello = client.hello()
        try:
            client.call("cancel", id=1, uid=0)  # a request cannot claim an identity
        except ProtocolError as exc:
            return {"hello": hello, "refused": str(exc)}
        return {"hello": hello, "refused": None}

    out = in_child_as(65534, 65534, as_nobody)
    assert "error" not in out, out
    assert out["result"]["hello"]["uid"] == 65534
    assert out["result"]["hello"]["admin"] is False
    assert "unknown field 'uid'" in out["result"]["refused"]


def test_peer_credentials_of_a_socket_pair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())


def _submit_args() -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    return SubmitRequest(
        command=["/bin/true"],
        cwd="/",
        env={},
        name="t",
        deadline=datetime.now(UTC) + timedelta(hours=1),
        zones=["DE"],
    ).to_args()
