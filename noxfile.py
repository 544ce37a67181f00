"""Development sessions: ``tests``, ``lint``, ``typecheck``, ``demo`` and ``fuzz``.

``tests`` and ``demo`` need a real broker: with ``AMQP_URL`` set that one is used; otherwise a
throwaway RabbitMQ node is started on free loopback ports (``trio_lavin.testing.RabbitNode``), and
Debian's ``rabbitmq-server`` is installed with apt first if it is missing and we are root.
``tests`` also runs every broker test on a throwaway LavinMQ node when there is a LavinMQ
binary (``LAVINMQ``, ``lavinmq`` on PATH, or ``../shared/lavinmq/lavinmq``; see
``trio_lavin.testing.LavinNode``), installing its runtime libraries with apt when they are
missing and we are root; without a binary those runs are deselected, except in CI (``CI`` set).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.error_on_missing_interpreters = True
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests"]

TEST_DEPS = [
    "pytest>=8",
    "pytest-trio>=0.8",
    "hypothesis",
    "trustme",
    "websockify",
    "trio-websocket",  # an independent WebSocket server for the transport tests
    "pika",  # the interop tests: other clients publish to trio-lavin and read from it
    "amqp",
]
APT_GET = Path("/usr/bin/apt-get")
#: What the LavinMQ build in ../shared/lavinmq needs at run time (its README).
LAVINMQ_LIBS = ["libgc1", "libpcre3", "libevent-2.1-7", "libevent-pthreads-2.1-7"]


def _rabbitmq_installed() -> bool:
    """Whether RabbitMQ's own scripts are there (where ``trio_lavin.testing.RabbitNode`` looks)."""
    dirs = [
        *glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"),
        "/usr/lib/rabbitmq/bin",
    ]
    return any(Path(d, "rabbitmq-server").is_file() for d in dirs)


def _ignore_failure(session: nox.Session, *args: str) -> None:
    if shutil.which(args[0]) is None:
        return
    try:
        session.run(*args, external=True)
    except CommandFailed:
        session.log(f"ignored: `{' '.join(args)}` failed")


def ensure_broker(session: nox.Session) -> None:
    """Make sure the tests can get a broker: AMQP_URL, or an installed rabbitmq-server."""
    if os.environ.get("AMQP_URL"):
        session.log("using the broker at AMQP_URL (not starting one)")
        return
    if _rabbitmq_installed():
        return
    if os.geteuid() != 0 or not APT_GET.exists():
        session.error(
            "RabbitMQ is not installed and this is not a root shell on Debian/Ubuntu, so it "
            "cannot be installed here: run `apt-get install rabbitmq-server` as root, or set "
            "AMQP_URL to a running broker (amqp://user:password@host:port/vhost)"
        )
    session.log("installing Debian's rabbitmq-server (the tests start private nodes of it)")
    session.run("apt-get", "update", external=True)
    session.run(
        "apt-get",
        "install",
        "-y",
        "rabbitmq-server",
        env={"DEBIAN_FRONTEND": "noninteractive"},
        external=True,
    )
    # The package may have started the system-wide broker (port 5672); the tests never use it.
    _ignore_failure(session, "service", "rabbitmq-server", "stop")
    _ignore_failure(session, "systemctl", "disable", "--now", "rabbitmq-server")
    if not _rabbitmq_installed():
        session.error("apt-get installed rabbitmq-server but its scripts were not found")


def _lavinmq_binary() -> Path | None:
    """The LavinMQ binary the tests will use (``tests/conftest.py`` looks in the same places)."""
    if os.environ.get("LAVINMQ"):
        return Path(os.environ["LAVINMQ"])
    if on_path := shutil.which("lavinmq"):
        return Path(on_path)
    shared = Path(__file__).resolve().parent.parent / "shared" / "lavinmq" / "lavinmq"
    return shared if shared.is_file() else None


def _missing_debian_packages(names: list[str]) -> list[str]:
    if shutil.which("dpkg-query") is None:
        return []  # not Debian: nothing we can check or install
    missing = []
    for name in names:
        try:
            result = subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", name],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        if "ok installed" not in result.stdout:
            missing.append(name)
    return missing


