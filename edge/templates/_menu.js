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

  function clock() {
    var t = new Date(), el = stage.querySelector(".clock");
    if (el) el.textContent = ("0" + t.getHours()).slice(-2) + ":" + ("0" + t.getMinutes()).slice(-2);
  }

  function apply(msg) {
    if (msg.app && app && msg.app !== app) { location.reload(); return; }  // the server was replaced
    var k = msg.version + ":" + msg.catalogue_version;
    if (k === key) return;
    key = k;
    stage.dataset.key = k;
    document.body.dataset.screen = msg.screen;
    document.body.dataset.local = "";
    if (msg.welcome_s) welcomeMax = msg.welcome_s * 1000;
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
