"""systemd integration: the `zipmount@.service` template passes `systemd-analyze verify`, keeps
its mounts visible to the host, and the daemon speaks sd_notify the way `Type=notify` needs:
READY=1 only once every mount of the config answers, STATUS= lines, STOPPING=1 and exit 0 on
SIGTERM/SIGINT with nothing left mounted.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from service_kit import (
    REPO,
    SIGNALS,
    ZIPMOUNT,
    Endpoint,
    assert_nothing_left,
    clean_env,
    daemon,
    fresh_dirs,
    notify_socket,
    require_fuse,
    wait_until,
    write_config,
)
from support.mount import cleanup, is_mounted, pids_with_marker, run

# these tests mount with zipmount's own commands (service_kit), not through ``zm``
pytestmark = pytest.mark.usefixtures("fuse")

UNIT = REPO / "systemd" / "zipmount@.service"

# Options that give a service its own mount namespace (systemd's exec_needs_mount_namespace):
# mount propagation from the service to the host is then off and the FUSE mounts would exist
# only inside the service.
NAMESPACING = {
    "PrivateMounts", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "PrivateIPC", "PrivateNetwork", "RootDirectory", "RootImage", "MountImages",
    "ExtensionImages", "ExtensionDirectories", "LogNamespace", "DynamicUser", "MountFlags",
    "NetworkNamespacePath", "IPCNamespacePath",
}


def _unit_sections() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{UNIT}: key outside a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# --------------------------------------------------------------------------------------------
# the unit file
# --------------------------------------------------------------------------------------------
def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (the unit file must be "
                    "verified, this test does not skip)", pytrace=False)
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/zipmount " in text
    # As installed, but ExecStart pointing at this venv's binary (verify checks it exists).
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / UNIT.name).write_text(text.replace("/usr/local/bin/zipmount", str(ZIPMOUNT)))
    for name in (UNIT.name, "zipmount@lab.service"):
        r = run([analyze, "verify", "--man=no", str(unit_dir / name)], timeout=60,
                env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
        assert r.rc == 0 and not r.stdout.strip() and not r.stderr.strip(), r.describe()


def test_systemd_analyze_verify_catches_mistakes(tmp_path):
    """The check above is meaningful: a typo in the unit makes verify complain."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd", pytrace=False)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    bad = UNIT.read_text().replace("/usr/local/bin/zipmount", str(ZIPMOUNT))
    bad = bad.replace("Type=notify", "Type=notfy")
    (unit_dir / UNIT.name).write_text(bad)
    r = run([analyze, "verify", "--man=no", str(unit_dir / UNIT.name)], timeout=60)
    assert "Type" in r.stderr or "service type" in r.stderr, r.describe()


def test_unit_contract():
    s = _unit_sections()
    unit, service, install = s["Unit"], s["Service"], s["Install"]
    assert service["Type"] == ["notify"]
    exec_start = service["ExecStart"][-1]
    assert "--config /etc/zipmount/%i.yaml" in exec_start
    assert re.search(r"(^|\s)(--foreground|-f)(\s|$)", exec_start), \
        "the daemon must stay the main process for Type=notify"
    assert service["Restart"] == ["on-failure"]
    assert "network-online.target" in " ".join(unit["After"])
    assert "network-online.target" in " ".join(unit["Wants"])
    assert any("/dev/fuse" in v for v in service["DeviceAllow"])
    caps = " ".join(service.get("CapabilityBoundingSet", ["CAP_SYS_ADMIN"]))
    assert "CAP_SYS_ADMIN" in caps, "mounting needs CAP_SYS_ADMIN"
    assert install["WantedBy"]
    hidden = sorted(k for k in service if k in NAMESPACING and
                    service[k][-1].lower() not in ("no", "false", "0", ""))
    assert not hidden, (f"{hidden} give the service its own mount namespace: its FUSE mounts "
                        "would be invisible to every other process")


