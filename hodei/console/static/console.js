// The console's only script: progressive enhancement of server-rendered pages.
"use strict";

// A part of a page that refreshes itself every two seconds from its data-refresh URL, rendered
// by the server: the job list's rows (the same filters), a running pipeline's stages. It stops
// once what it got says it has ended (an element with data-ended).
function refreshPart(part) {
  const url = part.dataset.refresh;
  const timer = setInterval(async () => {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!response.ok) return;
      part.innerHTML = await response.text();
      if (part.querySelector("[data-ended]")) clearInterval(timer);
    } catch (error) {
      // The server may be restarting: the next round tries again.
    }
  }, 2000);
}

// A followed log keeps its last lines only, as the page first shows them (data-shown): a job
// printing without end grew the page by every line until the browser gave up. ``cut``: lines
// were left out before these.
function keepLast(log, cut) {
  const shown = Number(log.dataset.shown);
  if (!shown || (log.childElementCount <= shown && !cut)) return;
  while (log.childElementCount > shown) {
    const first = log.firstElementChild;
    if (first.nextSibling && first.nextSibling.nodeType === Node.TEXT_NODE) first.nextSibling.remove();
    first.remove();
  }
  if (!document.getElementById("log-cut")) {
    const note = document.createElement("p");
    const command = document.createElement("code");
    note.className = "note";
    note.id = "log-cut";
    command.textContent = `hodei-jobs-cli job logs --id ${log.dataset.job}`;
    note.append(`The last ${shown} lines are shown; `, command, " prints them all.");
    log.after(note);
  }
}

// A running job's log streams in over server-sent events; at the end the page reloads to
// show the final state, exit code and timeline. Lines are put on the page ten times a second,
// together: one layout for each batch, not for each line (a flood of lines, each scrolled to,
// held the browser busy for minutes), and of a batch longer than the log keeps, only its end.
function followLog(log) {
  const events = new EventSource(`${log.dataset.follow}?from=${log.dataset.next}`);
  let arrived = [];
  let dropped = false; // lines that arrived were left out before those in ``arrived``
  const show = () => {
    const shown = Number(log.dataset.shown) || arrived.length;
    const [lines, cut] = [arrived, dropped || arrived.length > shown];
    [arrived, dropped] = [[], false];
    const fragment = document.createDocumentFragment();
    lines.forEach((line, index) => {
      // Another attempt's output begins (hodei.logs.attempt_begins): a marker before it.
      const previous = Number(log.dataset.attempt) || 1;
      const kept = index >= lines.length - shown;
      if (line.attempt && line.attempt !== previous && kept) {
        const marker = document.createElement("span");
        marker.className = "attempt";
        marker.textContent = `[hodei] attempt ${line.attempt}`;
        fragment.append(marker, "\n");
      }
      log.dataset.attempt = line.attempt;
      if (!kept) return;
      const span = document.createElement("span");
      span.className = line.stream;
      span.textContent = line.text;
      fragment.append(span, "\n");
    });
    log.append(fragment);
    keepLast(log, cut);
    log.scrollTop = log.scrollHeight;
  };
  events.onmessage = (message) => {
    if (!arrived.length) setTimeout(show, 100);
    arrived.push(JSON.parse(message.data));
    // A hidden tab's timers may wait a minute: what arrives meanwhile is kept to what shows.
    const shown = Number(log.dataset.shown);
    if (shown && arrived.length > 2 * shown) {
      arrived.splice(0, arrived.length - shown);
      dropped = true;
    }
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
  document.querySelectorAll("[data-refresh]").forEach(refreshPart);
  const log = document.getElementById("log");
  if (log && log.dataset.follow) followLog(log);
});
