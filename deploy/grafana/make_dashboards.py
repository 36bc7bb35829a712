"""Writes the provisioned Grafana dashboards (deploy/grafana/dashboards/*.json).

    python deploy/grafana/make_dashboards.py          # rewrite the JSON files
    python deploy/grafana/make_dashboards.py --check  # exit 1 when they are out of date

The queries follow the storage schema (services/store/schema.py, docs/storage.md):
measurements ``flows`` (access log, time = flow start), ``flow_updates``, ``dns``,
``http``, ``tls``, ``alerts``, ``blocks``; tags probe, transport, app_protocol,
category, kind, query_type, rcode, alert_type, severity, action, outcome;
everything else (addresses, ports, names, counters) is a field.  Pipeline health
reads the services' Prometheus metrics (shared/metrics.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
INFLUX = {"type": "influxdb", "uid": "flowtarget-influxdb"}
PROM = {"type": "prometheus", "uid": "flowtarget-prometheus"}

# every Flux query starts like this: the dashboard's bucket and probe variables, the time picker
RANGE = 'from(bucket: "${bucket}")\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n'


def flt(measurement: str, *fields: str, extra: str = "") -> str:
    cond = f'r._measurement == "{measurement}" and r.probe =~ /^${{probe:regex}}$/'
    if fields:
        cond += " and (" + " or ".join(f'r._field == "{f}"' for f in fields) + ")"
    if extra:
        cond += f" and {extra}"
    return f"  |> filter(fn: (r) => {cond})\n"


PIVOT = '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
BYTES = "(if exists r.src2dst_bytes then r.src2dst_bytes else 0) + (if exists r.dst2src_bytes then r.dst2src_bytes else 0)"


def templating(prom: bool = False) -> dict[str, Any]:
    if prom:
        return {"list": [{
            "name": "probe", "label": "probe", "type": "query", "datasource": PROM,
            "query": {"query": "label_values(flowtarget_nats_connected, probe)", "refId": "probe"},
            "definition": "label_values(flowtarget_nats_connected, probe)",
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        }]}
    return {"list": [
        {"name": "bucket", "label": "bucket", "type": "query", "datasource": INFLUX,
         "query": 'buckets() |> filter(fn: (r) => r.name !~ /^_/) |> keep(columns: ["name"])',
         "definition": "buckets()", "refresh": 1, "includeAll": False, "multi": False},
        {"name": "probe", "label": "probe", "type": "query", "datasource": INFLUX,
         "query": 'import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "${bucket}", tag: "probe", '
                  'start: -30d)',
         "definition": "probe tag values", "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
         "current": {"selected": True, "text": ["All"], "value": ["$__all"]}},
    ]}


class Board:
    def __init__(self, uid: str, title: str, description: str, prom: bool = False, refresh: str = "30s",
                 time_from: str = "now-6h", extra_vars: list[dict[str, Any]] | None = None) -> None:
        self.uid, self.title, self.description, self.prom = uid, title, description, prom
        self.extra_vars = extra_vars or []
        self.refresh, self.time_from = refresh, time_from
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = 0
        self._row_h = 0

    def add(self, kind: str, title: str, query: str, w: int = 12, h: int = 8, ds: dict | None = None,
            unit: str = "short", description: str = "", options: dict | None = None,
            overrides: list | None = None, legend: str = "", transformations: list | None = None) -> None:
        if self._x + w > 24:
            self._x, self._y = 0, self._y + self._row_h
            self._row_h = 0
        ds = ds or (PROM if self.prom else INFLUX)
        target: dict[str, Any] = {"refId": "A", "datasource": ds}
        if ds is PROM:
            target.update(expr=query, legendFormat=legend or "__auto", range=True)
        else:
            target["query"] = query
        panel = {
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
            "datasource": ds, "gridPos": {"x": self._x, "y": self._y, "w": w, "h": h},
            "targets": [target],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides or []},
            "options": options or {},
        }
        if transformations:
            panel["transformations"] = transformations
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["flowtarget"], "timezone": "", "editable": True, "schemaVersion": 39, "version": 1,
            "refresh": self.refresh, "time": {"from": self.time_from, "to": "now"},
            "templating": {"list": templating(self.prom)["list"] + self.extra_vars}, "annotations": {"list": []}, "panels": self.panels,
            "links": [{"type": "dashboards", "tags": ["flowtarget"], "asDropdown": True, "title": "FlowTarget"}],
        }


TABLE = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
LEGEND_TABLE = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]},
                "tooltip": {"mode": "multi"}}


def traffic() -> Board:
    b = Board("flowtarget-traffic", "FlowTarget: traffic by protocol and application",
              "Access-log flows (measurement flows, time = flow start): bytes and flows by L7 protocol and "
              "application, top talkers.")
    bytes_by = lambda col: (RANGE + flt("flows", "src2dst_bytes", "dst2src_bytes")  # noqa: E731
                            + f'  |> group(columns: ["{col}"])\n'
                            + '  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)\n')
    b.add("timeseries", "Bytes by protocol", bytes_by("app_protocol"), unit="decbytes", options=LEGEND_TABLE)
    b.add("timeseries", "Flows by protocol",
          RANGE + flt("flows", "duration_ms") + '  |> group(columns: ["app_protocol"])\n'
          '  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)\n', options=LEGEND_TABLE)
    b.add("table", "Protocols", RANGE + flt("flows", "src2dst_bytes", "dst2src_bytes", "duration_ms") + PIVOT
          + f'  |> map(fn: (r) => ({{protocol: r.app_protocol, category: r.category, bytes: {BYTES}, flows: 1}}))\n'
          '  |> group(columns: ["protocol", "category"])\n'
          '  |> reduce(identity: {bytes: 0, flows: 0}, fn: (r, accumulator) => '
          '({bytes: accumulator.bytes + r.bytes, flows: accumulator.flows + r.flows}))\n'
          '  |> group()\n  |> sort(columns: ["bytes"], desc: true)\n',
          w=8, h=10, options=TABLE, overrides=[{"matcher": {"id": "byName", "options": "bytes"},
                                                "properties": [{"id": "unit", "value": "decbytes"}]}])
    b.add("table", "Applications", RANGE + flt("flows", "application", "src2dst_bytes", "dst2src_bytes") + PIVOT
          + f'  |> map(fn: (r) => ({{application: if exists r.application and r.application != "" then '
          f'r.application else "(" + r.app_protocol + ")", bytes: {BYTES}, flows: 1}}))\n'
          '  |> group(columns: ["application"])\n'
          '  |> reduce(identity: {bytes: 0, flows: 0}, fn: (r, accumulator) => '
          '({bytes: accumulator.bytes + r.bytes, flows: accumulator.flows + r.flows}))\n'
          '  |> group()\n  |> sort(columns: ["bytes"], desc: true)\n  |> limit(n: 50)\n',
          w=8, h=10, options=TABLE, overrides=[{"matcher": {"id": "byName", "options": "bytes"},
                                                "properties": [{"id": "unit", "value": "decbytes"}]}])
    talkers = (RANGE + flt("flows", "src_ip", "dst_ip", "src2dst_bytes", "dst2src_bytes") + PIVOT
               + f'  |> map(fn: (r) => ({{r with bytes: {BYTES}}}))\n')
    b.add("table", "Top talkers (bytes sent + received)",
          "base = " + talkers
          + 'src = base |> map(fn: (r) => ({ip: r.src_ip, bytes: r.bytes}))\n'
          'dst = base |> map(fn: (r) => ({ip: r.dst_ip, bytes: r.bytes}))\n'
          'union(tables: [src, dst])\n  |> group(columns: ["ip"])\n  |> sum(column: "bytes")\n'
          '  |> group()\n  |> top(n: 25, columns: ["bytes"])\n',
          w=8, h=10, options=TABLE, overrides=[{"matcher": {"id": "byName", "options": "bytes"},
                                                "properties": [{"id": "unit", "value": "decbytes"}]}])
    b.add("table", "Top conversations", RANGE + flt("flows", "src_ip", "dst_ip", "src2dst_bytes", "dst2src_bytes")
          + PIVOT + f'  |> map(fn: (r) => ({{src_ip: r.src_ip, dst_ip: r.dst_ip, bytes: {BYTES}, flows: 1}}))\n'
          '  |> group(columns: ["src_ip", "dst_ip"])\n'
          '  |> reduce(identity: {bytes: 0, flows: 0}, fn: (r, accumulator) => '
          '({bytes: accumulator.bytes + r.bytes, flows: accumulator.flows + r.flows}))\n'
          '  |> group()\n  |> top(n: 25, columns: ["bytes"])\n',
          w=12, h=10, options=TABLE, overrides=[{"matcher": {"id": "byName", "options": "bytes"},
                                                 "properties": [{"id": "unit", "value": "decbytes"}]}])
    b.add("timeseries", "Bytes by transport", bytes_by("transport"), w=12, h=10, unit="decbytes",
          options=LEGEND_TABLE)
    return b


def access_log() -> Board:
    b = Board("flowtarget-access-log", "FlowTarget: access log",
              "The ISMS access log: one row per flow (5-tuple, start, duration, packets and bytes per direction, "
              "protocol); HTTP requests and TLS/QUIC handshakes.  Filter by address with the ip box.",
              extra_vars=[{"name": "ip", "label": "ip", "type": "textbox", "query": "",
                           "current": {"text": "", "value": ""}}])
    cols = '  |> keep(columns: ["_time", "probe", "transport", "app_protocol", "application", "host", "src_ip", ' \
           '"src_port", "dst_ip", "dst_port", "src2dst_packets", "src2dst_bytes", "dst2src_packets", ' \
           '"dst2src_bytes", "duration_ms", "end_reason", "vlan_id", "flow_id"])\n'
    ipf = '  |> filter(fn: (r) => "${ip}" == "" or r.src_ip == "${ip}" or r.dst_ip == "${ip}")\n'
    b.add("table", "Flows", RANGE + flt("flows") + PIVOT + ipf + '  |> group()\n' + cols
          + '  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 1000)\n', w=24, h=14, options=TABLE,
          overrides=[{"matcher": {"id": "byRegexp", "options": ".*_bytes"},
                      "properties": [{"id": "unit", "value": "decbytes"}]},
                     {"matcher": {"id": "byName", "options": "duration_ms"},
                      "properties": [{"id": "unit", "value": "ms"}]}])
    b.add("table", "HTTP requests", RANGE + flt("http") + PIVOT + ipf + '  |> group()\n'
          '  |> keep(columns: ["_time", "probe", "src_ip", "dst_ip", "dst_port", "method", "host", "url", '
          '"status_code", "user_agent", "content_type", "application"])\n'
          '  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 500)\n', w=24, h=10, options=TABLE)
    b.add("table", "TLS and QUIC handshakes", RANGE + flt("tls") + PIVOT + ipf + '  |> group()\n'
          '  |> keep(columns: ["_time", "probe", "app_protocol", "src_ip", "dst_ip", "dst_port", "sni", "version", '
          '"alpn", "ja3", "ja4", "issuer", "application"])\n'
          '  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 500)\n', w=24, h=10, options=TABLE)
    return b


def dns() -> Board:
    b = Board("flowtarget-dns", "FlowTarget: DNS", "Every DNS query and response seen (measurement dns).")
    b.add("timeseries", "Queries by type", RANGE + flt("dns", "answer_count", extra='r.kind == "query"')
          + '  |> group(columns: ["query_type"])\n'
          '  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)\n', options=LEGEND_TABLE)
    b.add("timeseries", "Responses by rcode", RANGE + flt("dns", "answer_count", extra='r.kind == "response"')
          + '  |> group(columns: ["rcode"])\n'
          '  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)\n', options=LEGEND_TABLE)
    b.add("table", "Top queried names", RANGE + flt("dns", "query_name", extra='r.kind == "query"')
          + '  |> map(fn: (r) => ({r with name: r._value}))\n  |> group(columns: ["name"])\n'
          '  |> count(column: "_value")\n  |> group()\n'
          '  |> rename(columns: {_value: "queries"})\n  |> top(n: 50, columns: ["queries"])\n',
          w=8, h=12, options=TABLE)
    b.add("table", "Names that do not exist (NXDOMAIN)", RANGE
          + flt("dns", "query_name", extra='r.kind == "response" and r.rcode == "NXDOMAIN"')
          + '  |> map(fn: (r) => ({r with name: r._value}))\n  |> group(columns: ["name"])\n'
          '  |> count(column: "_value")\n  |> group()\n'
          '  |> rename(columns: {_value: "responses"})\n  |> top(n: 50, columns: ["responses"])\n',
          w=8, h=12, options=TABLE)
    b.add("table", "Top clients", RANGE + flt("dns", "src_ip", extra='r.kind == "query"')
          + '  |> map(fn: (r) => ({r with client: r._value}))\n  |> group(columns: ["client"])\n'
          '  |> count(column: "_value")\n  |> group()\n'
          '  |> rename(columns: {_value: "queries"})\n  |> top(n: 50, columns: ["queries"])\n',
          w=8, h=12, options=TABLE)
    b.add("table", "DNS log", RANGE + flt("dns") + PIVOT + '  |> group()\n'
          '  |> keep(columns: ["_time", "probe", "kind", "src_ip", "dst_ip", "query_name", "query_type", "rcode", '
          '"answer_count", "answers", "transaction_id"])\n'
          '  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 1000)\n', w=24, h=14, options=TABLE)
    return b


def alerts_blocks() -> Board:
    b = Board("flowtarget-alerts", "FlowTarget: alerts and blocks",
              "Alerts raised by capture's detectors (measurement alerts; updates of one incident share alert_id) "
              "and the blocks injected by block (measurement blocks).")
    b.add("timeseries", "Alerts by type", RANGE + flt("alerts", "count") + '  |> group(columns: ["alert_type"])\n'
          '  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)\n', options=LEGEND_TABLE)
    b.add("piechart", "Incidents by severity", RANGE + flt("alerts", "alert_id")
          + '  |> group(columns: ["severity"])\n  |> distinct()\n  |> count()\n',
          options={"reduceOptions": {"calcs": ["lastNotNull"], "values": False}, "legend": {"displayMode": "table",
                                                                                          "placement": "right"}})
    b.add("table", "Alerts", RANGE + flt("alerts") + PIVOT + '  |> group()\n'
          '  |> keep(columns: ["_time", "probe", "severity", "alert_type", "message", "src_ip", "dst_ip", "count", '
          '"alert_id", "evidence_pcap", "rule_id"])\n'
          '  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 1000)\n', w=24, h=12, options=TABLE)
    b.add("timeseries", "Blocks by action and outcome", RANGE + flt("blocks", "attempts")
          + '  |> group(columns: ["action", "outcome"])\n'
          '  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)\n', options=LEGEND_TABLE)
    b.add("timeseries", "Block latency", RANGE + flt("blocks", "latency_ms") + '  |> group(columns: ["action"])\n'
          '  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)\n', unit="ms")
    b.add("table", "Blocks", RANGE + flt("blocks") + PIVOT + '  |> group()\n'
          '  |> keep(columns: ["_time", "probe", "action", "outcome", "rule_id", "host", "src_ip", "dst_ip", '
          '"dst_port", "latency_ms", "attempts", "message"])\n'
          '  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 1000)\n', w=24, h=12, options=TABLE)
    return b


def pipeline() -> Board:
    b = Board("flowtarget-pipeline", "FlowTarget: pipeline health",
              "The services' own metrics (Prometheus, shared/metrics.py): packets and drops, flows, samples and "
              "verdicts, points written and consumer lag, NATS, errors.", prom=True, refresh="15s", time_from="now-1h",
              extra_vars=[templating()["list"][0]])
    sel = 'probe=~"$probe"'
    b.add("stat", "Services healthy", f"sum by (service) (flowtarget_ready{{{sel}}})", w=8, h=5,
          legend="{{service}}", options={"colorMode": "background", "graphMode": "none"})
    b.add("stat", "NATS connected", f"sum by (service) (flowtarget_nats_connected{{{sel}}})", w=8, h=5,
          legend="{{service}}", options={"colorMode": "background", "graphMode": "none"})
    b.add("stat", "Targets down", 'count(up{job=~"capture|classify|store|block"} == 0) or vector(0)', w=8, h=5,
          options={"colorMode": "background", "graphMode": "none"})
    b.add("timeseries", "Packets/s captured", f"sum by (instance) (rate(flowtarget_capture_packets_total{{{sel}}}[1m]))",
          unit="pps", legend="{{instance}}")
    b.add("timeseries", "Drops and bad packets /s",
          f'sum by (__name__) (rate({{__name__=~"flowtarget_capture_.*(drop|bad|unsupported|evicted).*_total",{sel}}}[1m]))',
          legend="{{__name__}}")
    b.add("timeseries", "Active flows", f"sum by (instance) (flowtarget_capture_flows_active{{{sel}}})",
          legend="{{instance}}")
    b.add("timeseries", "Samples sent, verdicts made /s",
          f'sum by (__name__) (rate({{__name__=~"flowtarget_(capture_counters_samples_sent|classify_samples|classify_verdicts|classify_dns)_total",{sel}}}[1m]))',
          legend="{{__name__}}")
    b.add("timeseries", "Points written /s (store, all replicas)",
          f"sum (rate(flowtarget_store_points_written_total{{{sel}}}[1m]))", legend="points/s")
    b.add("timeseries", "Consumer lag (messages not yet delivered to store)",
          f"max (flowtarget_store_consumer_lag{{{sel}}})", legend="lag")
    b.add("timeseries", "Pending verdicts (capture waiting for classify)",
          f"sum by (instance) (flowtarget_capture_counters_pending_verdicts{{{sel}}})", legend="{{instance}}")
    b.add("timeseries", "Blocks and injections /s",
          f'sum by (__name__) (rate({{__name__=~"flowtarget_block_.*_total",{sel}}}[1m]))', legend="{{__name__}}")
    b.add("timeseries", "Errors /s (malformed, handler errors, publish retries, write errors)",
          f'sum by (service, __name__) (rate({{__name__=~"flowtarget_(bus_(malformed|handler_errors|publish_retries)'
          f'|store_(write_errors|retries|malformed_messages)|metrics_stats_errors)_total",{sel}}}[5m]))',
          w=24, legend="{{service}} {{__name__}}")
    b.add("timeseries", "NATS reconnects", f"sum by (service) (increase(flowtarget_bus_reconnects_total{{{sel}}}[5m]))",
          legend="{{service}}")
    b.add("timeseries", "Resident memory", f'sum by (job, instance) (process_resident_memory_bytes{{job=~"capture|classify|store|block"}})',
          unit="bytes", legend="{{job}} {{instance}}")
    b.add("timeseries", "Flows stored per minute (InfluxDB)",
          RANGE + flt("flows", "duration_ms") + '  |> group()\n'
          '  |> aggregateWindow(every: 1m, fn: count, createEmpty: true)\n', w=24, ds=INFLUX,
          description="What reached the database: a flat line while packets arrive means the pipeline is stuck.")
    return b


BOARDS = {"traffic": traffic, "access-log": access_log, "dns": dns, "alerts-blocks": alerts_blocks,
          "pipeline-health": pipeline}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(make().json(), indent=2, sort_keys=False) + "\n"
            for name, make in BOARDS.items()}


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text]
        if stale:
            print("out of date: " + ", ".join(stale) + " (run python deploy/grafana/make_dashboards.py)")
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"wrote {len(files)} dashboards into {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
