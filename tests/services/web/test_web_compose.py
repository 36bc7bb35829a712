"""The console's compose service: same image, loopback by default, token from .env, health check."""

from __future__ import annotations

import json

from tests.deploy.composeenv import interpolate_str, load_compose


def test_the_web_service_in_docker_compose():
    s = load_compose()["services"]
    web = s["web"]
    assert web["image"] == s["classify"]["image"] and web["command"] == ["flowtarget", "web"]
    assert web["healthcheck"] == s["classify"]["healthcheck"]          # its /healthz via FT_METRICS_PORT
    assert web["ports"] == ["${FT_WEB_BIND:-127.0.0.1}:${FT_WEB_PORT:-8080}:8080"]
    assert web["environment"]["FT_WEB_TOKEN"].startswith("${FT_WEB_TOKEN:?")
    assert web["cap_drop"] == ["ALL"] and "cap_add" not in web and "network_mode" not in web
    assert "evidence:/var/lib/flowtarget/evidence:ro" in web["volumes"]
    assert web["environment"]["FT_EVIDENCE_DIR"] == s["capture"]["environment"]["FT_EVIDENCE_DIR"]
    urls = json.loads(interpolate_str(web["environment"]["FT_WEB_HEALTH_URLS"], {}))
    assert set(urls) == {"capture", "classify", "store", "block"}
    assert urls["capture"].endswith(":9110/metrics") and urls["block"].endswith(":9108/metrics")
