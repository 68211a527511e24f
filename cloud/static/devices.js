// Live device presence and broker state (issue 11, build 5): polls /stores/devices/status.json every few
// seconds and updates every [data-presence="<device id>"] and [data-broker] element on the page.
(function () {
  "use strict";
  var root = document.querySelector("[data-status-url]");
  if (!root) return;
  var url = root.getAttribute("data-status-url");
  var every = parseFloat(root.getAttribute("data-status-every") || "3") * 1000;
  function set(el, cls, text, title) {
    el.setAttribute("data-state", cls);
    var dot = el.querySelector(".dot");
    if (dot) dot.className = "dot " + cls;
    var label = el.querySelector(".label");
    if (label) label.textContent = text;
    if (title !== undefined) el.title = title;
  }
  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (data) {
        document.querySelectorAll("[data-presence]").forEach(function (el) {
          var p = data.devices[el.getAttribute("data-presence")];
          if (!p) return;
          set(el, p.state, p.label + (p.ago ? " · last seen " + p.ago : ""), p.last_seen || "");
        });
        document.querySelectorAll("[data-broker]").forEach(function (el) {
          var b = data.broker;
          el.className = "pill " + (b.state === "ok" ? "ok" : b.state === "down" ? "bad" : "warn");
          el.setAttribute("data-state", b.state);
          el.textContent = b.state === "ok" ? "connected" : b.state === "down" ? "unreachable" : "not configured";
          el.title = b.detail;
        });
      })
      .catch(function () { /* the next poll tries again */ })
      .then(function () { setTimeout(poll, every); });
  }
  setTimeout(poll, every);
})();
