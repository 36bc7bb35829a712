"""deploy/cluster (3-node NATS cluster, R3) and deploy/leaf (a probe with its own JetStream
domain): valid compose files, no literal secrets, every variable documented, every FT_*
variable a real setting with a valid value, and nats-server itself accepts their
configuration files with the environment compose gives the containers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from flowtarget.embedded import find_nats_server
from tests.deploy.composeenv import (REPO, MissingVariable, interpolate, load_compose, read_env_file, service_env,
                                     variables)
from tests.deploy.test_compose import SECRET, _settings_classes, _strings, validator

SETUPS = {"cluster": REPO / "deploy" / "cluster", "leaf": REPO / "deploy" / "leaf"}


def env_of(setup: str, fill_secrets: bool = True) -> dict[str, str]:
    env = read_env_file(SETUPS[setup] / ".env.example")
    if fill_secrets:
        for k, v in env.items():
            if v == "" and SECRET.search(k):
                env[k] = "nats-leaf://leaf:t0ps3cret@centre.example:7422" if k.endswith("URL_SECRET") else f"test{k.lower()}1"
    return env


def doc_of(setup: str, interpolated: bool = True) -> dict:
    doc = load_compose(SETUPS[setup] / "docker-compose.yml")
    return interpolate(doc, env_of(setup)) if interpolated else doc


@pytest.mark.parametrize("setup", SETUPS)
def test_validates_against_the_compose_spec(setup):
    v = validator()
    for doc in (doc_of(setup, False), doc_of(setup)):
        errors = list(v.iter_errors(doc))
        assert not errors, f"{'/'.join(map(str, errors[0].path))}: {errors[0].message}"


@pytest.mark.parametrize("setup", SETUPS)
def test_no_literal_secret_and_every_variable_documented(setup):
    doc = doc_of(setup, False)
    for name in doc["services"]:
        for key, value in service_env(doc, name).items():
            if SECRET.search(key):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}", value), f"{name}.{key}: {value!r}"
    example = read_env_file(SETUPS[setup] / ".env.example")
    for key, value in example.items():
        if SECRET.search(key):
            assert value == "", f".env.example gives {key} a value"
    with pytest.raises(MissingVariable):
        interpolate(doc, env_of(setup, fill_secrets=False))
    used = set().union(*(variables(t) for t in _strings(doc)))
    assert used - set(example) == set(), "used in the compose file, missing from .env.example"
    assert set(example) - used == set(), "in .env.example but used nowhere"
    conf = next(SETUPS[setup].glob("nats-*.conf")).read_text()
    assert re.search(r"password:\s*\$NATS_PASSWORD\b", conf)
    assert not re.search(r"password:\s*[^$\s]", conf), "a literal password in the nats configuration"


@pytest.mark.parametrize("setup", SETUPS)
def test_every_ft_variable_is_a_setting_with_a_valid_value(setup):
    doc = doc_of(setup)
    classes = _settings_classes()
    for name in doc["services"]:
        if name not in classes:
            continue
        env = service_env(doc, name)
        fields = set().union(*(c.model_fields for c in classes[name]))
        unknown = [k for k in env if k.startswith("FT_") and k[3:].lower() not in fields]
        assert not unknown, f"{name}: {unknown} are no settings"
        for cls in classes[name]:
            cls(**{k[3:].lower(): v for k, v in env.items() if k.startswith("FT_") and k[3:].lower() in cls.model_fields})


@pytest.mark.parametrize("setup", SETUPS)
def test_nats_server_accepts_the_configuration_with_the_compose_environment(setup, tmp_path):
    doc = doc_of(setup)
    for name, svc in doc["services"].items():
        if not svc.get("image", "").startswith("nats:"):
            continue
        mount = next(v for v in svc["volumes"] if v.endswith(":/etc/nats/nats.conf:ro"))
        conf = (SETUPS[setup] / mount.split(":")[0]).resolve()
        env = service_env(doc, name)
        env["NATS_STORE_DIR"] = str(tmp_path / name)
        r = subprocess.run([find_nats_server(), "-t", "-c", str(conf)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        # and a missing variable is refused (the check can fail)
        env.pop("NATS_PASSWORD")
        assert subprocess.run([find_nats_server(), "-t", "-c", str(conf)], env=env, capture_output=True).returncode


def test_cluster_is_three_nodes_with_r3_and_every_node_in_the_url():
    doc = doc_of("cluster")
    nodes = [n for n, s in doc["services"].items() if s.get("image", "").startswith("nats:")]
    assert len(nodes) == 3
    assert len({service_env(doc, n)["NATS_SERVER_NAME"] for n in nodes}) == 3
    assert len({v.split(":")[0] for n in nodes for v in doc["services"][n]["volumes"] if v.endswith(":/data")}) == 3
    routes = re.findall(r"nats-route://([\w-]+):6222", (SETUPS["cluster"] / "nats-cluster.conf").read_text())
    assert sorted(routes) == sorted(nodes)
    for n in ("classify", "store"):
        env = service_env(doc, n)
        assert sorted(u.split("//")[1].split(":")[0] for u in env["FT_NATS_URL"].split(",")) == sorted(nodes)
        assert int(env["FT_STREAM_REPLICAS"]) == int(env["FT_KV_REPLICAS"]) == 3
        assert "ports" not in doc["services"][n] and "container_name" not in doc["services"][n]   # scalable
    assert "FT_STREAM_SOURCES" in service_env(doc, "store")


def test_leaf_probe_has_its_domain_and_the_whole_pipeline_locally():
    doc = doc_of("leaf")
    s = doc["services"]
    assert {"nats", "capture", "classify", "store", "block"} <= set(s)
    env = service_env(doc, "nats")
    assert env["NATS_JS_DOMAIN"] == service_env(doc, "capture")["FT_PROBE"]
    conf = (SETUPS["leaf"] / "nats-leaf.conf").read_text()
    assert re.search(r"domain:\s*\$NATS_JS_DOMAIN", conf) and "$NATS_LEAF_URL_SECRET" in conf
    assert service_env(doc, "store")["FT_OUT_DIR"]      # records kept on the probe as well
    for n in ("capture", "block"):
        assert s[n]["network_mode"] == "host" and service_env(doc, n)["FT_NATS_URL"].startswith("nats://127.0.0.1:")
    # the centre's central stream names this domain among its sources
    assert Path(SETUPS["cluster"] / ".env.example").read_text().count("FT_STREAM_SOURCES=") == 1
