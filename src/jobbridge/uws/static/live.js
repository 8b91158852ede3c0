// Keeps a job's page up to date: the service sends the job's live part as HTML on each
// phase change (server-sent events); the page works without this script, by reloading.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var announce = document.getElementById("announce");
  if (!live || !live.dataset.events || !window.EventSource) {
    return;
  }
  var source = new EventSource(live.dataset.events);
  var last = null;
  source.addEventListener("job", function (event) {
    var data = JSON.parse(event.data);
    live.innerHTML = data.html;
    if (announce && last !== null && data.phase !== last) {
      announce.textContent = "The job is now " + data.phase + ".";
    }
    last = data.phase;
    if (data.final) {
      source.close();
    }
  });
  source.addEventListener("gone", function () {
    source.close();
    live.textContent = "This job no longer exists.";
    if (announce) {
      announce.textContent = "This job no longer exists.";
    }
  });
})();
