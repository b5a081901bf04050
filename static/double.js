// The double's page: its request log, live (polling its control routes), and its faults.
// Every value is written as text (textContent), never as HTML.
"use strict";

(function () {
  const LIMIT = 100; // requests shown, the newest
  const POLL_MS = 500;
  const $ = (id) => document.getElementById(id);

  let shown = []; // the records on the page, oldest first, as JSON text
  let lastText = null; // the last answer of the requests route, unchanged: nothing to do
  let lastFaults = null;

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function showMessage(text, ok = false) {
    $("message").textContent = text;
    $("message").hidden = !text;
    $("message").classList.toggle("ok", ok);
  }

  function describeError(status, body) {
    let text = `${status} ${body && body.error ? body.error : "Error"}`;
    if (body && body.message) text += `: ${body.message}`;
    return text;
  }

  async function call(method, path, body) {
    const options = { method, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      options.headers = { "Content-Type": "application/json" };
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const text = await response.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch (_) {
      json = null;
    }
    return { status: response.status, text, json };
  }

  // --- The request log ------------------------------------------------------------------

  function pretty(value) {
    if (value === null || value === undefined) return "(none)";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function shellQuote(text) {
    return `'${text.replace(/'/g, "'\\''")}'`;
  }

  function curlCommand(record) {
    const path = record.path.split("/").map(encodeURIComponent).join("/");
    const url = location.origin + path + (record.query ? `?${record.query}` : "");
    // A method is any HTTP token, and a token may hold ` $ ' | &: quoted unless plain.
    const plain = /^[A-Za-z0-9_-]+$/.test(record.method);
    const method = plain ? record.method : shellQuote(record.method);
    const parts = ["curl", "-sS", "-X", method, shellQuote(url)];
    if (record.path.startsWith("/api/")) {
      // The key is never recorded: the command reads yours from $API_KEY.
      parts.push("-H", '"Authorization: Bearer $API_KEY"');
    }
    if (record.body !== null && record.body !== undefined) {
      const data = typeof record.body === "string" ? record.body : JSON.stringify(record.body);
      const type = header(record, "content-type") || "application/json";
      parts.push("-H", shellQuote(`Content-Type: ${type}`));
      parts.push("--data-raw", shellQuote(data));
    }
    let command = parts.join(" ");
    if (record.body_truncated) command += "  # the body was cut short when recorded";
    return command;
  }

  function milliseconds(ms) {
    return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }

  function header(record, name) {
    for (const [key, value] of Object.entries(record.headers || {})) {
      if (key.toLowerCase() === name) return value;
    }
    return null;
  }

  function statusClass(status) {
    return status === null ? "status status-none" : `status status-${Math.floor(status / 100)}xx`;
  }

  function block(title, text, note) {
    const part = el("div", null, "part");
    part.appendChild(el("h4", title));
    if (note) part.appendChild(el("p", note, "note"));
    part.appendChild(el("pre", text));
    return part;
  }

  function requestItem(record) {
    const item = el("li", null, "request");
    const details = el("details");
    const summary = el("summary");
    summary.appendChild(el("span", record.method, "method"));
    const target = record.query ? `${record.path}?${record.query}` : record.path;
    summary.appendChild(el("span", target, "path"));
    summary.appendChild(
      el("span", record.status === null ? "no answer" : record.status, statusClass(record.status)),
    );
    const duration = typeof record.duration_ms === "number" ? milliseconds(record.duration_ms) : "";
    summary.appendChild(el("span", duration, "duration"));
    summary.appendChild(el("span", record.fault ? `fault ${record.fault}` : "", "fault"));
    details.appendChild(summary);

    const cut = "cut short at the double's recording limit";
    details.appendChild(block("Body sent", pretty(record.body), record.body_truncated && cut));
    details.appendChild(block("Answer", pretty(record.response), record.response_truncated && cut));
    const curl = block("curl", curlCommand(record));
    curl.querySelector("pre").classList.add("curl");
    const copy = el("button", "Copy as curl");
    copy.type = "button";
    copy.addEventListener("click", () => copyText(copy, curl.querySelector("pre")));
    curl.appendChild(copy);
    details.appendChild(curl);
    item.appendChild(details);
    return item;
  }

  async function copyText(button, pre) {
    try {
      await navigator.clipboard.writeText(pre.textContent);
      button.textContent = "Copied";
    } catch (_) {
      // No clipboard here (an http page on another host): select it for the person.
      const range = document.createRange();
      range.selectNodeContents(pre);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = "Selected: copy it";
    }
    setTimeout(() => {
      button.textContent = "Copy as curl";
    }, 1500);
  }

  // How many of `records` (oldest first) the page shows already: the longest run at their
  // start that ends the list on the page. Items stay in place (and open) as new ones come.
  function overlap(records) {
    for (let m = Math.min(shown.length, records.length); m > 0; m -= 1) {
      let same = true;
      for (let i = 0; i < m && same; i += 1) {
        same = records[i] === shown[shown.length - m + i];
      }
      if (same) return m;
    }
    return 0;
  }

  function drawRequests(records) {
    const texts = records.map((record) => JSON.stringify(record));
    const list = $("requests");
    const kept = overlap(texts);
    if (kept === 0) list.replaceChildren();
    for (let i = kept; i < records.length; i += 1) list.prepend(requestItem(records[i]));
    while (list.children.length > records.length) list.lastElementChild.remove();
    shown = texts;
    $("no-requests").hidden = records.length > 0;
    $("request-count").textContent = records.length ? `(${records.length})` : "";
  }

  // --- Faults -----------------------------------------------------------------------------

  function faultDoes(fault) {
    const does = [];
    if (fault.delay_ms) does.push(`waits ${fault.delay_ms} ms`);
    if (fault.status !== null) does.push(`answers ${fault.status}`);
    if (fault.action) does.push(fault.action === "drop" ? "drops" : "drops after the write");
    const headers = Object.entries(fault.headers || {});
    if (headers.length) does.push(`with ${headers.map(([k, v]) => `${k}: ${v}`).join(", ")}`);
    return does.join(", ") || "nothing";
  }

  function drawFaults(faults) {
    const rows = document.createDocumentFragment();
    for (const fault of faults) {
      const row = el("tr");
      row.appendChild(el("td", fault.id, "mono"));
      const matches = `${fault.method || "any method"} ${fault.path || "any /api/v1/ path"}`;
      row.appendChild(el("td", matches, "mono"));
      row.appendChild(el("td", faultDoes(fault)));
      const left = fault.remaining === null ? "every time" : `${fault.remaining} of ${fault.times}`;
      row.appendChild(el("td", left));
      rows.appendChild(row);
    }
    $("faults").tBodies[0].replaceChildren(rows);
    $("no-faults").hidden = faults.length > 0;
    $("clear-faults").disabled = faults.length === 0;
  }

  function fieldValue(key, raw) {
    if (["status", "delay_ms", "times"].includes(key) && /^-?\d+$/.test(raw)) return Number(raw);
    if (key === "times" && /^(every|null)$/i.test(raw)) return null;
    if (key === "headers") {
      try {
        return JSON.parse(raw);
      } catch (_) {
        return raw; // the double says what is wrong with it
      }
    }
    return raw;
  }

  function showFaultErrors(details) {
    const form = $("add-fault");
    const unplaced = [];
    for (const input of form.querySelectorAll("[data-key]")) {
      const errors = (details && details[input.dataset.key]) || [];
      const node = input.parentElement.querySelector(".field-error");
      node.textContent = errors.join(", ");
      node.hidden = errors.length === 0;
      input.setAttribute("aria-invalid", errors.length ? "true" : "false");
    }
    for (const [key, errors] of Object.entries(details || {})) {
      if (!form.querySelector(`[data-key="${CSS.escape(key)}"]`)) {
        unplaced.push(`${key}: ${errors.join(", ")}`);
      }
    }
    return unplaced;
  }

  async function addFault(event) {
    event.preventDefault();
    const fault = {};
    for (const input of $("add-fault").querySelectorAll("[data-key]")) {
      const raw = input.value.trim();
      if (raw !== "") fault[input.dataset.key] = fieldValue(input.dataset.key, raw);
    }
    const answer = await guarded(() => call("POST", "faults", { fault }));
    if (!answer) return;
    if (answer.status === 201) {
      showFaultErrors(null);
      showMessage("");
      $("add-fault").reset();
    } else if (answer.status === 422 && answer.json && answer.json.error_details) {
      const unplaced = showFaultErrors(answer.json.error_details);
      showMessage(`The fault was refused: ${[describeError(422, answer.json), ...unplaced].join("; ")}`);
    } else {
      showMessage(`The fault was refused: ${describeError(answer.status, answer.json)}`);
    }
    await refresh();
  }

  async function command(method, path, done) {
    const answer = await guarded(() => call(method, path));
    if (answer && answer.status !== 200) showMessage(describeError(answer.status, answer.json));
    else if (answer) showMessage(done, true);
    await refresh();
  }

  // --- Polling ----------------------------------------------------------------------------

  async function guarded(action) {
    try {
      return await action();
    } catch (_) {
      $("live-state").textContent = "The double does not answer.";
      return null;
    }
  }

  async function refresh() {
    const [requests, faults] = await Promise.all([
      guarded(() => call("GET", `requests?limit=${LIMIT}`)),
      guarded(() => call("GET", "faults")),
    ]);
    if (!requests || !faults) return;
    if (requests.status === 200 && requests.text !== lastText) {
      const records = requests.json && requests.json.requests;
      if (!Array.isArray(records)) {
        showMessage("The request log answered in a shape this page does not read.");
        return;
      }
      lastText = requests.text;
      drawRequests(records);
    }
    if (faults.status === 200 && faults.text !== lastFaults) {
      lastFaults = faults.text;
      drawFaults(faults.json.faults);
    }
    $("live-state").textContent = `Live: updated ${new Date().toLocaleTimeString()}`;
  }

  async function poll() {
    await refresh();
    setTimeout(poll, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("add-fault").addEventListener("submit", addFault);
    $("clear-faults").addEventListener("click", () =>
      command("DELETE", "faults", "The faults are cleared."),
    );
    $("reset").addEventListener("click", () =>
      command("POST", "reset", "The double is reset: no customer, request or fault."),
    );
    poll();
  });
})();