def test_why_no_namespacing_options(tmp_path, s3):
    """Why the unit has no ProtectSystem=/PrivateTmp=/ReadWritePaths=/...: systemd runs such a
    service in its own mount namespace whose mounts are slaves of the host's. Reproduced with
    unshare(1): zipmount mounts fine in there, and the host (every other process) sees an empty
    directory."""
    require_fuse()
    ep = Endpoint.of(s3)
    mp, cache = fresh_dirs(tmp_path, "mp", "cache")
    cfg = write_config(tmp_path / "ns.yaml", storage=ep.storage(env_file=ep.env_file(
        tmp_path / "creds.env")), mounts=[("s3://data/single/stored.zip", mp)], cache_dir=cache)
    up, go = tmp_path / "up", tmp_path / "go"
    inner = (f"{ZIPMOUNT} mount --config {cfg} || exit 1; stat -c %i {mp} > {up}; "
             f"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
             f"{ZIPMOUNT} umount {mp}")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "sh", "-c", inner],
                            env=clean_env(), start_new_session=True)
    try:
        wait_until(lambda: up.exists() and up.read_text().strip() or proc.poll() is not None,
                   60, "the mount inside the namespace")
        assert up.exists() and up.read_text().strip() == "1", \
            "inside the service's namespace the FUSE root (inode 1) answers"
        assert not is_mounted(mp), "the host sees the mount: propagation was not off?"
        assert os.stat(mp).st_ino != 1 and os.listdir(mp) == []
        go.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        go.touch()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cleanup([mp], [str(cfg)])
        wait_until(lambda: not pids_with_marker(str(cfg)), 20, "the namespaced daemon to exit")


# --------------------------------------------------------------------------------------------
# sd_notify through a real NOTIFY_SOCKET
# --------------------------------------------------------------------------------------------
def _two_mount_config(tmp_path: Path, s3) -> tuple[Path, list[Path]]:
    ep = Endpoint.of(s3)
    mp1, mp2, cache = fresh_dirs(tmp_path, "mp1", "mp2", "cache")
    cfg = write_config(
        tmp_path / "svc.yaml", storage=ep.storage(env_file=ep.env_file(tmp_path / "creds.env")),
        mounts=[("s3://data/single/stored.zip", mp1), ("s3://data/rec/", mp2)], cache_dir=cache)
    return cfg, [mp1, mp2]


def _answers(mp: Path) -> bool:
    r = run(["stat", "-c", "%i", str(mp)], timeout=10)
    return r.rc == 0 and r.stdout.strip() == "1" and is_mounted(mp)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_ready_only_when_every_mount_answers_then_stopping_on_signal(tmp_path, s3, samples,
                                                                     signame):
    require_fuse()
    cfg, mps = _two_mount_config(tmp_path, s3)

    def at_message(text: str):
        # Runs in the listener thread the moment a datagram arrives.
        if "READY=1" in text.split("\n"):
            return {str(mp): _answers(mp) for mp in mps}
        return None

    with notify_socket(at_message) as listener:
        env = clean_env(NOTIFY_SOCKET=listener.address)
        with daemon(cfg, mps, env=env, wait=False) as d:
            ready = listener.wait_for("READY=1", timeout=60, daemon=d)
            assert re.search(r"^STATUS=2 mount\(s\)", ready, re.M), ready
            checks = [c for t, c in listener.checks if "READY=1" in t.split("\n")]
            assert checks == [{str(mp): True for mp in mps}], \
                f"READY=1 came before every mount answered: {checks}"
            # The tree is really served.
            stored = samples.stored
            name, content = next((n, c) for n, c in stored.files.items() if c)
            assert (mps[0] / name).read_bytes() == content
            assert sorted(os.listdir(mps[1])) == ["a.rkns", "c.zip", "notes.txt", "sub"]

            d.signal(SIGNALS[signame])
            listener.wait_for("STOPPING=1", timeout=30)
            assert d.wait(timeout=30) == 0, d.stderr()
            assert_nothing_left(cfg, mps)
            texts = listener.texts()
            assert texts.index(next(t for t in texts if "READY=1" in t)) < \
                texts.index("STOPPING=1")
            assert "Traceback" not in d.stderr(), d.stderr()


