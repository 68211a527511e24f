// "Greet as" on each sign-up card: filled in from the customer's name as staff type it, by the server's rule
// (dangol_protocol.greeting_name: a Hangul/CJK name whole, "Dr. Lee" with its title, else the first word; its titles
// and scripts come in #waiting's data-greet-rule, so the two cannot drift apart), until staff change it themselves.
// The line under it says what the door will say. Left empty, the server greets by the same rule. The listeners sit on
// #waiting, so the cards _staff.js swaps in keep working.
(function () {
  "use strict";
  var root = document.getElementById("waiting");
  if (!root) return;
  var rule = JSON.parse(root.dataset.greetRule || "{}");
  var titles = rule.titles || [], max = rule.max || 40;
  var familyFirst = new RegExp("[" + (rule.family_first || "") + "]");

  function greeting(name) {
    var words = name.trim().split(/\s+/).filter(Boolean), g;
    if (!words.length) return "";
    if (familyFirst.test(name)) g = words.join(" ");
    else if (words.length > 1 && titles.indexOf(words[0].replace(/\.+$/, "").toLowerCase()) >= 0) {
      g = words[0] + " " + words[words.length - 1];
    } else g = words[0];
    return Array.from(g).slice(0, max).join("");
  }

  function parts(el) {
    var form = el.closest("form.activate");
    if (!form) return null;
    return { name: form.querySelector("input[name=display_name]"), greet: form.querySelector("input[name=greet_as]"),
             preview: form.querySelector(".greet-preview") };
  }

  function show(p) {
    var said = p.greet.value.trim().split(/\s+/).join(" ") || greeting(p.name.value) || "…";
    p.preview.textContent = "The door will say: Welcome back, " + said;
  }

  root.addEventListener("input", function (e) {
    var p = parts(e.target);
    if (!p || !p.name || !p.greet || !p.preview) return;
    if (e.target === p.name && (p.greet.value === "" || p.greet.value === p.greet.dataset.auto)) {
      p.greet.value = p.greet.dataset.auto = greeting(p.name.value);   // still the rule's: follow the name
    }
    show(p);
  });

  // a card shown again after an error: a greeting equal to the rule's still follows the name
  Array.prototype.forEach.call(root.querySelectorAll("form.activate"), function (form) {
    var p = parts(form);
    if (p && p.name && p.greet && p.greet.value && p.greet.value === greeting(p.name.value)) {
      p.greet.dataset.auto = p.greet.value;
    }
  });
})();
