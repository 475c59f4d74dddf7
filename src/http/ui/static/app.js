// The KMS console's only script, served from /ui/static/app.js (the
// Content-Security-Policy allows no inline script). Everything works without it; it
// adds a copy button for secrets and a typed confirmation for destructive forms.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  // <button data-copy="ID">: copies the text of element #ID.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source || !navigator.clipboard) {
        return;
      }
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        var label = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 1500);
      });
    });
  });

  // <input data-confirm="TEXT" data-enables="ID">: #ID is enabled only while the
  // input holds exactly TEXT. The server checks the same.
  document.querySelectorAll("input[data-confirm][data-enables]").forEach(function (input) {
    var target = document.getElementById(input.getAttribute("data-enables"));
    if (!target) {
      return;
    }
    var update = function () {
      target.disabled = input.value !== input.getAttribute("data-confirm");
    };
    input.addEventListener("input", update);
    update();
  });
});
