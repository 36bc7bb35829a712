"""The console's compose service: same image, loopback by default, every web setting passed, the login
from .env (no literal secret), and a health check that asks the console's own port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from flowtarget.embedded import free_port
from shared.settings import CommonSettings, WebSettings
from tests.deploy.composeenv import (ENV_EXAMPLE, REPO, example_env, interpolate, interpolate_str, load_compose,
                                     read_env_file, service_env)


def test_the_web_service_in_docker_compose():
    s = load_compose()["services"]
    web = s["web"]
    assert web["image"] == s["classify"]["image"] and web["command"] == ["flowtarget", "web"]
    assert web["healthcheck"]["test"] == ["CMD", "python", "-m", "services.web.health"]
    assert {k: v for k, v in web["healthcheck"].items() if k != "test"} == \
        {k: v for k, v in s["classify"]["healthcheck"].items() if k != "test"}
    assert web["ports"] == ["${FT_WEB_BIND:-127.0.0.1}:${FT_WEB_PORT:-8080}:8080"]
    assert web["cap_drop"] == ["ALL"] and "cap_add" not in web and "network_mode" not in web
    assert "evidence:/var/lib/flowtarget/evidence:ro" in web["volumes"]
    assert web["environment"]["FT_EVIDENCE_DIR"] == s["capture"]["environment"]["FT_EVIDENCE_DIR"]
    urls = json.loads(interpolate_str(web["environment"]["FT_WEB_HEALTH_URLS"], {}))
    assert set(urls) == {"capture", "classify", "store", "block"}
    assert urls["capture"].endswith(":9110/metrics") and urls["block"].endswith(":9108/metrics")


def test_compose_passes_every_web_setting_and_the_login_only_from_the_environment():
    env = service_env(load_compose(), "web")
    own = set(WebSettings.model_fields) - set(CommonSettings.model_fields)
    # rules_bucket / rule_stats_bucket are block's names: web and block both keep the default
    want = {f"FT_{f.upper()}" for f in own if f.startswith("web_") or f == "evidence_dir"}
    assert want - set(env) == set(), "web settings compose does not pass"
    assert [k for k in env if k.startswith("FT_") and k[3:].lower() not in WebSettings.model_fields] == []
    # secrets: required variables from .env (compose refuses to start without them), empty in .env.example
    for k in ("FT_WEB_PASSWORD", "FT_WEB_TOKEN"):
        assert re.fullmatch(rf"\$\{{{k}:\?[^}}]+\}}", env[k]), env[k]
        assert read_env_file(ENV_EXAMPLE)[k] == ""
    assert env["FT_WEB_USER"] == "${FT_WEB_USER:-operator}"
    # what the container gets with the documented values is accepted, and logs in both ways
    final = service_env(interpolate(load_compose(), example_env()), "web")
    s = WebSettings(**{k[3:].lower(): v for k, v in final.items()
                       if k.startswith("FT_") and k[3:].lower() in WebSettings.model_fields})
    assert s.login_configured() and s.web_user == "operator" and s.web_password.get_secret_value()
    assert s.web_token.get_secret_value() and s.web_addr == "0.0.0.0" and s.web_port == 8080


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b'{"healthy": true}')

    def log_message(self, *a):
        pass


def test_the_health_check_asks_both_the_service_and_the_console_port():
    ports = []
    servers = []
    for status in (200, 200):
        h = type("H", (_Answer,), {"status": status})
        srv = HTTPServer(("127.0.0.1", 0), h)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        ports.append(srv.server_address[1])
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FT_METRICS_PORT": str(ports[0]),
            "FT_WEB_ADDR": "0.0.0.0"}

    def check(**env) -> int:
        return subprocess.run([sys.executable, "-m", "services.web.health"], env={**base, **env}, cwd=REPO,
                              capture_output=True, text=True, timeout=60).returncode

    try:
        assert check(FT_WEB_PORT=str(ports[1])) == 0
        assert check(FT_WEB_PORT=str(free_port())) == 1                            # the console does not answer
        assert check(FT_WEB_PORT=str(ports[1]), FT_METRICS_PORT=str(free_port())) == 1   # the service is down
    finally:
        for srv in servers:
            srv.shutdown()
