"""NGINX in front of the local cluster's replicas (``cluster.py``).

``deploy/nginx.conf`` is a template: its ``${CHAT_...}`` placeholders are
filled here (one ``server`` line per replica port), the result is checked
with ``nginx -t`` before NGINX starts or reloads, and a reload is graceful:
old workers keep the WebSockets they hold.  :class:`NginxFront` is the part
of :class:`~chat.tools.cluster.LocalCluster` that does this; it uses the
cluster's ``state_dir``, ``logs``, ``port``, ``replicas`` and ``nginx_pid``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from .processes import ROOT, ClusterError, find_binary, http_ok, spawn, wait_until

NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
MIME_TYPES = ("/etc/nginx/mime.types", "/usr/local/etc/nginx/mime.types",
              "/opt/homebrew/etc/nginx/mime.types")
def render_nginx(template: str, values: dict[str, str]) -> str:
    """Fill ``${CHAT_...}`` placeholders, leaving NGINX's own ``$vars`` alone."""

    def fill(match: re.Match) -> str:
        return values[match.group(1)]

    return re.sub(r"\$\{(CHAT_[A-Z_]+)\}", fill, template)


def upstream_lines(ports: list[int]) -> str:
    return "\n        ".join(
        f"server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in ports)


class NginxFront:
    """Render, check, start and reload the cluster's NGINX."""

    def render_nginx(self, leaving: str | None = None) -> Path:
        run_dir = self.state_dir / "nginx"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        mime = next((m for m in MIME_TYPES if Path(m).exists()), None)
        values = {
            "CHAT_RUN_DIR": str(run_dir),
            "CHAT_MIME_TYPES": mime or str(ROOT / "deploy" / "mime.types"),
            "CHAT_ACCESS_LOG": str(self.logs / "nginx-access.log"),
            "CHAT_LISTEN": f"127.0.0.1:{self.port}",
            "CHAT_RESOLVER": "# (fixed local ports: no resolver)",
            "CHAT_WEB_ROOT": str(ROOT / "web"),
            "CHAT_UPSTREAM_SERVERS": upstream_lines(
                [r.port for r in self.replicas if r.server_id != leaving]),
        }
        conf = run_dir / "nginx.conf"
        conf.write_text(render_nginx(NGINX_TEMPLATE.read_text(), values))
        return conf

    def _nginx_argv(self, nginx: str, conf: Path) -> list[str]:
        return [nginx, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"]

    def check_nginx(self, nginx: str | None = None, leaving: str | None = None) -> None:
        nginx = nginx or find_binary("nginx")
        conf = self.render_nginx(leaving)
        result = subprocess.run([*self._nginx_argv(nginx, conf), "-t", "-q"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError("nginx -t: " + " ".join(result.stderr.split()))

    def _start_nginx(self, nginx: str) -> None:
        self.check_nginx(nginx)
        conf = self.state_dir / "nginx" / "nginx.conf"
        self.nginx_pid = spawn(self._nginx_argv(nginx, conf), self.logs / "nginx.log")
        self._save()
        wait_until(lambda: http_ok(f"{self.url}/nginx-health"), 10,
                   f"nginx on port {self.port}", self.logs / "nginx.log", self.nginx_pid)

    def _reload_nginx(self, leaving: str | None = None) -> None:
        """Graceful reload: old workers keep their connections until they close."""
        self.check_nginx(leaving=leaving)
        os.kill(self.nginx_pid, signal.SIGHUP)
        time.sleep(0.3)  # the master re-reads the config and starts new workers
        wait_until(lambda: http_ok(f"{self.url}/nginx-health"), 10, "nginx reload",
                   self.logs / "nginx.log", self.nginx_pid)
        self._save()