def test_ready_on_an_abstract_notify_socket(tmp_path, s3):
    """NOTIFY_SOCKET=@name (an abstract socket, which systemd may hand out) works too."""
    require_fuse()
    cfg, mps = _two_mount_config(tmp_path, s3)
    with notify_socket(abstract=True) as listener, daemon(
            cfg, mps, env=clean_env(NOTIFY_SOCKET=listener.address), wait=False) as d:
        assert listener.address.startswith("@")
        listener.wait_for("READY=1", timeout=60, daemon=d)
        assert all(is_mounted(mp) for mp in mps)
        d.signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", timeout=30)
        assert d.wait(timeout=30) == 0
    assert_nothing_left(cfg, mps)


def test_no_ready_when_a_mount_cannot_come_up(tmp_path, s3):
    """One bad mount of two: the daemon exits non-zero, never sends READY=1, leaves nothing
    mounted (systemd then marks the unit failed and Restart=on-failure tries again)."""
    require_fuse()
    ep = Endpoint.of(s3)
    mp1, mp2, cache = fresh_dirs(tmp_path, "mp1", "mp2", "cache")
    cfg = write_config(
        tmp_path / "bad.yaml", storage=ep.storage(env_file=ep.env_file(tmp_path / "creds.env")),
        mounts=[("s3://data/single/stored.zip", mp1), ("s3://data/single/missing.zip", mp2)],
        cache_dir=cache)
    with notify_socket() as listener, daemon(
            cfg, [mp1, mp2], env=clean_env(NOTIFY_SOCKET=listener.address), wait=False) as d:
        rc = d.wait(timeout=60)
        assert rc == 1, d.stderr()
        assert "missing.zip" in d.stderr()
        time.sleep(0.3)
        assert not any("READY=1" in t for t in listener.texts()), listener.texts()
        assert_nothing_left(cfg, [mp1, mp2])


def test_status_lines_keep_coming(tmp_path, s3):
    require_fuse()
    cfg, mps = _two_mount_config(tmp_path, s3)
    with notify_socket() as listener, daemon(
            cfg, mps, env=clean_env(NOTIFY_SOCKET=listener.address), wait=False) as d:
        listener.wait_for("READY=1", timeout=60, daemon=d)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
                t.startswith("STATUS=") and "READY=1" not in t for t in listener.texts()):
            time.sleep(0.1)
        updates = [t for t in listener.texts() if t.startswith("STATUS=")]
        assert updates and re.match(r"STATUS=2 mount\(s\), \d+ archive\(s\) open, cache",
                                    updates[0]), listener.texts()
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0


def test_stop_with_a_file_held_open_still_exits_0_and_detaches(tmp_path, s3, samples):
    """`systemctl stop` while a user holds a file open: the daemon detaches the busy mount
    lazily, exits 0 within the unit's TimeoutStopSec (30 s), nothing stays in the mount table."""
    require_fuse()
    cfg, mps = _two_mount_config(tmp_path, s3)
    with daemon(cfg, mps) as d:
        name = next(n for n, c in samples.stored.files.items() if c)
        holder = subprocess.Popen(["sh", "-c", f"exec 3<'{mps[0] / name}'; sleep 120"],
                                  start_new_session=True)
        try:
            time.sleep(0.5)
            assert holder.poll() is None
            t0 = time.monotonic()
            d.signal(signal.SIGTERM)
            assert d.wait(timeout=30) == 0, d.stderr()
            assert time.monotonic() - t0 < 30
            assert not is_mounted(mps[0]) and not is_mounted(mps[1])
            assert "busy" in d.stderr() or "lazily" in d.stderr(), d.stderr()
        finally:
            holder.kill()
            holder.wait()
    assert_nothing_left(cfg, mps)
