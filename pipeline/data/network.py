"""Whether a download host can be reached, asked in seconds before a download that would retry for minutes.

TFDS retries a failed download ten times with back-off (212 s measured offline for ``tfds:cats_vs_dogs``,
with urllib3 warnings and progress-bar fragments on the way). ``unreachable`` opens one TCP connection to
each host (port 443, or the HTTPS proxy when one is set) with a short timeout; when none answers, the
caller fails at once with one line. No TensorFlow here.
"""

from __future__ import annotations

import os
import socket
from typing import Iterable
from urllib.parse import urlsplit

#: Seconds one connection attempt may take.
PROBE_TIMEOUT = 5.0


def unreachable(urls: Iterable[str], *, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when any of ``urls`` can be connected to, else why the first could not ("HOST: reason").

    Connects to the HTTPS proxy instead when ``https_proxy`` / ``HTTPS_PROXY`` is set (and the host
    is not in ``no_proxy``): a machine behind a proxy reaches nothing directly.
    """
    first = None
    for host, port, what in dict.fromkeys(_endpoint(url) for url in urls):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return None
        except OSError as exc:
            reason = " ".join(str(exc.strerror or exc).split()) or type(exc).__name__
            first = first or f"{what}{host}:{port}: {reason}"
    return first


def _endpoint(url: str) -> tuple[str, int, str]:
    """(host, port, "" or "the HTTPS proxy ") to connect to for ``url``."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = parts.hostname or url
    proxy = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
    bypass = [h.strip().lstrip(".") for h in (os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or "").split(",")
              if h.strip()]
    if proxy and not any(host == h or host.endswith("." + h) or h == "*" for h in bypass):
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return via.hostname or proxy, via.port or 8080, "the HTTPS proxy "
    return host, parts.port or (80 if parts.scheme == "http" else 443), ""
