"""A reusable network-namespace lab for FlowTarget's live tests and sample recording.

- ``tests.lab.netlab.Lab``: the namespaces, bridge, probe mirror and delay line.
- ``tests.lab.servers``: HTTP, TLS 1.3, dnsmasq and sshd servers inside the lab.
- ``lab_fixture(...)``: a pytest fixture factory that skips with a stated
  reason when the lab cannot be built (not root, ``ip netns`` failing).

    from tests.lab import lab_fixture
    lab = lab_fixture(mode="mirror", delay_ms=50, scope="module")

    @pytest.mark.root
    def test_x(lab): ...
"""

from __future__ import annotations

from typing import Any

from .netlab import Host, Lab, LabError, cleanup_stale, lab_available

__all__ = ["Host", "Lab", "LabError", "cleanup_stale", "lab_available", "lab_fixture", "skip_unless_lab"]


def skip_unless_lab() -> None:
    """pytest.skip with the reason when this process cannot build a lab."""
    import pytest

    ok, reason = lab_available()
    if not ok:
        pytest.skip(f"network lab unavailable: {reason}")


def lab_fixture(scope: str = "module", **lab_kwargs: Any):
    """A pytest fixture yielding a started ``Lab(**lab_kwargs)``, torn down after ``scope``."""
    import pytest

    @pytest.fixture(scope=scope)
    def _lab():
        skip_unless_lab()
        with Lab(**lab_kwargs) as lab:
            yield lab

    return _lab
