"""The founder's and a friend's commands, as a person types them: init, invite, join, status,
doctor, invite --client, revoke, leave. Real daemons with mutual TLS on loopback."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from helpers import eventually, meshd
from meshd.cli.demo import stream_answer

from meshd.client import MeshClient
from meshd.errors import MeshdError
from meshd.process import DaemonProcess
from meshd.security.keyring import Keyring

TLS_ONLY = {"MESHD_INSECURE_DEV": "false", "MESHD_DISCOVERY": "false"}


def _daemon(home: Path, *models: str) -> DaemonProcess:
    return DaemonProcess(home, list(models), env={**TLS_ONLY, "MESHD_THREADS": "1"})


def test_found_invite_join_revoke_and_leave(tmp_path: Path, tiny_model: Path) -> None:
    founder, friend = tmp_path / "founder", tmp_path / "friend"
    created = meshd("init", "--name", "friends", home=founder)
    assert created.returncode == 0 and "created mesh friends" in created.stdout
    assert oct(founder.stat().st_mode & 0o777) == "0o700", "keys live here: private at once"
    assert meshd("init", "--name", "again", home=founder).returncode == 1
    assert "no meshd daemon is running" in meshd("invite", home=founder).stderr
    with _daemon(founder, f"tiny={tiny_model}") as a:
        bad = meshd("invite", "--address", "10.0.0.5:7070", home=founder)
        assert bad.returncode == 1 and "without a port" in bad.stderr
        assert "longer than 0" in meshd("invite", "--ttl", "0", home=founder).stderr
        invited = meshd("invite", "--ttl", "10m", home=founder)
        code = re.search(r"MESHD-[A-Z0-9]+", invited.stdout)
        assert invited.returncode == 0 and code, invited.stdout
        joined = meshd("join", code.group(0), "--no-service", home=friend)
        assert joined.returncode == 0 and "joined mesh friends" in joined.stdout, joined.stderr
        assert oct(friend.stat().st_mode & 0o777) == "0o700"

        def refused_by_a_closed_listener() -> bool:
            again = meshd("join", code.group(0), "--no-service", home=tmp_path / "late")
            assert again.returncode == 1 and "used or" in again.stderr, "the code works once"
            return "was used or has expired" in again.stderr

        # The founder's join listener closes (within its 1 s watch) once its last code is used.
        eventually(refused_by_a_closed_listener, timeout=10)
        with _daemon(friend) as b:
            friend_id = Keyring(friend).peer_id()

            def both_live() -> bool:
                out = meshd("status", "--json", home=friend).stdout
                return sum(p["alive"] for p in json.loads(out)["peers"]) == 2

            eventually(both_live, timeout=15)
            dialled = meshd("status", "--addresses", home=friend).stdout
            assert "dials since start" in dialled
            assert re.search(rf"{re.escape(a.address)}\s+settings\s+yes", dialled), dialled
            doctor = json.loads(meshd("doctor", "--json", home=friend).stdout)
            outcomes = {c["name"]: c["outcome"] for c in doctor}
            assert outcomes["mesh identity"] == outcomes["certificate"] == "ok"
            assert (
                outcomes["daemon"] == "ok"
                and outcomes[f"peer {Keyring(founder).peer_id()}"] == "ok"
            )
            answer = meshd("generate", "tiny", "Hello", "-n", "3", home=friend)
            assert answer.returncode == 0 and "served by" in answer.stderr + answer.stdout

            bundle = tmp_path / "myapp.json"
            made = meshd(
                "invite",
                "--client",
                "--name",
                "myapp",
                "--out",
                str(bundle),
                "--address",
                "127.0.0.1",
                home=founder,
            )
            assert made.returncode == 0 and oct(bundle.stat().st_mode & 0o777) == "0o600"
            with MeshClient.from_bundle(bundle, a.address) as app:
                assert app.complete("tiny", "Hi", max_tokens=2).tokens == 2

            revoked = meshd("revoke", friend_id, home=founder)
            assert revoked.returncode == 0, revoked.stderr
            assert meshd("revoke", "nobody", home=founder).returncode == 1
            with MeshClient(a.address, credentials=Keyring(friend).credentials()) as mesh:
                eventually(lambda: _refused(mesh), timeout=30)
            assert b.proc is not None and b.proc.poll() is None  # still running, just refused
            left = meshd("leave", "--yes", home=friend)
            assert left.returncode == 0 and not (friend / "tls").exists()
            assert b.proc.wait(10) == 0  # leave stopped the friend's daemon, cleanly
    assert meshd("leave", "--yes", home=friend).returncode == 1  # nothing left to leave


def _refused(mesh: MeshClient) -> bool:
    try:
        mesh.health()
    except MeshdError as error:
        return "revoked" in str(error)
    time.sleep(0.1)
    return False


def test_the_demo_answers_through_a_two_peer_mutual_tls_mesh(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream_answer(tmp_path, tiny_model, max_tokens=4)
    out = capsys.readouterr().out
    assert "4 tokens" in out and "over mutual TLS" in out
    founder_id = Keyring(tmp_path / "mesh" / "founder").peer_id()
    assert f"routed to {founder_id}: warm on {founder_id}" in " ".join(out.split())
    assert not list(tmp_path.glob("mesh/*/daemon.json")), "both daemons stopped"


def test_an_invite_outlives_a_restart_of_the_founder(tmp_path: Path, tiny_model: Path) -> None:
    founder, friend = tmp_path / "founder", tmp_path / "friend"
    assert meshd("init", "--name", "friends", home=founder).returncode == 0
    with _daemon(founder):
        invited = meshd("invite", "--ttl", "10m", home=founder)
        code = re.search(r"MESHD-[A-Z0-9]+", invited.stdout)
        assert invited.returncode == 0 and code, invited.stdout
    kept = founder / "tls" / "invites.json"
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    with _daemon(founder):  # restarted: the code works, once
        joined = meshd("join", code.group(0), "--no-service", home=friend)
        assert joined.returncode == 0 and "joined mesh friends" in joined.stdout, joined.stderr
        again = meshd("join", code.group(0), "--no-service", home=tmp_path / "late")
        assert again.returncode == 1 and "used or" in again.stderr
