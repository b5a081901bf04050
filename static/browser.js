// The customer browser: read-only, over the JSON API, with the key the person typed.
// The key lives in this tab's sessionStorage only, and travels only in the
// Authorization header. Every value is written as text (textContent), never as HTML.
"use strict";

(function () {
  const KEY = "customers.api_key";
  const PER_PAGE = 50;
  const COLUMNS = ["Name", "customer_id", "Email", "Country", "Created (UTC)"];
  const $ = (id) => document.getElementById(id);

  const state = { page: 1, search: "", countries: [], customers: [], opener: null };

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function showMessage(text) {
    $("message").textContent = text;
    $("message").hidden = !text;
  }

  function describeError(status, body) {
    let text = `${status} ${body && body.error ? body.error : "Error"}`;
    if (body && body.message) text += `: ${body.message}`;
    return text;
  }

  function showFieldErrors(details) {
    for (const [field, id] of [["search_term", "search-term"], ["countries", "countries"]]) {
      const errors = (details && details[field]) || [];
      const node = $(`${id}-error`);
      node.textContent = errors.join(", ");
      node.hidden = errors.length === 0;
      $(id).setAttribute("aria-invalid", errors.length ? "true" : "false");
    }
  }

  function signedIn(on) {
    $("sign-in-panel").hidden = on;
    $("customers-panel").hidden = !on;
    $("sign-out").hidden = !on;
    if (!on) $("customer-panel").hidden = true;
  }

  function listUrl() {
    const query = new URLSearchParams({ page: String(state.page), per_page: String(PER_PAGE) });
    if (state.search) query.append("search_term", state.search);
    for (const country of state.countries) query.append("countries[]", country);
    return `api/v1/customers?${query}`;
  }

  // One call of the API with the key; resolves to {status, body} (body null if not JSON).
  async function call(url, key) {
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { status: response.status, body };
  }

  // The list is busy from the request to its answer shown (aria-busy, for screen readers).
  async function load(key) {
    const panel = $("customers-panel");
    panel.setAttribute("aria-busy", "true");
    try {
      return await fetchAndShow(key);
    } finally {
      panel.setAttribute("aria-busy", "false");
    }
  }

  async function fetchAndShow(key) {
    performance.clearMarks();
    performance.clearMeasures();
    performance.mark("customers-request");
    let answer;
    try {
      answer = await call(listUrl(), key);
    } catch (_) {
      showMessage("The service could not be reached.");
      return false;
    }
    const { status, body } = answer;
    if (status === 401) {
      sessionStorage.removeItem(KEY);
      signedIn(false);
      showMessage(`The key was refused: ${describeError(status, body)}`);
      $("api-key").focus();
      return false;
    }
    if (status === 422 && body && body.error_details) {
      showFieldErrors(body.error_details);
      showMessage(describeError(status, body));
      return false;
    }
    if (status !== 200 || !body) {
      showMessage(`The list could not be read: ${describeError(status, body)}`);
      return false;
    }
    showFieldErrors(null);
    showMessage("");
    signedIn(true);
    draw(body.customers, body.meta);
    // From the request to the frame that shows the page: bench/pages.py reads this.
    requestAnimationFrame(() =>
      setTimeout(() => {
        performance.mark("customers-drawn");
        performance.measure("customers-page", "customers-request", "customers-drawn");
      }, 0),
    );
    return true;
  }

  function draw(customers, meta) {
    state.customers = customers;
    const rows = document.createDocumentFragment();
    customers.forEach((customer, index) => {
      const row = el("tr");
      const open = el("button", customer.name || customer.customer_id, "link");
      open.type = "button";
      open.dataset.index = String(index);
      const name = el("td");
      name.appendChild(open);
      const cells = [
        name,
        el("td", customer.customer_id, "mono"),
        el("td", customer.email),
        el("td", customer.country),
        el("td", customer.created_at.replace("T", " ").replace("Z", "")),
      ];
      // Each cell names its column, for the narrow layout where rows become cards.
      cells.forEach((cell, column) => {
        cell.dataset.label = COLUMNS[column];
        row.appendChild(cell);
      });
      rows.appendChild(row);
    });
    const body = $("customers").tBodies[0];
    body.replaceChildren(rows);
    const total = meta.total_count;
    const filtered = state.search || state.countries.length;
    $("total").textContent =
      `${total} ${total === 1 ? "customer" : "customers"}${filtered ? " match" : ""}`;
    $("page-info").textContent = meta.total_pages
      ? `Page ${meta.current_page} of ${meta.total_pages}`
      : "No pages";
    $("prev-page").disabled = meta.prev_page === null;
    $("next-page").disabled = meta.next_page === null;
  }

  function showCustomer(customer) {
    const record = $("customer-record");
    record.replaceChildren();
    for (const [field, value] of Object.entries(customer)) {
      record.appendChild(el("dt", field));
      record.appendChild(value === null ? el("dd", "not set", "unset") : el("dd", value));
    }
    $("customer-title").textContent = `Customer ${customer.customer_id}`;
    $("customer-panel").hidden = false;
    $("customer-panel").focus();
  }

  function withKey(action) {
    const key = sessionStorage.getItem(KEY);
    if (!key) {
      signedIn(false);
      return;
    }
    action(key);
  }

  async function signIn(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    state.page = 1;
    if (await load(key)) {
      sessionStorage.setItem(KEY, key);
      $("api-key").value = "";
    }
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    state.customers = [];
    $("customers").tBodies[0].replaceChildren();
    $("customer-record").replaceChildren();
    $("total").textContent = "";
    showMessage("");
    signedIn(false);
    $("api-key").focus();
  }

  function applyFilters(event) {
    event.preventDefault();
    state.search = $("search-term").value.trim();
    state.countries = $("countries")
      .value.split(/[\s,]+/)
      .filter((code) => code);
    state.page = 1;
    withKey(load);
  }

  function turn(delta) {
    state.page = Math.max(1, state.page + delta);
    withKey(load);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("filters").addEventListener("submit", applyFilters);
    $("prev-page").addEventListener("click", () => turn(-1));
    $("next-page").addEventListener("click", () => turn(1));
    $("close-customer").addEventListener("click", () => {
      $("customer-panel").hidden = true;
      if (state.opener && state.opener.isConnected) state.opener.focus();
    });
    $("customers").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-index]");
      if (button) {
        state.opener = button;
        showCustomer(state.customers[Number(button.dataset.index)]);
      }
    });
    withKey(load);
  });
})();
