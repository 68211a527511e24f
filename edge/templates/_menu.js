// Live updates for the menu page: server-sent events from /events carry the rendered screen.
// EventSource reconnects by itself; a watchdog also replaces a stream that went silent or closed.
(function () {
  "use strict";
  var stage = document.getElementById("stage");
  var key = stage.dataset.key, app = stage.dataset.app, es = null, heard = Date.now();

  function fits(sec) { return sec.getBoundingClientRect().height <= window.innerHeight + 1; }

  // Fit the screen to the display: the largest type that fits (up to 1.3x, so a short menu or a
  // welcome fills the screen), then smaller type without descriptions for a very long menu.
  function fit() {
    var sec = stage.firstElementChild;
    stage.style.fontSize = "1rem";
    if (!sec) return;
    var plans = [[false, 1.3, 0.84], [true, 1.0, 0.5]];
    for (var i = 0; i < plans.length; i++) {
      sec.classList.toggle("compact", plans[i][0]);
      for (var s = plans[i][1]; s >= plans[i][2] - 1e-9; s -= 0.04) {
        stage.style.fontSize = s.toFixed(2) + "rem";
        if (fits(sec)) return;
      }
    }
  }

  function clock() {
    var t = new Date(), el = stage.querySelector(".clock");
    if (el) el.textContent = ("0" + t.getHours()).slice(-2) + ":" + ("0" + t.getMinutes()).slice(-2);
  }

  function apply(msg) {
    if (msg.app && app && msg.app !== app) { location.reload(); return; }  // the server was replaced
    var k = msg.version + ":" + msg.catalogue_version;
    document.body.dataset.screen = msg.screen;
    if (k === key) return;
    key = k;
    stage.dataset.key = k;
    stage.innerHTML = msg.html;
    clock();
    fit();
    window.dispatchEvent(new CustomEvent("dangol:screen", { detail: msg }));
  }

  function connect() {
    if (es) es.close();
    heard = Date.now();
    es = new EventSource("/events");
    es.onopen = function () { document.body.dataset.live = "1"; heard = Date.now(); };
    es.onmessage = function (e) {
      heard = Date.now();
      document.body.dataset.live = "1";
      try { apply(JSON.parse(e.data)); } catch (err) { console.error("bad screen update", err); }
    };
    es.addEventListener("ping", function () { heard = Date.now(); });
    es.onerror = function () {
      document.body.dataset.live = "0";
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
  }

  setInterval(function () { if (Date.now() - heard > 40000) connect(); }, 5000);
  setInterval(clock, 10000);
  window.addEventListener("resize", fit);
  clock();
  fit();
  connect();
})();
