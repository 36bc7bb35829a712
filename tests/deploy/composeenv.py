"""Reading docker-compose.yml the way docker compose does, for the deploy tests.

- ``read_env_file``: a .env file (KEY=VALUE lines, comments, optional quotes);
- ``interpolate``: compose's variable substitution (``$VAR``, ``${VAR}``,
  ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
  ``${VAR:+alt}``, ``${VAR+alt}``, ``$$``) over a whole parsed document;
- ``service_env``: the environment one service's container gets (its
  ``environment:`` mapping after interpolation);
- ``variables``: every variable the file refers to.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}")
_TOKEN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def interpolate_str(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        value = env.get(name)
        if op is None:
            return value or ""
        unset_or_empty = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return interpolate_str(arg, env) if unset_or_empty else value  # type: ignore[return-value]
        if op.endswith("?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg or 'required'}")
            return value  # type: ignore[return-value]
        # '+': the alternative when set
        return "" if unset_or_empty else interpolate_str(arg, env)

    return _TOKEN.sub(sub, text)


def interpolate(doc: Any, env: dict[str, str]) -> Any:
    if isinstance(doc, str):
        return interpolate_str(doc, env)
    if isinstance(doc, list):
        return [interpolate(x, env) for x in doc]
    if isinstance(doc, dict):
        return {k: interpolate(v, env) for k, v in doc.items()}
    return doc


def variables(text: str) -> set[str]:
    """Every variable a text refers to (including those inside defaults)."""
    names: set[str] = set()
    for m in _TOKEN.finditer(text):
        if m.group(0) == "$$":
            continue
        names.add(m.group(1) or m.group(4))
        if m.group(3):
            names |= variables(m.group(3))
    return names


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def service_env(doc: dict[str, Any], service: str) -> dict[str, str]:
    env = doc["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def example_env(fill_secrets: bool = True) -> dict[str, str]:
    """.env.example, with its empty secrets filled as a user would (letters and digits)."""
    env = read_env_file(ENV_EXAMPLE)
    if fill_secrets:
        for k, v in env.items():
            if v == "" and re.search(r"PASSWORD|TOKEN|SECRET", k):
                env[k] = f"test{zlib.crc32(k.encode()):08x}secret"
    return env
