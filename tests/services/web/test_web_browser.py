"""The web console in a real browser (Debian's chromium, headless, driven by selenium) against a real
pipeline: nats-server, capture replaying captures, classify, store, block and web as processes.

Screenshots of every page (1280×800 and 390×844) and the timing report of a 10,000-flow page go to
``$FT_WEB_ARTIFACTS`` (default: a pytest tmp dir, printed at the end of the run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import dpkt
import pytest

from flowtarget.embedded import EmbeddedNats, free_port
from flowtarget.orchestrate import Pipeline, base_env, pcap_env, wait_ready
from tests.conftest import CORPUS, SAMPLE_PCAP
from tests.services.web import craft

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
USER, PASSWORD, TOKEN = "operator", "pw-" + os.urandom(6).hex(), "tok-" + os.urandom(12).hex()
PROBE = "web1"
WIDE, NARROW = (1280, 800), (390, 844)
N_FLOWS = 10_000


def _need_browser() -> None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh --test installs them)")
    pytest.importorskip("selenium")


class Console:
    """The running pipeline + console, and helpers the tests share."""

    def __init__(self, root: Path, artifacts: Path) -> None:
        self.root = root
        self.artifacts = artifacts
        self.nats = EmbeddedNats(store_dir=str(root / "nats"), log_file=str(root / "nats.log"))
        self.nats.start()
        self.evidence = root / "evidence"
        self.out = root / "out"
        self.ports = {n: free_port() for n in ("capture", "classify", "store", "block")}
        self.record = root / "record"       # capture's packet recorder (the pcap export page reads it)
        env = base_env(self.nats.url, PROBE, {"FT_LOG_LEVEL": "INFO", "FT_EVIDENCE_DIR": str(self.evidence),
                                              "FT_OUT_DIR": str(self.out), "FT_DRAIN_TIMEOUT_S": "2",
                                              "FT_RECORD_DIR": str(self.record)})
        for k in ("FT_WEB_TOKEN", "FT_WEB_USER", "FT_WEB_PASSWORD"):
            env.pop(k, None)
        self.p = Pipeline(env, log_dir=root, metrics_ports=dict(self.ports))
        self.web_port = free_port()
        self.web_metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"

    def start(self) -> None:
        p = self.p
        p.start("classify")
        p.start("store")
        p.start("block")           # no interface: report only
        health = {n: f"http://127.0.0.1:{port}/metrics" for n, port in self.ports.items()}
        p.start("web", {"FT_WEB_PORT": str(self.web_port), "FT_WEB_USER": USER, "FT_WEB_PASSWORD": PASSWORD,
                        "FT_WEB_TOKEN": TOKEN, "FT_WEB_HEALTH_URLS": json.dumps(health),
                        "FT_WEB_EVIDENCE_RECORD_S": "2", "FT_WEB_LIVE_INTERVAL_S": "1",
                        "FT_METRICS_PORT": str(self.web_metrics_port), "FT_METRICS_ADDR": "127.0.0.1"})
        import asyncio

        assert asyncio.run(wait_ready(self.nats.url, "classify", timeout_s=60)), self.log("classify")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("web did not come up:\n" + self.log("web"))

    def replay(self, files: list[Path], realtime: bool = False, wait: bool = True) -> subprocess.Popen:
        env = {**pcap_env([str(f) for f in files]), "FT_REPLAY_REALTIME": "1" if realtime else "0"}
        proc = self.p.start("capture", env)
        if wait:
            assert proc.wait(180) == 0, self.log("capture")
        return proc

    def log(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        self.p.stop()
        self.nats.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    _need_browser()
    root = tmp_path_factory.mktemp("webconsole")
    artifacts = Path(os.environ.get("FT_WEB_ARTIFACTS") or tmp_path_factory.mktemp("web-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    c = Console(root, artifacts)
    try:
        c.start()
        t0 = c.t0 = time.time() - 600
        c.hostile = craft.hostile(root / "hostile.pcap", t0)
        files = [SAMPLE_PCAP, c.hostile,
                 craft.many_flows(root / "many.pcap", N_FLOWS, t0 + 1)]
        dev = CORPUS / "443-curl.pcap"
        if dev.exists():          # a dev capture of the nDPI corpus where it sits beside the repo
            files.insert(0, dev)
        c.replay(files)
        # a monitoring rule block reports on while the flood replays (the blocks page's rows)
        out = subprocess.run([sys.executable, "-m", "flowtarget", "rules", "--nats", c.nats.url, "add", "--id",
                              "watch-site1", "--action", "alert", "--host", "www.site1.example"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        yield c
    finally:
        c.close()
        print(f"\nweb console artifacts (screenshots, timing): {artifacts}")


@pytest.fixture(scope="module")
def browser(console):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = console.root / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={console.root / 'chrome-profile'}",
              f"--window-size={WIDE[0]},{WIDE[1]}"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    drv.downloads = downloads
    try:
        yield drv
    finally:
        drv.quit()


def shoot(drv, console: Console, name: str) -> None:
    """Screenshots at 1280×800 and at a phone's width; the page must not scroll sideways at either."""
    for label, (w, h) in (("wide", WIDE), ("narrow", NARROW)):
        drv.set_window_rect(width=w, height=h)
        time.sleep(0.2)
        inner = drv.execute_script("return document.documentElement.clientWidth")
        body = drv.execute_script("return document.body.scrollWidth")
        drv.save_screenshot(str(console.artifacts / f"{name}-{label}.png"))
        assert body <= inner + 1, f"{name} scrolls sideways at {label} ({body} > {inner})"
    drv.set_window_rect(width=WIDE[0], height=WIDE[1])


