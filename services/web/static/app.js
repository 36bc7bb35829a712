// FlowTarget console: the live overview. Every value goes into the page with
// textContent (never innerHTML): addresses and protocol names come from the wire.
"use strict";
(function () {
  function text(id, v) { var e = document.getElementById(id); if (e) { e.textContent = String(v); } }
  function fmt(n) { return Number(n).toLocaleString("en-US"); }
  function fill(tableId, rows) {
    var t = document.getElementById(tableId);
    if (!t) { return; }
    var body = document.createElement("tbody");
    rows.forEach(function (cells) {
      var tr = document.createElement("tr");
      cells.forEach(function (c) {
        var td = document.createElement("td");
        if (c && typeof c === "object") { td.textContent = c.text; if (c.cls) { td.className = c.cls; } }
        else { td.textContent = String(c); }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    t.replaceChild(body, t.tBodies[0]);
  }
  function update(s) {
    text("pps", fmt(s.packets_per_s));
    text("fps", fmt(s.flows_per_s));
    text("flows-total", fmt(s.flows_total));
    text("packets-total", fmt(s.packets_total));
    text("updated", new Date(s.time * 1000).toISOString().substring(11, 19) + " UTC (#" + s.seq + ")");
    fill("talkers", s.top_talkers.map(function (r) { return [r[0], {text: fmt(r[1]), cls: "n"}]; }));
    fill("protocols", s.top_protocols.map(function (r) { return [r[0], {text: fmt(r[1]), cls: "n"}]; }));
    var names = Object.keys(s.health).sort();
    if (names.length) {
      fill("health", names.map(function (n) {
        var h = s.health[n];
        return [n, {text: h.status, cls: "status-" + h.status}, h.detail || ""];
      }));
    }
  }
  function start() {
    if (!document.getElementById("pps") || !window.EventSource) { return; }
    var es = new EventSource("/events");
    es.onopen = function () { text("live-status", "live"); };
    es.onerror = function () { text("live-status", "reconnecting…"); };
    es.onmessage = function (ev) {
      try { update(JSON.parse(ev.data)); } catch (e) { text("live-status", "bad update"); }
    };
  }
  document.addEventListener("DOMContentLoaded", start);
})();
