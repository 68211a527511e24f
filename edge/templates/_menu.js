// Live updates for the menu page: server-sent events from /events carry the rendered screen.
// EventSource reconnects by itself; a watchdog also replaces a stream that went silent or closed.
// The page never lies (issue 11): a welcome goes back to the house menu on the page's own timer
// (data-welcome-max seconds, also when the daemon never takes it down), and when the daemon is
// unreachable for OFFLINE_MS the page shows the last house menu it saw with a visible "offline" banner.
(function () {
  "use strict";
  var stage = document.getElementById("stage");
  var key = stage.dataset.key, app = stage.dataset.app, es = null, heard = Date.now();
  var OFFLINE_MS = 3000, SILENT_MS = 20000;  // pings come every 15 s
  var welcomeMax = (parseFloat(stage.dataset.welcomeMax) || 45) * 1000;
  var house = null, welcomeTimer = null, offlineTimer = null;
  try { house = window.localStorage.getItem("dangol-house"); } catch (err) { house = null; }

  function fits(sec) {
    return sec.getBoundingClientRect().height <= window.innerHeight + 1 && sec.scrollWidth <= window.innerWidth + 1;
  }

  function remember() {  // keep the newest house menu for when the daemon is gone
    if (document.body.dataset.screen !== "house") return;
    house = stage.innerHTML;
    try { window.localStorage.setItem("dangol-house", house); } catch (err) { /* private mode: memory only */ }
  }

  function showHouse(why) {
    clearTimeout(welcomeTimer);
    if (document.body.dataset.screen === "house") return;
    document.body.dataset.screen = "house";
    document.body.dataset.local = why;
    stage.innerHTML = house || '<section class="screen house" data-screen="house"><div class="placeholder">' +
      "<h2>Come on in!</h2><p>Ask us what's fresh today.</p></div></section>";
    clock();
    fit();
  }

  function armWelcome() {
    clearTimeout(welcomeTimer);
    if (document.body.dataset.screen === "welcome") {
      welcomeTimer = setTimeout(function () { showHouse("timeout"); }, welcomeMax);
    }
  }

  function online() {
    clearTimeout(offlineTimer);
    offlineTimer = null;
    document.body.dataset.offline = "0";
  }

  function offline() {
    document.body.dataset.offline = "1";
    showHouse("offline");
  }

  function suspect() {  // the stream broke: offline unless it is back within OFFLINE_MS
    if (offlineTimer === null && document.body.dataset.offline !== "1") offlineTimer = setTimeout(offline, OFFLINE_MS);
  }

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

  // The café's time, HH:MM: in the catalogue's zone (data-zone, an IANA name) whatever the box's zone, with
  // Chromium's own time zone data (no network; daylight saving included); if this browser does not know the
  // zone, UTC plus the zone's offset the server sent with the screen (data-offset, minutes); with no zone, the
  // browser's local time, which is the box's.
  function two(n) { return ("0" + n).slice(-2); }

  function cafeTime(t) {
    var zone = stage.dataset.zone, offset = parseInt(stage.dataset.offset, 10);
    if (zone) {
      try {
        var parts = new Intl.DateTimeFormat("en-GB", { timeZone: zone, hour: "2-digit", minute: "2-digit",
                                                        hourCycle: "h23" }).formatToParts(t), hm = {};
        parts.forEach(function (p) { hm[p.type] = p.value; });
        if (hm.hour && hm.minute) return two(parseInt(hm.hour, 10) % 24) + ":" + hm.minute;
      } catch (err) { /* RangeError: a zone this browser does not know */ }
      if (!isNaN(offset)) {
        var z = new Date(t.getTime() + offset * 60000);
        return two(z.getUTCHours()) + ":" + two(z.getUTCMinutes());
      }
    }
    return two(t.getHours()) + ":" + two(t.getMinutes());
  }

  function clock() {
    var el = stage.querySelector(".clock");
    if (el) el.textContent = cafeTime(new Date());
  }

  function apply(msg) {
    if (msg.app && app && msg.app !== app) { location.reload(); return; }  // the server was replaced
    var k = msg.version + ":" + (msg.catalogue_revision || "");  // the catalogue's content, not only its version
    if (k === key) return;
    key = k;
    stage.dataset.key = k;
    document.body.dataset.screen = msg.screen;
    document.body.dataset.local = "";
    if (msg.welcome_s) welcomeMax = msg.welcome_s * 1000;
    if ("clock_zone" in msg) {  // the catalogue (and its zone) may have changed
      stage.dataset.zone = msg.clock_zone || "";
      stage.dataset.offset = msg.clock_offset === null || msg.clock_offset === undefined ? "" : msg.clock_offset;
    }
    stage.innerHTML = msg.html;
    clock();
    fit();
    remember();
    armWelcome();
    window.dispatchEvent(new CustomEvent("dangol:screen", { detail: msg }));
  }

  function connect() {
    if (es) es.close();
    heard = Date.now();
    es = new EventSource("/events");
    es.onopen = function () { document.body.dataset.live = "1"; heard = Date.now(); online(); };
    es.onmessage = function (e) {
      heard = Date.now();
      document.body.dataset.live = "1";
      online();
      try { apply(JSON.parse(e.data)); } catch (err) { console.error("bad screen update", err); }
    };
    es.addEventListener("ping", function () { heard = Date.now(); online(); });
    es.onerror = function () {
      document.body.dataset.live = "0";
      suspect();
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
  }

  setInterval(function () { if (Date.now() - heard > SILENT_MS) { offline(); connect(); } }, 2000);
  setInterval(clock, 10000);
  window.addEventListener("resize", fit);
  clock();
  fit();
  remember();
  armWelcome();
  connect();
})();
