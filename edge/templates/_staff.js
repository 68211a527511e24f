// The sign-up card follows the door's sign-up by itself while one is captured or was just asked for
// (data-watch): the snapshot count updates every second, and once the capture has ended the page reloads to
// show the new sign-up or why it did not work — unless staff are typing in a form, which a reload would wipe;
// then the card asks them to press Refresh.
(function () {
  "use strict";
  var card = document.getElementById("signup");
  if (!card || !card.dataset.watch) return;
  var typing = false, seenCapture = false, started = Date.now();
  document.addEventListener("input", function () { typing = true; });
  function tick() {
    fetch(card.dataset.progress, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (p) {
        if (p.capturing) {
          seenCapture = true;
          var n = document.getElementById("signup-samples"), w = document.getElementById("signup-wanted");
          if (n && w) { n.textContent = p.samples; w.textContent = p.wanted; } else { return reload(); }
        } else if (seenCapture || Date.now() - started > 15000 || document.getElementById("signup-samples")) {
          return reload();  // the capture ended (or never began): show the outcome
        }
        setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 3000); });  // the device is restarting or signed out: try again
  }
  function reload() {
    if (typing || (document.activeElement && /INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName))) {
      var note = document.createElement("p");
      note.className = "outcome";
      note.id = "signup-refresh";
      note.textContent = "The sign-up at the door has moved on — press Refresh to see it.";
      card.insertBefore(note, card.firstChild);
      return;
    }
    window.location.replace(window.location.pathname);
  }
  setTimeout(tick, 1000);
})();
