"""The Dockerfile installs FlowTarget the way the README does, from a build context
that holds everything that install needs (and no secrets)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field

from tests.deploy.composeenv import REPO

DOCKERFILE = REPO / "Dockerfile"
README = REPO / "README.md"
SETUP = REPO / "scripts" / "setup.sh"


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their (instruction, argument) pairs; continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[Stage] = []
    for line in logical:
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            parts = arg.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else ""))
        elif stages:
            stages[-1].instructions.append((op, arg.strip()))
    return stages


def readme_install_command() -> str:
    """The README quick start's set-up command (the part before `&&`)."""
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1]
    first_block = re.search(r"```sh\n(.*?)```", quick, re.S).group(1).strip()
    return first_block.split("&&")[0].strip()


def test_dockerfile_installs_like_the_readme():
    readme = README.read_text()
    assert "Debian 12" in readme and "Python 3.11" in readme
    install = readme_install_command()
    assert install == "bash scripts/setup.sh"
    stages = parse_dockerfile(DOCKERFILE.read_text())
    build, runtime = stages[0], stages[-1]
    # the README's platform: Debian 12, whose python3 is 3.11
    for st in stages:
        assert st.base in ("debian:12", "debian:bookworm") or st.base.startswith("debian:12-")
    # the build stage runs the README's command at the root of a copy of the repository
    workdir = build.all("WORKDIR")[-1]
    assert ". ." in build.all("COPY") or f". {workdir}" in build.all("COPY")
    runs = [shlex.split(r.replace("&&", " && ")) for r in build.all("RUN")]
    commands = [" ".join(c) for r in runs for c in _split_and(r)]
    assert install in commands, f"the build stage does not run {install!r}: {commands}"
    # ... and nothing else installs Python packages behind the README's back
    assert not any(re.search(r"\bpip3? install\b", c) for c in commands)
    # the runtime stage keeps the venv setup.sh made and runs its flowtarget
    assert any(f"--from={build.name}" in c and workdir in c for c in runtime.all("COPY"))
    env = " ".join(runtime.all("ENV"))
    assert f"PATH={workdir}/.venv/bin:" in env
    cmd = runtime.all("CMD")[-1]
    assert cmd.startswith('["flowtarget"')


def _split_and(argv: list[str]) -> list[list[str]]:
    out, cur = [], []
    for tok in argv:
        if tok == "&&":
            out.append(cur)
            cur = []
        else:
            cur.append(tok)
    out.append(cur)
    return out


def test_runtime_stage_has_what_setup_sh_built_against():
    """setup.sh's venv points at Debian's python3 and pypcap links libpcap: the runtime needs both."""
    setup = SETUP.read_text()
    pkgs = re.search(r"^pkgs=\((.*?)\)", setup, re.M).group(1).split()
    assert "libpcap-dev" in pkgs and "python3-venv" in pkgs
    assert re.search(r'PY=\$\{PYTHON:-python3\}', setup)
    runtime = parse_dockerfile(DOCKERFILE.read_text())[-1]
    apt = " ".join(runtime.all("RUN"))
    for pkg in ("python3", "libpcap0.8"):
        assert re.search(rf"\b{re.escape(pkg)}\b", apt), f"runtime stage does not install {pkg}"
    assert "import pcap" in apt  # the image checks the native module loads


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether docker's .dockerignore rules (last match wins, ! re-includes) leave ``path`` out."""
    excluded = False
    parts = path.split("/")
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.strip("/")
        hit = False
        for i in range(1, len(parts) + 1):  # a pattern matching a parent directory covers its files
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, p) or (p.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1], p[3:])):
                hit = True
                break
        if hit:
            excluded = not neg
    return excluded


def test_build_context_holds_what_the_install_needs_and_no_secrets():
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    needed = ["pyproject.toml", "README.md", "scripts/setup.sh", "shared/models.py", "shared/metrics.py",
              "flowtarget/cli.py", "services/capture/service.py", "services/store/service.py",
              "services/classify/data/apps.json", "samples/sample.pcap"]
    for p in needed:
        assert (REPO / p).exists(), p
        assert not dockerignore_excludes(p, patterns), f"{p} is left out of the build context"
    for p in (".env", ".venv/bin/python", ".git/config", "shared/__pycache__/x.pyc", "capture.pcap"):
        assert dockerignore_excludes(p, patterns), f"{p} would be sent to the docker daemon"
    assert not dockerignore_excludes(".env.example", patterns)


def test_image_and_setup_ship_bytecode():
    """The image sets PYTHONDONTWRITEBYTECODE: its build stage compiles the venv's and the project's bytecode
    after removing the build's caches, or every service start compiles its modules again; setup.sh compiles
    the project's (an editable install leaves that to the first import)."""
    build = parse_dockerfile(DOCKERFILE.read_text())[0]
    steps = [" ".join(c) for r in build.all("RUN") for c in _split_and(shlex.split(r.replace("&&", " && ")))]
    removes = [i for i, c in enumerate(steps) if "__pycache__" in c and "rm" in c]
    compiles = [i for i, c in enumerate(steps) if "-m compileall" in c]
    assert compiles, "the build stage compiles no bytecode"
    assert not removes or max(removes) < max(compiles), "bytecode is compiled before the caches are removed"
    last = steps[max(compiles)]
    for part in (".venv/lib", "flowtarget", "shared", "services"):
        assert re.search(rf"(^|\s){re.escape(part)}(\s|$)", last), f"{part} is not compiled: {last}"
    runtime = parse_dockerfile(DOCKERFILE.read_text())[-1]
    assert "PYTHONDONTWRITEBYTECODE=1" in " ".join(runtime.all("ENV"))
    setup = SETUP.read_text()
    assert re.search(r"^\.venv/bin/python -m compileall .*\bflowtarget shared services\b", setup, re.M)
