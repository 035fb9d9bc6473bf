"""A shared box end to end, with real users created for the test.

A root `ecoq daemon` serves a socket; users run the real `ecoq` CLI as themselves. Their
commands run in processes forked from this one that take on the user's uid, gid and groups
(as `su` would) and then call the CLI: the kernel hands the daemon those ids, and the code
needs no files the user could not read (this checkout and its Python may sit in root's home;
what the CLI imports is imported first, by running the same commands as root). Needs root and
`useradd` (CI has both).

The daemon's forecasts come from a local stand-in for Electricity Maps that answers only with
the daemon's token (in the daemon's environment alone), so a user's `ecoq forecast` can only
work through the daemon.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import ecoq.errors
from ecoq.cli import app
from tests.conftest import skip_or_fail

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
]

SECRET = "s3cret-of-A"
IDS_JOB = "id -u > ids; id -g >> ids; id -G >> ids; echo secret=$ECOQ_E2E_SECRET"
TOKEN = "em-token-of-root-" + secrets.token_hex(8)
#: A stand-in for Electricity Maps' /v3/carbon-intensity/forecast: 73 hourly values from this
#: hour, lowest now; any other path is a 404, a missing or wrong token a 401.
EM_STUB = r"""
import json, sys
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOUR = timedelta(hours=1)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("auth-token") != sys.argv[1]:
            return self.answer(401, {"error": "missing or wrong token"})
        if not self.path.startswith("/v3/carbon-intensity/forecast?"):
            return self.answer(404, {"error": "no such path"})
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        points = [
            {"carbonIntensity": 150 + 10 * (i % 12), "datetime": (hour + i * HOUR).isoformat()}
            for i in range(73)
        ]
        self.answer(200, {"zone": "DE", "forecast": points, "updatedAt": hour.isoformat()})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path


@dataclass
class Box:
    base: Path
    config: Path
    data: Path
    socket: Path
    owner: User  # A: submits jobs; has an extra group
    other: User  # B: another user
    admin: User  # C: in the admin group
    extra_gid: int
    daemon_pid: int

    def log(self) -> str:
        """The end of the daemon's log, for failure messages."""
        return (self.base / "daemon.log").read_text(errors="replace")[-3000:]


@dataclass
class Result:
    code: int
    out: str
    err: str


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _warm_imports(config: Path, sock: Path) -> None:
    """Load now what the CLI loads lazily, while this process may read every file: a child
    that has become a user may not read this checkout or the Python install (e.g. under
    /root). Root runs the same commands the test's users run, against the empty box, where
    they change nothing (the submit is refused: root may not submit on a shared box)."""
    from ecoq.shared.client import Client

    env: dict[str, str | None] = {"ECOQ_CONFIG": str(config)}
    env.update(dict.fromkeys([k for k in os.environ if k.startswith("ECOQ_")]))
    env["ECOQ_CONFIG"] = str(config)
    sh = ["submit", "/bin/sh", "--deadline", "1h", "--duration", "1m", "--json", "--", "-c", ":"]
    for args in (
        sh,
        ["queue"],
        ["queue", "--all", "--json"],
        ["show", "1"],
        ["show", "1", "--json"],
        ["logs", "1"],
        ["wait", "1", "--timeout", "0"],
        ["start", "1"],
        ["cancel", "1"],
        ["report"],
        ["forecast", "--zone", "DE"],
        ["meter", "--zone", "DE", "--json", "--", "/bin/true"],
    ):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code != 0 or args[0] in ("queue", "report", "meter"), (
            args,
            result.stdout,
        )
    client = Client(sock)
    client.hello()
    client.list_jobs(include_finished=True)
    for call in (client.show, client.logs, client.job_plot):
        with pytest.raises(ecoq.errors.JobNotFound):
            call(1)
    client.report(since="1d", until=None, by="job", fmt="json", codecarbon=False)
    client.forecast(zone="DE", hours=1, duration=None, deadline=None, provider=None)


