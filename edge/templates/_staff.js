// The sign-up card follows the door's sign-up by itself while one is captured or was just asked for
// (data-watch on #signup): the snapshot count updates every second, and once the capture has ended the
// "Waiting for sign-up" section is replaced by the server's current one (the new sign-up, or why it did not
// work) — in place, no reload, so the page's messages stay. Not while staff are typing in a form there, which
// the replacement would wipe: then the card asks them to press Refresh.
(function () {
  "use strict";
  var started = Date.now(), seenCapture = false, typing = false;
  var card = document.getElementById("signup");
  if (!card || !card.dataset.watch) return;
  var url = card.dataset.progress;
  document.addEventListener("input", function (e) {
    if (e.target.closest && e.target.closest("#waiting")) typing = true;
  });
  function tick() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (p) {
        var n = document.getElementById("signup-samples"), w = document.getElementById("signup-wanted");
        if (p.capturing) {
          seenCapture = true;
          if (n && w) { n.textContent = p.samples; w.textContent = p.wanted; setTimeout(tick, 1000); return; }
          return refresh();  // the card still offers "Start": show the capture
        }
        // ended (also at once: refused while the camera does not work), or never began
        if (seenCapture || n || p.ended || Date.now() - started > 15000) return refresh();
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 3000); });  // the device is restarting or signed out: try again
  }
  function refresh() {
    if (typing) {
      var c = document.getElementById("signup");
      if (c && !document.getElementById("signup-refresh")) {
        var note = document.createElement("p");
        note.className = "outcome";
        note.id = "signup-refresh";
        note.textContent = "The sign-up at the door has moved on — press Refresh to see it.";
        c.insertBefore(note, c.firstChild);
      }
      return;
    }
    fetch(window.location.pathname, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("waiting");
        var here = document.getElementById("waiting");
        if (!fresh || !here) return;
        here.innerHTML = fresh.innerHTML;
        var c = document.getElementById("signup");
        if (c && c.dataset.watch) { seenCapture = false; started = Date.now(); setTimeout(tick, 1000); }
      })
      .catch(function () { setTimeout(refresh, 3000); });
  }
  setTimeout(tick, 1000);
})();
