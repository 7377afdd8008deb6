// The console's only script: progressive enhancement of server-rendered pages.
"use strict";

// The job list refreshes its rows every two seconds (the same filters, rendered by the server).
function refreshRows(tbody) {
  const url = tbody.dataset.refresh;
  setInterval(async () => {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (response.ok) tbody.innerHTML = await response.text();
    } catch (error) {
      // The server may be restarting: the next round tries again.
    }
  }, 2000);
}

// A running job's log streams in over server-sent events; at the end the page reloads to
// show the final state, exit code and timeline.
function followLog(log) {
  const events = new EventSource(`${log.dataset.follow}?from=${log.dataset.next}`);
  events.onmessage = (message) => {
    const line = JSON.parse(message.data);
    // Another attempt's output begins (hodei.logs.attempt_begins): a marker before it.
    const previous = Number(log.dataset.attempt) || 1;
    if (line.attempt && line.attempt !== previous) {
      const marker = document.createElement("span");
      marker.className = "attempt";
      marker.textContent = `[hodei] attempt ${line.attempt}`;
      log.append(marker, "\n");
    }
    log.dataset.attempt = line.attempt;
    const span = document.createElement("span");
    span.className = line.stream;
    span.textContent = line.text;
    log.append(span, "\n");
    log.scrollTop = log.scrollHeight;
  };
  events.onopen = () => sessionStorage.removeItem("hodei-log-retry");
  events.onerror = () => {
    // A dropped stream would be reopened from its first line: reload instead, 2 s after the
    // first failure and twice as long after each next one (up to a minute), so pages left
    // open on a server out of room for streams (HODEI_MAX_STREAMS) do not reload every 2 s.
    events.close();
    const delay = Math.min(60000, 2 * (Number(sessionStorage.getItem("hodei-log-retry")) || 1000));
    sessionStorage.setItem("hodei-log-retry", String(delay));
    setTimeout(() => window.location.reload(), delay);
  };
  events.addEventListener("end", () => {
    events.close();
    document.getElementById("log-status").textContent = "The job ended; reloading…";
    window.location.reload();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const rows = document.getElementById("job-rows");
  if (rows) refreshRows(rows);
  const log = document.getElementById("log");
  if (log && log.dataset.follow) followLog(log);
});