def in_child(user: User, work: Callable[[], Any], env: dict[str, str] | None = None) -> Any:
    """Run `work` in a forked child that became `user` (groups, gid, uid, home, environment);
    returns its JSON result, or raises AssertionError with the child's error."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() beside threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.setgroups(os.getgrouplist(user.name, user.gid))
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.chdir(user.home)
            os.environ.clear()
            os.environ.update(env or {})
            out: dict[str, Any] = {"result": work()}
        except BaseException as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_fd, json.dumps(out).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    answer = json.loads(data)
    if "error" in answer:
        raise AssertionError(f"as {user.name}: {answer['error']}")
    return answer["result"]


def ecoq_as(box: Box, user: User, *args: str) -> Result:
    """`ecoq ARGS` run by `user` (in their home, with their environment)."""
    env = {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "ECOQ_CONFIG": str(box.config),
        "ECOQ_E2E_SECRET": SECRET if user is box.owner else "other",
    }

    def work() -> dict[str, Any]:
        result = CliRunner().invoke(app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            return {"code": -1, "out": result.stdout, "err": repr(result.exception)}
        return {"code": result.exit_code, "out": result.stdout, "err": result.stderr}

    got = in_child(user, work, env)
    return Result(got["code"], got["out"], got["err"])


def _add_user(name: str, *groups: str) -> User:
    extra = ["--groups", ",".join(groups)] if groups else []
    _run("useradd", "--create-home", "--user-group", "--shell", "/bin/sh", *extra, name)
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def _remove(users: list[str], groups: list[str]) -> None:
    uids = set()
    for name in users:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            continue
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):  # the test users' jobs
        try:
            if os.stat(f"/proc/{pid}").st_uid in uids:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for name in users:
        subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, timeout=30)
    for name in groups:
        subprocess.run(["groupdel", name], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    if os.geteuid() != 0:
        skip_or_fail("a shared box needs root: to create users and to start jobs as them")
    if shutil.which("useradd") is None or shutil.which("groupadd") is None:
        skip_or_fail("useradd/groupadd are missing (Debian package passwd)")
    tag = secrets.token_hex(3)  # unique names: other test runs may share this machine
    users = [f"ecoqa{tag}", f"ecoqb{tag}", f"ecoqc{tag}"]
    groups = [f"ecoqx{tag}", f"ecoqadm{tag}"]
    base = Path(tempfile.mkdtemp(prefix="ecoq-e2e-"))
    base.chmod(0o755)
    daemon: subprocess.Popen[bytes] | None = None
    stub: subprocess.Popen[str] | None = None
    try:
        stub = subprocess.Popen(
            [sys.executable, "-c", EM_STUB, TOKEN], stdout=subprocess.PIPE, text=True
        )
        assert stub.stdout is not None
        em_port = int(stub.stdout.readline())
        for group in groups:
            _run("groupadd", group)
        owner = _add_user(users[0], groups[0])
        other = _add_user(users[1])
        admin = _add_user(users[2], groups[1])
        data, sock = base / "data", base / "run" / "ecoq.sock"
        config = base / "ecoq.toml"
        config.write_text(
            f'[paths]\ndata_dir = "{data}"\n'
            f'[database]\nurl = "sqlite:///{data}/ecoq.db"\n'
            '[site]\nzone = "DE"\ngpus = 0\n'
            "[daemon]\ntick_interval_s = 0.2\nkill_grace_s = 2.0\n"
            "[meters]\nrapl = false\nnvml = false\n"
            f'[shared]\nsocket = "{sock}"\nadmins = "@{groups[1]}"\n'
            '[forecast]\nprovider = "electricitymaps"\n'
            f'[forecast.electricitymaps]\nbase_url = "http://127.0.0.1:{em_port}"\n'
        )
        config.chmod(0o644)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ECOQ_CONFIG": str(config)}
        env["ECOQ_ELECTRICITYMAPS_TOKEN"] = TOKEN  # the daemon's alone
        env["HOME"] = os.environ.get("HOME", "/root")
        with open(base / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "ecoq", "daemon"],
                env=env,
                cwd=base,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the daemon did not listen:\n{(base / 'daemon.log').read_text()}")
            time.sleep(0.05)
        _warm_imports(config, sock)
        extra_gid = __import__("grp").getgrnam(groups[0]).gr_gid
        yield Box(base, config, data, sock, owner, other, admin, extra_gid, daemon.pid)
    finally:
        if stub is not None:
            stub.kill()
            stub.wait()
            if stub.stdout is not None:
                stub.stdout.close()
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)  # warm stop, then cold: running jobs end too
            time.sleep(0.3)
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        _remove(users, groups)
        shutil.rmtree(base, ignore_errors=True)


def submit(box: Box, user: User, command: str) -> int:
    res = ecoq_as(
        box,
        user,
        *("submit", "/bin/sh", "--deadline", "1h", "--duration", "1m", "--json", "--", "-c"),
        command,
    )
    assert res.code == 0, f"{res}\n{box.log()}"
    job = json.loads(res.out)
    started = ecoq_as(box, user, "start", str(job["id"]))  # no waiting for a cleaner hour
    assert started.code == 0 or "only waiting jobs can start" in started.err, started
    return int(job["id"])


def wait(box: Box, user: User, job_id: int) -> Result:
    return ecoq_as(box, user, "wait", str(job_id), "--poll", "0.1", "--timeout", "20")


def test_a_users_job_runs_as_that_user_and_only_they_and_admins_see_it(box: Box) -> None:
    a, b, c = box.owner, box.other, box.admin
    job1 = submit(box, a, IDS_JOB)
    done = wait(box, a, job1)
    assert done.code == 0, f"{done}\n{box.log()}"
    # It ran as A: A's uid, primary group and every supplementary group, never root.
    ids = (a.home / "ids").read_text().split("\n")
    assert ids[0] == str(a.uid) and ids[1] == str(a.gid)
    assert sorted(int(g) for g in ids[2].split()) == sorted(os.getgrouplist(a.name, a.gid))
    assert box.extra_gid in {int(g) for g in ids[2].split()}
    assert (a.home / "ids").stat().st_uid == a.uid
    shown = json.loads(ecoq_as(box, a, "show", str(job1), "--json").out)
    assert (shown["state"], shown["user"]) == ("succeeded", a.name)
    # Its output (with A's environment in it) is A's to read, and an admin's.
    assert f"secret={SECRET}" in ecoq_as(box, a, "logs", str(job1)).out
    assert f"secret={SECRET}" in ecoq_as(box, c, "logs", str(job1)).out

    # B sees none of it: not in the queue, not shown, no logs.
    assert job1 not in [
        j["id"] for j in json.loads(ecoq_as(box, b, "queue", "--all", "--json").out)
    ]
    for args in (["show", str(job1)], ["show", str(job1), "--json"], ["logs", str(job1)]):
        res = ecoq_as(box, b, *args)
        assert res.code == 2 and f"no job {job1} of yours" in res.err, res
        assert SECRET not in res.out + res.err

    # Nor behind the daemon's back: the database, the job's records and its output are closed.
    run_dir = Path(
        sqlite3.connect(box.data / "ecoq.db")
        .execute("SELECT run_dir FROM runs WHERE job_id = ?", (job1,))
        .fetchone()[0]
    )

    def peek() -> dict[str, str]:
        outcome = {}
        for path in (box.data / "ecoq.db", run_dir / "spec.json", run_dir / "output.log"):
            try:
                path.read_bytes()
                outcome[path.name] = "read"
            except PermissionError:
                outcome[path.name] = "denied"
        try:
            os.listdir(box.data)
            outcome["data"] = "listed"
        except PermissionError:
            outcome["data"] = "denied"
        return outcome

    assert set(in_child(b, peek).values()) == {"denied"}
    assert stat.S_IMODE((box.data / "ecoq.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(box.data.stat().st_mode) == 0o711
    assert (run_dir / "output.log").stat().st_uid == a.uid  # A's own output is A's
    assert stat.S_IMODE(box.socket.stat().st_mode) == 0o666


def test_only_the_owner_and_admins_change_a_running_job(box: Box) -> None:
    a, b, c = box.owner, box.other, box.admin
    job2 = submit(box, a, "echo started; exec sleep 60")
    deadline = time.monotonic() + 20
    while json.loads(ecoq_as(box, a, "show", str(job2), "--json").out)["state"] != "running":
        assert time.monotonic() < deadline, f"job 2 never started\n{box.log()}"
        time.sleep(0.1)
    for action in ("cancel", "hold", "release", "start"):
        res = ecoq_as(box, b, action, str(job2))
        assert res.code == 2 and f"no job {job2} of yours" in res.err, (action, res)
    assert json.loads(ecoq_as(box, a, "show", str(job2), "--json").out)["state"] == "running"
    listed = json.loads(ecoq_as(box, c, "queue", "--json").out)
    assert {(j["id"], j["user"]) for j in listed} >= {(job2, a.name)}
    res = ecoq_as(box, c, "cancel", str(job2))
    assert res.code == 0 and "cancel requested" in res.out, res
    ended = wait(box, a, job2)
    assert "cancelled" in ended.out, f"{ended}\n{box.log()}"


def report_jobs(box: Box, user: User, *flags: str) -> set[int]:
    """Ids of the jobs in `user`'s `ecoq report --by job` over the last day."""
    res = ecoq_as(box, user, "report", "--since", "1d", "--by", "job", "--json", *flags)
    assert res.code == 0, f"{res}\n{box.log()}"
    return {int(row["group"].split()[0]) for row in json.loads(res.out)["rows"]}


