// The KMS console's only script, served from /ui/static/app.js (the
// Content-Security-Policy allows no inline script). Everything works without it; it
// adds a copy button for secrets, a typed confirmation for destructive forms, and
// the live audit view's new rows.
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

  // <tbody data-live="URL">: audit events from the server-sent events at URL, added
  // on top as they come. Every field is set with textContent, never as HTML.
  var live = document.querySelector("tbody[data-live]");
  if (live && window.EventSource) {
    var status = document.getElementById("live-status");
    var say = function (text) {
      if (status) {
        status.textContent = text;
      }
    };
    var badges = { success: "good", failure: "bad" };
    var cell = function (row, text, wrap) {
      var td = document.createElement("td");
      var inner = td;
      if (wrap) {
        inner = document.createElement(wrap.tag);
        if (wrap.className) {
          inner.className = wrap.className;
        }
        td.appendChild(inner);
      }
      inner.textContent = String(text);
      row.appendChild(td);
    };
    var source = new EventSource(live.getAttribute("data-live"));
    source.addEventListener("open", function () {
      say("Live: new events appear at the top.");
    });
    source.addEventListener("audit", function (message) {
      var e;
      try {
        e = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      var id = String(e.id);
      if (live.querySelector("tr[data-id='" + CSS.escape(id) + "']")) {
        return;
      }
      var row = document.createElement("tr");
      row.setAttribute("data-testid", "audit-row");
      row.setAttribute("data-id", id);
      row.className = "fresh";
      cell(row, e.at);
      cell(row, e.actor);
      cell(row, e.action, { tag: "code" });
      cell(row, e.target);
      cell(row, e.outcome, { tag: "span", className: "badge " + (badges[e.outcome] || "warn") });
      cell(row, e.client_addr);
      cell(row, e.request_id, { tag: "code" });
      cell(row, e.count);
      live.insertBefore(row, live.firstChild);
      // A page left open keeps a bounded table.
      while (live.rows.length > 1000) {
        live.deleteRow(-1);
      }
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused on reconnecting: the session ended or lost the admin role.
        say("Live updates stopped (signed out, idle, or no longer an admin). Reload the page.");
      } else {
        say("Reconnecting…");
      }
    });
  }
});