def ensure_lavinmq_libraries(session: nox.Session) -> None:
    """Where there is a LavinMQ binary, make sure its runtime libraries are installed."""
    if _lavinmq_binary() is None:
        return
    missing = _missing_debian_packages(LAVINMQ_LIBS)
    if not missing:
        return
    if os.geteuid() != 0 or not APT_GET.exists():
        session.warn(
            f"LavinMQ's runtime libraries are missing ({' '.join(missing)}): its test runs "
            f"will fail; run `apt-get install {' '.join(missing)}` as root"
        )
        return
    session.log(f"installing LavinMQ's runtime libraries: {' '.join(missing)}")
    session.run("apt-get", "update", external=True)
    session.run(
        "apt-get",
        "install",
        "-y",
        *missing,
        env={"DEBIAN_FRONTEND": "noninteractive"},
        external=True,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, against the real brokers (RabbitMQ, and LavinMQ where there is one),
    with the C properties codec; then, with no arguments given, the protocol core's tests again
    with the Python codec (``TRIO_LAVIN_NO_EXTENSIONS``), which installs without a compiler."""
    ensure_broker(session)
    ensure_lavinmq_libraries(session)
    session.install("-e", ".[ws,prometheus]", *TEST_DEPS)
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs)
    if not session.posargs:
        session.run(
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "tests/sansio",
            env={"TRIO_LAVIN_NO_EXTENSIONS": "1"},
        )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[ws,prometheus]", "mypy", *TEST_DEPS)
    session.run(
        "mypy", "--strict", "trio_lavin", "tests", "examples", "fuzz", "benchmarks", "docs"
    )


@nox.session
def demo(session: nox.Session) -> None:
    """examples/demo.py against a throwaway RabbitMQ node (or the broker at AMQP_URL)."""
    ensure_broker(session)
    session.install("-e", ".")
    command = ["python", "examples/demo.py", *session.posargs]
    if os.environ.get("AMQP_URL"):
        session.run(*command)
    else:
        session.run("python", "-m", "trio_lavin.testing", "rabbitmq", "exec", "--", *command)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Every harness in fuzz/ under atheris (see fuzz/README.md); seconds per
    harness as the first argument (default 60; CI runs ``nox -s fuzz -- 10``).
    Every harness runs even when one finds a crash; the session fails at the
    end, and the crashing input is in ``fuzz/crash-*``."""
    seconds = session.posargs[0] if session.posargs else "60"
    if not seconds.isdigit() or int(seconds) < 1:
        session.error(f"seconds per harness must be a whole number >= 1, not {seconds!r}")
    session.install("-e", ".", "atheris")
    failed = []
    for harness in sorted(Path("fuzz").glob("fuzz_*.py")):
        seeds = Path("fuzz/corpus") / harness.stem.removeprefix("fuzz_")
        # libFuzzer adds what it finds to the first corpus folder: keep that
        # out of the repository's seeds (it is kept for the next local run).
        found = Path(session.create_tmp()) / harness.stem
        found.mkdir(exist_ok=True)
        try:
            session.run(
                "python",
                str(harness),
                str(found),
                str(seeds),
                f"-max_total_time={seconds}",
                f"-artifact_prefix=fuzz/crash-{harness.stem}-",
                "-print_final_stats=1",
            )
        except CommandFailed:
            failed.append(harness.name)
    if failed:
        session.error(f"crashes found by {', '.join(failed)}: see fuzz/crash-*")


#: What ``bench`` compares trio-lavin with (py-amqp is ``amqp``; uvloop runs the asyncio
#: peers), plus pyinstrument for ``--pyinstrument``.  Installed one at a time: one that
#: fails to install shows as "n/a" in the table instead of failing the session.
BENCH_PEERS = ["aio-pika", "aiormq", "pika", "amqp", "uvloop", "pyinstrument"]


def _bench_broker(args: list[str]) -> str:
    """The broker the suite's ``--broker`` asks for (``rabbitmq`` when not given)."""
    for i, arg in enumerate(args):
        if arg == "--broker" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--broker="):
            return arg.partition("=")[2]
    return "rabbitmq"


@nox.session
def bench(session: nox.Session) -> None:
    """benchmarks/bench_suite.py: trio-lavin against every Python peer and two ceiling
    clients, against one broker: a throwaway RabbitMQ node, a throwaway LavinMQ node with
    ``--broker lavinmq`` (the binary found as the tests find it), or AMQP_URL.  Arguments go
    to the suite, e.g. ``nox -s bench -- --rounds 5 --scenarios consume roundtrip``."""
    broker = _bench_broker(session.posargs)
    if broker == "lavinmq" and not os.environ.get("AMQP_URL"):
        if _lavinmq_binary() is None:
            session.error(
                "--broker lavinmq: no LavinMQ binary: set LAVINMQ=/path/to/lavinmq, put "
                "`lavinmq` on PATH, or keep one at ../shared/lavinmq/lavinmq"
            )
        ensure_lavinmq_libraries(session)
    else:
        ensure_broker(session)
    session.install("-e", ".")
    for peer in BENCH_PEERS:
        try:
            session.install(peer)
        except CommandFailed:
            session.warn(f"could not install {peer}: the suite shows it as n/a")
    command = ["python", "benchmarks/bench_suite.py", *session.posargs]
    if os.environ.get("AMQP_URL"):
        session.run(*command)
    elif broker == "lavinmq":
        binary = str(_lavinmq_binary())
        session.run(
            "python", "-m", "trio_lavin.testing", "lavinmq", "exec", "--", *command,
            env={"LAVINMQ": binary},
        )  # fmt: skip
    else:
        session.run("python", "-m", "trio_lavin.testing", "rabbitmq", "exec", "--", *command)