def test_each_user_reports_on_their_own_jobs_and_an_admin_on_everyones(box: Box) -> None:
    a, b, c = box.owner, box.other, box.admin
    job_a, job_b = submit(box, a, "echo a"), submit(box, b, "echo b")
    for user, job in ((a, job_a), (b, job_b)):
        done = wait(box, user, job)
        assert done.code == 0, f"{done}\n{box.log()}"
    mine, theirs, everyone = report_jobs(box, a), report_jobs(box, b), report_jobs(box, c)
    assert job_a in mine and job_b not in mine
    assert job_b in theirs and job_a not in theirs
    assert {job_a, job_b} <= everyone and mine | theirs <= everyone
    by_user = ecoq_as(box, a, "report", "--since", "1d", "--by", "user", "--format", "csv")
    assert by_user.code == 0 and a.name in by_user.out and b.name not in by_user.out, by_user
    table = ecoq_as(box, a, "report", "--since", "1d", "--by", "user")
    assert f"only runs of jobs submitted by uid {a.uid}" in table.out, table
    # --out is written by the user's own process, as the user, where the user may write.
    for name, flags in (("r.html", ["--format", "html"]), ("e.csv", ["--codecarbon"])):
        out = a.home / name
        res = ecoq_as(box, a, "report", "--since", "1d", *flags, "--out", str(out))
        assert res.code == 0 and f"wrote {out} (" in res.out, f"{res}\n{box.log()}"
        assert out.stat().st_uid == a.uid and b.name not in out.read_text()
    res = ecoq_as(box, b, "report", "--out", str(a.home / "r.html"))  # not where B may write
    assert res.code == 2 and "cannot write --out" in res.err, res
    res = ecoq_as(box, a, "report", "--by", "team")  # checked by the daemon, same message
    assert res.code == 2 and "--by 'team' is not one of" in res.err, res


