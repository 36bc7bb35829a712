"""Subject builder and settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.runner import ConfigError, load_settings
from shared.settings import CaptureSettings, CommonSettings, StoreSettings
from shared.subjects import all_of, subject


def test_subjects():
    assert subject("sample", "probe1") == "ft.sample.probe1"
    assert subject("alert", "probe1", "arp_flood") == "ft.alert.arp_flood.probe1"
    assert subject("ctl", "probe1", "pcap") == "ft.ctl.probe1.pcap"
    assert subject("verdict") == "ft.verdict.*"
    assert all_of("alert") == "ft.alert.>"


@pytest.mark.parametrize("bad", ["a.b", "a b", "*x", ">", "", "x" * 65, "é"])
def test_subject_tokens_refused(bad):
    with pytest.raises(ValueError):
        subject("flow", bad)


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("FT_PROBE", "edge-7")
    monkeypatch.setenv("FT_NATS_URL", "nats://n1:4222,nats://n2:4222")
    monkeypatch.setenv("FT_INFLUX_URL", "http://influx:8086")
    monkeypatch.setenv("FT_INFLUX_TOKEN", "s3cret")
    monkeypatch.setenv("FT_PCAP", '["/a.pcap", "/b.pcap"]')
    s = StoreSettings()
    assert s.probe == "edge-7" and s.influx_url == "http://influx:8086"
    assert s.influx_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)            # secrets never printed
    assert [str(p) for p in CaptureSettings().pcap] == ["/a.pcap", "/b.pcap"]
    with pytest.raises(Exception):
        s.probe = "x"                          # frozen


def test_bad_config_is_one_line(monkeypatch):
    monkeypatch.setenv("FT_PROBE", "bad probe")
    monkeypatch.setenv("FT_SNAPLEN", "12")
    with pytest.raises(ConfigError) as err:
        load_settings(CaptureSettings)
    text = str(err.value)
    assert "\n" not in text and "FT_PROBE" in text and "FT_SNAPLEN" in text


def test_service_exits_2_with_one_line_on_bad_config():
    env = {"FT_NATS_URL": "http://wrong", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "flowtarget", "classify"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "FT_NATS_URL" in lines[0], proc.stderr


def test_common_defaults():
    s = CommonSettings()
    assert s.nats_url.startswith("nats://") and s.stream_name


def test_capture_shards_variable(monkeypatch):
    monkeypatch.setenv("FT_CAPTURE_SHARDS", "3")
    assert CaptureSettings().shards == 3
    assert CaptureSettings(shards=2).shards == 2


def test_mapping_settings_take_a_json_object(monkeypatch):
    """A dict setting (FT_WEB_HEALTH_URLS) is read as a JSON object; anything else is a clear error."""
    import pydantic
    import pytest as _pytest

    from shared.settings import WebSettings

    monkeypatch.setenv("FT_WEB_TOKEN", "t")
    monkeypatch.setenv("FT_WEB_HEALTH_URLS", '{"capture": "http://127.0.0.1:9100/metrics"}')
    assert WebSettings().web_health_urls == {"capture": "http://127.0.0.1:9100/metrics"}
    monkeypatch.setenv("FT_WEB_HEALTH_URLS", '["not", "a", "mapping"]')
    with _pytest.raises(pydantic.ValidationError, match="not a JSON object"):
        WebSettings()


def test_an_empty_out_dir_means_no_files(monkeypatch):
    from shared.settings import StoreSettings

    monkeypatch.setenv("FT_OUT_DIR", "")
    assert StoreSettings().out_dir is None          # not Path("") = the current directory
    monkeypatch.setenv("FT_OUT_DIR", "/tmp/x")
    assert str(StoreSettings().out_dir) == "/tmp/x"


def test_detectors_run_inline_for_file_replays_unless_told(monkeypatch, tmp_path):
    from shared.settings import CaptureSettings

    monkeypatch.delenv("FT_DETECT_INLINE", raising=False)
    monkeypatch.delenv("FT_PCAP", raising=False)
    assert CaptureSettings(iface="eth0").detect_inline is False          # live: their own process
    assert CaptureSettings(pcap=[tmp_path / "a.pcap"]).detect_inline is True
    monkeypatch.setenv("FT_PCAP", str(tmp_path / "a.pcap"))
    assert CaptureSettings().detect_inline is True
    monkeypatch.setenv("FT_DETECT_INLINE", "false")
    assert CaptureSettings().detect_inline is False                      # told otherwise
    monkeypatch.setenv("FT_DETECT_INLINE", "true")
    monkeypatch.delenv("FT_PCAP")
    assert CaptureSettings(iface="eth0").detect_inline is True
