"""docker-compose.yml: valid against the Compose specification, no literal secrets,
every variable documented, the services wired as docs/deploy.md says."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.composeenv import (ENV_EXAMPLE, REPO, MissingVariable, example_env, interpolate,
                                     interpolate_str, load_compose, read_env_file, service_env, variables)

SCHEMA = Path(__file__).with_name("compose-spec.json")
FT_SERVICES = ("capture", "classify", "store", "block")
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET|CREDS|PRIVATE", re.I)


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    # the file names draft 2019-09 by a URI jsonschema does not know (http, "draft/2019-09/schema#")
    assert "2019-09" in schema["$schema"]
    cls = jsonschema.Draft201909Validator
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_validates_against_the_compose_spec_schema():
    doc = load_compose()
    v = validator()
    errors = sorted(v.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # and as compose sees it after interpolation with the documented values
    errors = list(v.iter_errors(interpolate(doc, example_env())))
    assert not errors, errors[0].message


def test_the_schema_check_can_fail():
    doc = load_compose()
    v = validator()
    bad = copy.deepcopy(doc)
    bad["services"]["capture"]["depends_on"]["nats"]["condition"] = "service_ready"
    assert list(v.iter_errors(bad))
    bad = copy.deepcopy(doc)
    bad["services"]["store"]["healthcheck"] = {"test": ["CMD", "true"], "every": "5s"}
    assert list(v.iter_errors(bad))


def test_interpolation_rules():
    env = {"A": "a", "E": ""}
    assert interpolate_str("${A}-${B:-b}-${E:-e}-${E-e}-$$A-$A", env) == "a-b-e--$A-a"
    assert interpolate_str("${B:-${A}x}", env) == "ax"
    with pytest.raises(MissingVariable):
        interpolate_str("${E:?set E}", env)
    assert variables("${X:-${Y}} $Z $$W") == {"X", "Y", "Z"}


def test_no_secret_has_a_literal_value():
    doc = load_compose()
    for name, svc in doc["services"].items():
        for key, value in service_env(doc, name).items():
            if SECRET.search(key):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}", value), \
                    f"{name}.{key} must come from .env as a required variable, not {value!r}"
    # nor in the configuration files the stack mounts
    nats_conf = (REPO / "deploy/nats/nats.conf").read_text()
    assert re.search(r"password:\s*\$NATS_PASSWORD\b", nats_conf)
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/flowtarget.yml").read_text())
    for d in ds["datasources"]:
        for value in (d.get("secureJsonData") or {}).values():
            assert re.fullmatch(r"\$[A-Z_]+", value)
    # .env.example ships no secret either: they are empty so that compose refuses to start
    for key, value in read_env_file(ENV_EXAMPLE).items():
        if SECRET.search(key):
            assert value == "", f".env.example gives {key} a value"
    with pytest.raises(MissingVariable):
        interpolate(doc, example_env(fill_secrets=False))


def test_env_example_documents_every_variable():
    used = set().union(*(variables(t) for t in _strings(load_compose())))
    lines = ENV_EXAMPLE.read_text().splitlines()
    documented = read_env_file(ENV_EXAMPLE)
    assert used - set(documented) == set(), "used in docker-compose.yml, missing from .env.example"
    assert set(documented) - used == set(), "in .env.example but used nowhere"
    # each variable sits under a comment (its own or its group's)
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            j = i - 1
            while j >= 0 and re.match(r"^[A-Z_][A-Z0-9_]*=", lines[j]):
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f"{line.split('=')[0]} has no comment"


def _strings(doc):
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)


def test_services_as_the_issue_asks():
    doc = load_compose()
    s = doc["services"]
    assert {"nats", "influxdb", "grafana", *FT_SERVICES} <= set(s)
    assert "-js" in s["nats"]["command"] and any(v.endswith(":/data") for v in s["nats"]["volumes"])
    assert s["influxdb"]["image"].startswith("influxdb:2")
    init = s["influxdb"]["environment"]
    for k in ("ORG", "BUCKET", "RETENTION", "ADMIN_TOKEN"):
        assert f"${{DOCKER_INFLUXDB_INIT_{k}" in init[f"DOCKER_INFLUXDB_INIT_{k}"]
    images = {s[n]["image"] for n in FT_SERVICES}
    assert len(images) == 1, "one image for the four services"
    for n in FT_SERVICES:
        assert s[n]["build"]["context"] == "." and s[n]["command"] == ["flowtarget", n]
        assert "healthcheck" in s[n]
    for n in ("capture", "block"):
        assert s[n]["network_mode"] == "host"
        assert {"NET_RAW", "NET_ADMIN"} <= set(s[n]["cap_add"])
    assert s["capture"]["environment"]["FT_IFACE"].startswith("${FT_IFACE")
    for n in ("classify", "store"):  # scalable: nothing that names one container or one host port
        assert "container_name" not in s[n] and "ports" not in s[n] and "network_mode" not in s[n]
    for name, svc in s.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in s
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in s[dep], f"{name} waits for {dep} to be healthy: it has no health check"


def _settings_classes():
    from shared import settings as st
    return {"capture": (st.CaptureSettings, st.DetectSettings), "classify": (st.ClassifySettings,),
            "store": (st.StoreSettings,), "block": (st.BlockSettings,)}


def test_every_ft_variable_is_a_setting_and_its_value_is_valid():
    doc = interpolate(load_compose(), example_env())
    for name, classes in _settings_classes().items():
        env = service_env(doc, name)
        fields = set().union(*(c.model_fields for c in classes))
        unknown = [k for k in env if k.startswith("FT_") and k[3:].lower() not in fields]
        assert not unknown, f"{name}: {unknown} are no settings of {[c.__name__ for c in classes]}"
        # the values compose would give are accepted (what a container does at start)
        code = ("import os,sys\nfrom shared.settings import *\n"
                f"for c in ({', '.join(c.__name__ for c in classes)},): c()\n")
        r = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin", **env},
                           capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, f"{name}: {r.stderr[-800:]}"


def test_host_network_services_do_not_share_a_port():
    doc = interpolate(load_compose(), example_env())
    ports = {}
    shards = int(service_env(doc, "capture")["FT_SHARDS"])
    for n in ("capture", "block"):
        base = int(service_env(doc, n)["FT_METRICS_PORT"])
        for k in range(shards if n == "capture" else 1):
            assert base + k not in ports, f"{n} and {ports.get(base + k)} both want port {base + k}"
            ports[base + k] = n


def test_prometheus_scrapes_what_compose_exposes():
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    doc = interpolate(load_compose(), example_env())
    for n in ("classify", "store"):
        sd = jobs[n]["dns_sd_configs"][0]
        assert sd["names"] == [n] and sd["port"] == int(service_env(doc, n)["FT_METRICS_PORT"])
    for n in ("capture", "block"):
        target = jobs[n]["static_configs"][0]["targets"][0]
        assert target == f"host.docker.internal:{service_env(doc, n)['FT_METRICS_PORT']}"
    assert "host.docker.internal:host-gateway" in load_compose()["services"]["prometheus"]["extra_hosts"]


def test_grafana_provisioning_is_wired():
    doc = load_compose()
    genv = service_env(doc, "grafana")
    ds_text = (REPO / "deploy/grafana/provisioning/datasources/flowtarget.yml").read_text()
    for var in re.findall(r"\$([A-Z_][A-Z0-9_]*)", ds_text):
        assert var in genv, f"datasource file needs {var} in grafana's environment"
    uids = {d["uid"] for d in yaml.safe_load(ds_text)["datasources"]}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in doc["services"]["grafana"]["volumes"] if v.startswith("./")}
    prov = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/flowtarget.yml").read_text())
    dash_dir = prov["providers"][0]["options"]["path"]
    assert dash_dir in mounts and (REPO / mounts[dash_dir]).is_dir()
    boards = sorted((REPO / mounts[dash_dir]).glob("*.json"))
    titles = " ".join(json.loads(b.read_text())["title"].lower() for b in boards)
    for topic in ("protocol", "application", "access log", "dns", "alerts", "blocks", "pipeline"):
        assert topic in titles
    for b in boards:
        board = json.loads(b.read_text())
        for p in board["panels"]:
            assert p["datasource"]["uid"] in uids
            for t in p["targets"]:
                q = t.get("query") or t.get("expr")
                assert q
                if "from(bucket" in q:  # Flux: only measurements the store writes
                    for m in re.findall(r'r\._measurement == "(\w+)"', q):
                        assert m in ("flows", "flow_updates", "dns", "http", "tls", "alerts", "blocks")
    r = subprocess.run([sys.executable, str(REPO / "deploy/grafana/make_dashboards.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_nats_config_reads_everything_from_the_environment():
    conf = (REPO / "deploy/nats/nats.conf").read_text()
    needed = set(re.findall(r"\$([A-Z_][A-Z0-9_]*)", conf))
    assert {"NATS_USER", "NATS_PASSWORD"} <= needed
    assert needed <= set(service_env(load_compose(), "nats"))


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)B?", text.strip(), re.I)
    assert m, text
    return int(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_")


def test_jetstream_limit_holds_the_stream():
    """nats-server refuses a stream larger than its file store: the services could not start."""
    doc = interpolate(load_compose(), example_env())
    max_file = _size(service_env(doc, "nats")["NATS_JS_MAX_FILE"])
    for n in FT_SERVICES:
        assert int(service_env(doc, n)["FT_STREAM_MAX_BYTES"]) < max_file


def test_dashboards_use_fields_the_store_writes():
    """Every field and column a Flux query names is one services/store/schema.py writes."""
    schema_src = (REPO / "services/store/schema.py").read_text()
    written = set(re.findall(r'"(\w+)"', schema_src)) | set(re.findall(r"\b(\w+)=", schema_src))
    missing = set()
    for board in sorted((REPO / "deploy/grafana/dashboards").glob("*.json")):
        for p in json.loads(board.read_text())["panels"]:
            q = p["targets"][0].get("query", "")
            if "from(bucket" not in q:
                continue
            names = set(re.findall(r'r\._field == "(\w+)"', q))
            for cols in re.findall(r"keep\(columns: \[([^\]]*)\]\)", q):
                names |= set(re.findall(r'"(\w+)"', cols))
            names |= set(re.findall(r"\br\.(\w+)\b", q)) - {"_measurement", "_field", "_value", "_time", "name",
                                                            "bytes", "flows", "client", "ip"}
            missing |= {f"{board.name}: {n}" for n in names - written - {"_time"}}
    assert not missing, sorted(missing)
