"""A TFDS source with no network fails in seconds, in one whole line, and leaves nothing behind
(issue 22, item 6). "No network" is simulated: no name resolves, or the HTTPS proxy is a closed port."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, free_ports, subprocess_env


def test_unreachable_names_the_host_and_the_reason(monkeypatch):
    from headstart.pipeline.data.network import unreachable

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert unreachable(["https://download.example.com/data.zip"]) == \
        "download.example.com:443: Temporary failure in name resolution"


def test_the_https_proxy_is_what_is_asked_behind_one(monkeypatch):
    from headstart.pipeline.data.network import unreachable

    (closed,) = free_ports(1)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed}")
    monkeypatch.delenv("https_proxy", raising=False)
    start = time.monotonic()
    assert unreachable(["https://download.example.com/x"]) == f"the HTTPS proxy 127.0.0.1:{closed}: Connection refused"
    assert time.monotonic() - start < 5
    with socket.socket() as server:  # a proxy that answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert unreachable(["https://download.example.com/x"]) is None
        monkeypatch.setenv("no_proxy", "example.com")  # bypassed: the host itself, which does not resolve here
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(socket.gaierror(-2, "no")))
        assert unreachable(["https://download.example.com/x"]).startswith("download.example.com:443")


@pytest.mark.slow
def test_run_tfds_offline_fails_in_seconds_in_one_line_and_leaves_nothing(tmp_path):
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "sitecustomize.py").write_text(
        "import socket\n"
        "def _offline(*args, **kwargs):\n"
        "    raise socket.gaierror(-3, 'Temporary failure in name resolution')\n"
        "socket.getaddrinfo = _offline\n", encoding="utf-8")
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    env = subprocess_env(tmp_path / "tmp", PYTHONPATH=f"{offline}:{REPO}", TFDS_DATA_DIR=str(data_dir))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "headstart.pipeline.cli", "run", "tfds:cats_vs_dogs", "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    seconds = time.monotonic() - start
    assert out.returncode == 1, out.stderr  # the network, not the input (the exit-code rule)
    (line,) = out.stderr.splitlines()
    assert re.fullmatch(
        rf"Error: tfds:cats_vs_dogs: not in {re.escape(str(data_dir))}/cats_vs_dogs/[\d.]+ and the network cannot "
        r"reach its download \(download\.microsoft\.com:443: Temporary failure in name resolution\); without a "
        r"network, point headstart at a local folder instead \(DIR/<class>/\*\.jpg or "
        r"DIR/\{train,validation,test\}/<class>/\*\.jpg\), or set TFDS_DATA_DIR to a copy of a prepared TFDS data dir",
        line), line
    assert out.stdout == ""
    assert seconds < 90, seconds  # TensorFlow's import included, on a busy machine; it took 212 s before
    assert not (tmp_path / "run").exists() and list(data_dir.iterdir()) == []