def test_a_users_forecast_uses_the_daemons_credentials_unseen(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, c = box.owner, box.admin
    res = ecoq_as(box, a, "forecast", "--zone", "DE", "--json")
    assert res.code == 0, f"{res}\n{box.log()}"
    got = json.loads(res.out)
    assert (got["zone"], got["source"]) == ("DE", "electricitymaps")
    assert got["points"][0]["g_per_kwh"] == 150.0
    text = ecoq_as(box, a, "forecast", "--zone", "DE", "--duration", "1h", "--deadline", "6h")
    assert text.code == 0 and "(electricitymaps)" in text.out and "best window" in text.out
    # The same forecast root sees, reading the database and the providers itself.
    monkeypatch.setenv("ECOQ_CONFIG", str(box.config))
    monkeypatch.setenv("ECOQ_ELECTRICITYMAPS_TOKEN", TOKEN)
    for name in ("ECOQ_DATABASE_URL", "ECOQ_PATHS__DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    direct = CliRunner().invoke(app, ["forecast", "--zone", "DE", "--json"])
    assert direct.exit_code == 0, direct.output
    assert json.loads(direct.stdout)["points"] == got["points"]
    # `ecoq meter` run by the user prices its energy at the daemon's intensity.
    metered = ecoq_as(box, a, "meter", "--zone", "DE", "--json", "--", "/bin/true")
    assert metered.code == 0, f"{metered}\n{box.log()}"
    report = json.loads(metered.out.strip().splitlines()[-1])
    assert report["g_per_kwh"] == 150.0 and "Electricity Maps" in str(report["intensity_source"])
    # The user never holds the token: not in their answers, not in the daemon's environment.
    assert TOKEN not in res.out + res.err + text.out + text.err + metered.out + metered.err

    def environ() -> str:
        try:
            Path(f"/proc/{box.daemon_pid}/environ").read_bytes()
        except PermissionError:
            return "denied"
        return "read"

    assert in_child(a, environ) == "denied"
    # Asking a provider directly spends the daemon's credentials uncached: admins only.
    res = ecoq_as(box, a, "forecast", "--zone", "DE", "--provider", "electricitymaps")
    assert res.code == 2 and "only admins may" in res.err, res
    res = ecoq_as(box, c, "forecast", "--zone", "DE", "--provider", "electricitymaps", "--json")
    assert res.code == 0 and json.loads(res.out)["source"] == "electricitymaps", res
    res = ecoq_as(box, a, "forecast", "--zone", "DE", "--hours", "0")
    assert res.code == 2 and "--hours 0 must be more than 0" in res.err, res


def test_job_plots_are_drawn_by_the_daemon_for_the_owner_and_admins(box: Box) -> None:
    a, b, c = box.owner, box.other, box.admin
    job = submit(box, a, "echo plot")
    assert wait(box, a, job).code == 0

    def plot() -> str:
        from ecoq.shared.client import Client

        try:
            png = Client(box.socket).job_plot(job)
        except ecoq.errors.JobNotFound as exc:
            return str(exc)
        return "png" if png.startswith(b"\x89PNG") else "not a png"

    assert in_child(a, plot) == "png"
    assert in_child(c, plot) == "png"
    assert f"no job {job} of yours" in in_child(b, plot)
    png = a.home / "plot.png"
    res = ecoq_as(box, a, "show", str(job), "--plot", str(png))
    assert res.code == 0 and "plot written" in res.out, res
    assert png.stat().st_uid == a.uid and png.read_bytes().startswith(b"\x89PNG")
    res = ecoq_as(box, b, "show", str(job), "--plot", str(b.home / "plot.png"))
    assert res.code != 0 and not (b.home / "plot.png").exists(), res


def test_root_does_not_submit_jobs_on_a_shared_box(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECOQ_CONFIG", str(box.config))
    for name in ("ECOQ_DATABASE_URL", "ECOQ_PATHS__DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    res = CliRunner().invoke(app, ["submit", "/bin/true", "--deadline", "1h", "--duration", "1m"])
    assert res.exit_code == 2 and "root may not submit jobs on a shared box" in res.stderr
    listed = CliRunner().invoke(app, ["queue", "--all", "--json"])  # root reads the database
    assert listed.exit_code == 0 and {j["user"] for j in json.loads(listed.stdout)} <= {
        box.owner.name,
        box.other.name,
    }