def login(drv, console: Console) -> None:
    from selenium.webdriver.common.by import By

    drv.get(console.url + "/flows")
    assert "/login" in drv.current_url                 # login required
    drv.find_element(By.ID, "user").send_keys(USER)
    drv.find_element(By.ID, "password").send_keys("wrong")
    drv.find_element(By.ID, "login").click()
    text_of(drv, "error", "wrong credentials")
    drv.find_element(By.ID, "user").send_keys(USER)
    drv.find_element(By.ID, "password").send_keys(PASSWORD)
    drv.find_element(By.ID, "login").click()
    wait_for(lambda: drv.current_url.endswith("/flows"), 10, "the page asked for before login")


def wait_for(fn, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def texts(drv, css: str) -> list[str]:
    """The rendered text of every element matching ``css``, read in one script run: a live page replaces
    its elements while the test reads them, and element-by-element reads then race (stale elements)."""
    return drv.execute_script(
        r"return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText.replace(/\s+/g, ' ').trim())", css)


def text_of(drv, elem_id: str, contains: str, timeout: float = 15.0) -> str:
    """The text of element ``elem_id`` once it contains ``contains`` (a click's page may still be loading)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def get() -> str:
        try:
            found = drv.find_elements(By.ID, elem_id)
            return found[0].text if found and contains in found[0].text else ""
        except StaleElementReferenceException:
            return ""

    return wait_for(get, timeout, f"#{elem_id} containing {contains!r}", every=0.1)


# --------------------------------------------------------------------------- the tests, in order


def test_login_then_every_page_loads_at_both_widths(console, browser):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(console.url + "/login")
    shoot(drv, console, "login")
    login(drv, console)
    rows = drv.find_elements(By.CSS_SELECTOR, "#flows-table .r:not(.h)")
    assert len(rows) == 500                             # the default page of the access log
    for path, name, marker in (("/", "overview", "pps"), ("/flows?limit=200", "flows", "flows-table"),
                               ("/dns", "dns", "dns-table"), ("/alerts", "alerts", "alerts-table"),
                               ("/blocks", "blocks", "blocks-table"), ("/rules", "rules", "rules-table"),
                               ("/pcap", "pcap", "pcap-form")):
        drv.get(console.url + path)
        assert drv.find_element(By.ID, marker) is not None, path
        shoot(drv, console, name)
    # searching: port and protocol narrow the access log
    drv.get(console.url + "/flows?protocol=HTTP&port=80&host=10.30.0.5")
    cells = [r.find_elements(By.TAG_NAME, "span") for r in drv.find_elements(By.CSS_SELECTOR, "#flows-table .r:not(.h)")]
    assert len(cells) == 1 and cells[0][5].text == "HTTP" and cells[0][4].text == "203.0.113.7:80"


def test_live_numbers_move_and_an_arp_flood_alert_brings_its_pcap(console, browser):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(console.url + "/")
    wait_for(lambda: drv.find_element(By.ID, "live-status").text == "live", 10, "the live stream")
    flood = console.replay([craft.arp_flood(console.root / "flood.pcap", time.time(), seconds=22.0)],
                           realtime=True, wait=False)
    samples = []
    t_end = time.monotonic() + 8
    while time.monotonic() < t_end:
        updated, pps, fps = (texts(drv, f"#{i}")[0] for i in ("updated", "pps", "fps"))
        samples.append((time.monotonic(), updated, float(pps.replace(",", "") or 0),
                        float(fps.replace(",", "") or 0)))
        time.sleep(0.5)
    shoot(drv, console, "overview-live")
    changes = [i for i in range(1, len(samples)) if samples[i][1] != samples[i - 1][1]]
    assert len(changes) >= 3, samples                   # pushed at least every 2 s
    gaps = [samples[b][0] - samples[a][0] for a, b in zip(changes, changes[1:])]
    assert max(gaps, default=0) <= 2.6, gaps
    assert max(s[2] for s in samples) > 0, samples       # packets/s from capture's /metrics
    assert max(s[3] for s in samples) > 0, samples       # flows/s from the flow records
    talkers = texts(drv, "#talkers tbody td")
    assert any(t.startswith("10.40.0.") or t.startswith("192.0.2.") for t in talkers), talkers
    health = texts(drv, "#health")[0]
    assert "classify ok" in health and "capture ok" in health, health

    # the alert appears while the flood replays
    def alert_row():
        drv.get(console.url + "/alerts?type=arp_flood")
        links = drv.find_elements(By.CSS_SELECTOR, "#alerts-table tbody tr td a")
        return links[0].get_attribute("href") if links else None

    href = wait_for(alert_row, 30, "an arp_flood alert")
    drv.get(console.url + "/alerts")
    shoot(drv, console, "alerts-open")
    assert flood.poll() is None, "the flood replay ended before the alert showed: too slow a machine?"
    # a policy alert is about one flow: capture writes that flow's recent packets when asked
    drv.get(console.url + "/alerts?type=policy")
    drv.find_elements(By.CSS_SELECTOR, "#alerts-table tbody tr td a")[0].click()
    policy = dict(zip(*[[e.text for e in drv.find_elements(By.CSS_SELECTOR, f"#alert-details {t}")]
                        for t in ("dt", "dd")]))
    drv.find_element(By.ID, "record").click()
    text_of(drv, "notice", "capture wrote the flow's recent packets")
    drv.find_element(By.ID, "pcap-download").click()
    flow_pcap = wait_for(lambda: list(drv.downloads.glob("*policy*.pcap")), 20, "the flow's pcap")[0]
    ends = {policy["source"].rsplit(":", 1)[0], policy["target"].rsplit(":", 1)[0]}
    n = 0
    for _ts, buf in dpkt.pcap.Reader(open(flow_pcap, "rb")):
        ip = dpkt.ethernet.Ethernet(buf).data
        assert {socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)} == ends
        n += 1
    assert n >= 2

    drv.get(href)
    details = drv.find_element(By.ID, "alert-details").text
    assert "66:66:66:66:66:66" in details and "10.40.0.66" in details
    drv.find_element(By.ID, "record").click()          # capture records the flooding MAC's ARP (2 s)
    text_of(drv, "notice", "capture records 'arp and ether src 66:66:66:66:66:66'")

    def download_link():
        drv.get(href)
        links = drv.find_elements(By.ID, "pcap-download")
        return links[0] if links else None

    wait_for(download_link, 30, "the evidence pcap").click()
    shoot(drv, console, "alert")
    pcap = wait_for(lambda: list(drv.downloads.glob("*_ctl*.pcap")), 20, "the downloaded pcap")[0]
    frames = list(dpkt.pcap.Reader(open(pcap, "rb")))
    assert len(frames) > 50, len(frames)
    for _ts, buf in frames:
        eth = dpkt.ethernet.Ethernet(buf)
        assert eth.type == dpkt.ethernet.ETH_TYPE_ARP and eth.src == craft.FLOOD_MAC
    assert flood.wait(60) == 0, console.log("capture")

    # block judged the monitoring rule's matches: outcome and latency per action
    def block_rows():
        drv.get(console.url + "/blocks?rule=watch-site1")
        return drv.find_elements(By.CSS_SELECTOR, "#blocks-table .r:not(.h)")

    rows = wait_for(block_rows, 30, "block actions of watch-site1")
    cells = rows[0].find_elements(By.TAG_NAME, "span")
    assert cells[1].text == "watch-site1" and cells[2].text == "alert" and cells[3].text, [c.text for c in cells]
    assert "latency p50" in drv.find_element(By.ID, "block-summary").text
    shoot(drv, console, "blocks-live")

    # the rules page shows block's per-rule statistics (its ft_rule_stats bucket) beside the rule
    def hits():
        drv.get(console.url + "/rules")
        m = re.search(r"hits: (\d+)", drv.find_element(By.ID, "rule-watch-site1").text)
        return int(m.group(1)) if m else 0

    # block flushes its counts every FT_RULE_STATS_FLUSH_S: wait for the flush that holds every listed action
    # (a first read may come between two flushes)
    assert len(rows) > 0
    wait_for(lambda: hits() >= len(rows), 30, f"watch-site1's hit count to reach {len(rows)}")


def test_a_page_of_10000_flows_and_its_render_time(console, browser):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(console.url + f"/flows?protocol=UDP&host=198.51.100.&limit={N_FLOWS}")
    n = drv.execute_script("return document.querySelectorAll('#flows-table .r:not(.h)').length")
    assert n == N_FLOWS, drv.find_element(By.ID, "scan-meta").text
    nav = drv.execute_script("""const e = performance.getEntriesByType('navigation')[0];
        return {response_start_ms: e.responseStart, response_end_ms: e.responseEnd,
                dom_content_loaded_ms: e.domContentLoadedEventEnd, load_ms: e.loadEventEnd,
                transfer_bytes: e.transferSize}""")
    rendered = drv.execute_script("""return new Promise(r => requestAnimationFrame(() =>
        requestAnimationFrame(() => r(performance.now()))))""")
    nav["first_paint_after_load_ms"] = rendered
    nav["rows"] = n
    nav["scan"] = drv.find_element(By.ID, "scan-meta").text
    (console.artifacts / "timing-10000-flows.json").write_text(json.dumps(nav, indent=1))
    print("\n10,000-flow page:", json.dumps(nav))
    assert nav["load_ms"] > nav["response_end_ms"] > 0


def test_hostile_strings_from_the_wire_render_inert(console, browser):
    from selenium.webdriver.common.by import By

    drv = browser
    drv.get(console.url + "/flows?host=hostile")
    host_cells = [td.text for td in drv.find_elements(By.CSS_SELECTOR, "#flows-table span.host")]
    assert craft.HOSTILE_HOST.lower() in [h.lower() for h in host_cells], host_cells   # shown as text
    drv.get(console.url + "/dns?name=evil")
    names = [td.text for td in drv.find_elements(By.CSS_SELECTOR, "#dns-table span.host")]
    assert any(craft.HOSTILE_DNS.lower() in n.lower() for n in names), names
    shoot(drv, console, "dns-hostile")
    for path in ("/flows?host=hostile", "/dns?name=evil", "/"):
        drv.get(console.url + path)
        assert drv.execute_script("return window.__pwned === undefined")
        assert drv.execute_script("return document.querySelectorAll('main img, main script').length") == 0
    # the same as a rule id/message that the page echoes back: refused by validation, echoed escaped
    drv.get(console.url + "/rules")
    drv.find_element(By.ID, "rule-id").send_keys(craft.HOSTILE_URL)
    drv.find_element(By.ID, "rule-host").send_keys("x.test")
    drv.find_element(By.ID, "rule-save").click()
    text_of(drv, "error", "refused")
    assert drv.execute_script("return window.__pwned === undefined")


def test_a_rule_added_in_the_page_is_in_flowtarget_rules_list(console, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from services.block.rules import RuleError, parse_rule

    drv = browser

    def cli_list() -> str:
        out = subprocess.run([sys.executable, "-m", "flowtarget", "rules", "--nats", console.nats.url, "list"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def fill(rid: str, host: str, port: str = "") -> None:
        drv.get(console.url + "/rules")
        drv.find_element(By.ID, "rule-id").send_keys(rid)
        Select(drv.find_element(By.ID, "rule-action")).select_by_visible_text("dns_block")
        drv.find_element(By.ID, "rule-host").send_keys(host)
        if port:
            drv.find_element(By.ID, "rule-port").send_keys(port)

    fill("web-r1", "*.blocked.test")
    drv.find_element(By.ID, "rule-check").click()       # dry run: validated, not stored
    text_of(drv, "result", "dry run: valid")
    assert "web-r1" not in cli_list()
    fill("web-r1", "*.blocked.test")
    drv.find_element(By.ID, "rule-save").click()
    text_of(drv, "result", "stored 1 rule(s): web-r1")
    listed = cli_list()
    assert re.search(r"^web-r1\tdns_block\thost=\*\.blocked\.test", listed, re.M), listed
    shoot(drv, console, "rules-added")

    # a bad rule is refused with exactly the message `flowtarget rules add` gives
    fill("web-bad", "ok.test", port="70000")
    drv.find_element(By.ID, "rule-save").click()
    with pytest.raises(RuleError) as cli_err:
        parse_rule({"id": "web-bad", "action": "dns_block", "host": ["ok.test"], "port": ["70000"]}, "rule")
    assert text_of(drv, "error", "refused") == f"refused: {cli_err.value}"
    assert "web-bad" not in cli_list()

    # disable, then remove
    drv.get(console.url + "/rules")
    drv.find_element(By.CSS_SELECTOR, "#rule-web-r1 form[action$='/enable'] button").click()
    text_of(drv, "result", "disabled rule web-r1")
    assert re.search(r"^web-r1\t.*disabled$", cli_list(), re.M)
    drv.find_element(By.ID, "remove-web-r1").click()
    text_of(drv, "result", "removed rule web-r1")
    assert "web-r1" not in cli_list()
    audit = drv.find_element(By.ID, "audit").text
    assert f"{USER} removed rule web-r1" in audit.replace("\n", " ")
    log = console.log("web")
    assert re.search(rf"audit who={USER} what=stored rule\(s\) web-r1: .* when=\d{{4}}-\d\d-\d\dT", log), log


def test_changes_need_the_csrf_token_and_the_same_origin(console):
    """Outside the browser: a logged-in session without the token, or from another origin, changes nothing."""
    jar = CookieJar()
    op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = op.open(console.url + "/login").read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    op.open(console.url + "/login", data=urllib.parse.urlencode(
        {"csrf": csrf, "user": USER, "password": PASSWORD, "next": "/rules"}).encode())
    page = op.open(console.url + "/rules").read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    rule = {"id": "csrf-r1", "action": "alert", "host": "c.test"}

    def post(data: dict, headers: dict | None = None) -> int:
        req = urllib.request.Request(console.url + "/rules", data=urllib.parse.urlencode(data).encode(),
                                     headers=headers or {})
        try:
            return op.open(req).status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post(rule) == 403                                      # no token
    assert post({**rule, "csrf": "x" * 43}) == 403                # a wrong one
    assert post({**rule, "csrf": csrf}, {"Origin": "http://evil.test"}) == 403
    assert "csrf-r1" not in op.open(console.url + "/rules").read().decode()
    assert post({**rule, "csrf": csrf}) == 200
    assert "csrf-r1" in op.open(console.url + "/rules").read().decode()
    # scripts: the token as a bearer header (no cookie, no CSRF token)
    req = urllib.request.Request(console.url + "/api/live", headers={"Authorization": f"Bearer {TOKEN}"})
    assert json.loads(urllib.request.urlopen(req).read())["seq"] >= 1
    req = urllib.request.Request(console.url + "/api/live", headers={"Authorization": "Bearer nope"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 401
    assert "refused /rules: bad CSRF token" in console.log("web")
    # every response carries the headers that keep a page inert and unframed, static files too
    for path in ("/static/app.js", "/login", "/no-such-page"):
        try:
            h = urllib.request.urlopen(console.url + path).headers
        except urllib.error.HTTPError as exc:
            h = exc.headers
        assert "script-src 'self'" in h["Content-Security-Policy"] and h["X-Content-Type-Options"] == "nosniff", path
        assert h["X-Frame-Options"] == "DENY", path


def test_nobody_watching_means_no_live_subscription(console, browser):
    """Once no overview page is open, the console drops its flow subscription (the idle cost is nil)."""
    from services.web.live import parse_metrics

    def web_metrics() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{console.web_metrics_port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    browser.get(console.url + "/")
    m = wait_for(lambda: (lambda m: m if m["flowtarget_web_live_subscribed"] == 1 else None)(web_metrics()), 15,
                 "the live subscription")
    assert m["flowtarget_web_viewers"] >= 1
    browser.get(console.url + "/rules")                 # the overview closes its event stream
    wait_for(lambda: (lambda m: m["flowtarget_web_live_subscribed"] == 0 and m["flowtarget_web_viewers"] == 0)(
        web_metrics()), 40, "the live subscription to be dropped")


def _pcap_frames(path: Path) -> list[tuple[float, bytes]]:
    with open(path, "rb") as fh:
        return [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]


def test_pcap_export_form_cuts_packets_out_of_capture_s_recorder(console, browser):
    """The /pcap form asks capture's recorder over ft.ctl.<probe>.export and the pcap downloads: a host in a
    time window gives exactly that host's packets of the replayed capture; a block action's "the flow's
    packets" link gives that one flow's packets."""
    from selenium.webdriver.common.by import By

    drv = browser

    def submit(**fields: str) -> None:
        drv.get(console.url + "/pcap")
        for k, v in fields.items():
            drv.find_element(By.ID, f"pcap-{k}").clear()
            drv.find_element(By.ID, f"pcap-{k}").send_keys(v)
        click_export()

    def click_export() -> None:
        drv.execute_script("document.body.dataset.before = '1'")     # marks the page the form is on
        drv.find_element(By.ID, "pcap-export").click()

    def outcome() -> str:
        """The notice or the error of the page the form's POST answered with (waits for that page)."""
        from selenium.common.exceptions import WebDriverException

        read = r"""if (!document.body || document.body.dataset.before) { return ''; }
            return Array.from(document.querySelectorAll('#notice, #error')).map(e => e.textContent.trim()).join(' ')"""

        def get() -> str:
            try:
                return drv.execute_script(read)
            except WebDriverException:      # the document was replaced while the script ran: read again
                return ""

        return wait_for(get, 60, "the export's answer", every=0.2)

    # refused before anything is asked: the same validation as `flowtarget pcap`
    submit(host="10.30.0.x")
    assert outcome() == "refused: bad host '10.30.0.x': an IP address"
    # no capture runs between replays: nobody answers the export request
    submit(host="10.30.0.5")
    assert "no capture with a packet recorder (FT_RECORD_DIR) answers for probe web1" in outcome()

    trickle = console.replay([craft.trickle(console.root / "trickle.pcap", time.time(), seconds=60.0)],
                             realtime=True, wait=False)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(console.t0 - 2))

    def export_host() -> str:
        submit(host="10.30.0.5", since=since, until=f"{console.t0 + 5:.3f}")
        text = outcome()
        return text if "exported" in text else ""      # until the new capture process subscribes

    notice = wait_for(export_host, 60, "capture's recorder to answer")
    assert trickle.poll() is None, console.log("capture")
    want = _pcap_frames(console.hostile)                # every packet of the hostile capture involves 10.30.0.5
    assert notice.startswith(f"exported {len(want)} packets (")
    assert "host 10.30.0.5, from " in texts(drv, "#pcap-exports tbody tr")[0]
    drv.find_element(By.ID, "pcap-download").click()
    got = wait_for(lambda: list(drv.downloads.glob("export-web1-10.30.0.5-*.pcap")), 20, "the host's pcap")[0]
    frames = _pcap_frames(got)
    assert [f for _, f in frames] == [f for _, f in want]
    assert all(abs(a - b) < 1e-5 for (a, _), (b, _) in zip(frames, want))
    shoot(drv, console, "pcap-export")

    # the blocks page: each action reads as what the client saw, and links to its flow's packets
    drv.get(console.url + "/blocks?rule=watch-site1")
    # textContent (rows off screen are not rendered: content-visibility: auto, so their innerText is empty),
    # without the packet links
    views = drv.execute_script(r"""return Array.from(document.querySelectorAll('#blocks-table .r:not(.h) span.view'))
        .map(e => { const c = e.cloneNode(true); c.querySelectorAll('a').forEach(a => a.remove());
                    return c.textContent.replace(/\s+/g, ' ').trim(); })""")
    assert views and set(views) == {
        "the client's view: The client got the real server's answer: a monitoring rule (alert only), nothing was sent."
    }, views[:3]
    # an HTTP exchange's row (the rule also matched the name's DNS lookups): its "the flow's packets" link
    href = drv.execute_script(r"""for (const r of document.querySelectorAll('#blocks-table .r:not(.h)')) {
            const server = r.children[7].textContent.trim(), a = r.querySelector('span.view a.packets');
            if (server.endsWith(':80') && a) { return a.href; } }
        return null""")
    assert href, "no HTTP block action with a flow id"
    flow_id = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)["flow_id"][0]
    drv.get(href)
    wait_for(lambda: drv.find_element(By.ID, "pcap-flow").get_attribute("value") == flow_id, 15,
             "the form filled with the flow id")
    click_export()
    assert outcome().startswith("exported 8 packets")        # craft.http_session: one HTTP exchange
    drv.find_element(By.ID, "pcap-download").click()
    safe = re.sub(r"[^A-Za-z0-9.\-]+", "-", flow_id)
    got = wait_for(lambda: list(drv.downloads.glob(f"export-web1-{safe}-*.pcap")), 20, "the flow's pcap")[0]
    ends = set()
    for _ts, buf in _pcap_frames(got):
        ip = dpkt.ethernet.Ethernet(buf).data
        ends.add(frozenset([(socket.inet_ntoa(ip.src), ip.data.sport), (socket.inet_ntoa(ip.dst), ip.data.dport)]))
    assert len(ends) == 1 and any(p == 80 for _, p in next(iter(ends))), ends
    audit = (console.root / "web.log").read_text(errors="replace")
    assert re.search(rf"audit who={USER} what=pcap export of flow {re.escape(flow_id)} \(web1\): exported 8 packets",
                     audit), audit[-2000:]
    assert f"audit who={USER} what=downloaded export " in audit
