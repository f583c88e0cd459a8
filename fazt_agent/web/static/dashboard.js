// fazt-agent dashboard: follow the event log (GET live, server-sent events) and keep the overview
// current without a reload. The page reads whole without this script.
(function () {
  "use strict";
  var status = document.getElementById("live");
  if (!status || !window.EventSource || !window.fetch || !window.DOMParser) {
    return;
  }
  var reloadTimer = null;
  var source = new EventSource(status.getAttribute("data-live"));

  function say(text) {
    status.textContent = text;
  }

  function updateRows(rows) {
    var known = {};
    document.querySelectorAll("tr[data-key]").forEach(function (tr) {
      known[tr.getAttribute("data-key")] = tr;
    });
    var missing = false;
    rows.forEach(function (row) {
      var tr = known[row.key];
      if (!tr) {
        missing = true;
        return;
      }
      var badge = tr.querySelector(".status .badge");
      if (badge.textContent !== row.status) {
        badge.textContent = row.status;
        badge.className = "badge " + row.status;
        tr.classList.add("changed");
      }
      tr.querySelector(".value .figure").textContent = row.value;
      tr.querySelector(".value .message").textContent = row.message;
      tr.querySelector(".measured").textContent = row.measured;
      delete known[row.key];
    });
    if (missing || Object.keys(known).length) {
      scheduleReload();   // a check came or went: the whole page knows the new rows
    }
  }

  function updateBeat(beat) {
    var p = document.getElementById("last-beat");
    if (!p || !beat) {
      return;
    }
    var link = p.querySelector("a");
    var badge = p.querySelector(".badge");
    if (link && badge) {
      link.textContent = "#" + beat.id;
      badge.textContent = beat.status;
      badge.className = "badge " + beat.status;
      badge.nextSibling.textContent = " " + beat.when + ", took " + beat.duration;
    } else {
      scheduleReload();
    }
  }

  // Replace the sections an event changed with the server's current rendering of this page; a
  // section holding the keyboard focus is left alone (the next change brings it up to date).
  function reloadSections() {
    reloadTimer = null;
    fetch(window.location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (response) {
        if (!response.ok || response.redirected) {
          throw new Error("status " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-section][id], table.checks").forEach(function (old) {
          var selector = old.id ? "#" + old.id : "table.checks";
          var next = fresh.querySelector(selector);
          if (next && !old.contains(document.activeElement)) {
            old.innerHTML = next.innerHTML;
          }
        });
      })
      .catch(function () {
        say("Live updates could not refresh the page: reload it.");
      });
  }

  function scheduleReload() {
    if (reloadTimer === null) {
      reloadTimer = window.setTimeout(reloadSections, 300);
    }
  }

  source.addEventListener("open", function () {
    say("Live: this page follows the agent's events.");
  });
  source.addEventListener("checks", function (e) {
    var data = JSON.parse(e.data);
    updateRows(data.rows);
    updateBeat(data.beat);
  });
  source.addEventListener("change", function () {
    scheduleReload();
  });
  source.addEventListener("ended", function () {
    source.close();
    say("Live updates stopped: the session ended. Log in again.");
  });
  source.addEventListener("error", function () {
    say(source.readyState === EventSource.CLOSED
      ? "Live updates stopped: reload the page."
      : "Live updates interrupted: reconnecting...");
  });
}());
