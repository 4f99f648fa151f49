// The operator console (service/console.py serves it). Read only, fed by the service's own
// JSON endpoints with the admin token; every value is inserted as text (textContent), never
// as markup. No framework, no build step: the Content-Security-Policy allows this file only.
"use strict";

(() => {
  const TOKEN_KEY = "tracking-console-admin-token";
  const POLL_MS = 2000; // the allocator panel's refresh
  const CHART_MS = 5 * 60 * 1000; // the issue-rate chart's window
  const TIMEOUT_MS = 5000; // an answer slower than this is a fault to show, not a wait
  const VIEWS = ["find", "browse", "allocator"];
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const FIELD_LABELS = {
    customer_id: "Customer id",
    customer_slug: "Customer slug",
    origin_country_id: "Origin country",
    destination_country_id: "Destination country",
    issued_from: "Issued from",
    issued_to: "Issued before",
    correlation_id: "Correlation id",
    limit: "Per page",
    cursor: "Page",
    number: "Tracking number",
  };
  const RECORD_LABELS = [
    ["tracking_number", "Number"],
    ["issued_at", "Issued (UTC)"],
    ["customer_name", "Customer name"],
    ["customer_slug", "Customer slug"],
    ["customer_id", "Customer id"],
    ["origin_country", "Origin"],
    ["destination_country", "Destination"],
    ["weight_kg", "Weight (kg)"],
    ["created_at", "Created at (the client's time)"],
    ["correlation_id", "Correlation id"],
    ["counter", "Counter"],
    ["host", "Host"],
    ["idempotency_key_sha256", "Idempotency-Key (SHA-256)"],
  ];

  const $ = (id) => document.getElementById(id);
  const numbers = new Intl.NumberFormat("en");

  /** A new element holding ``text`` as text, never as markup. */
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function definitions(list, pairs) {
    list.replaceChildren();
    for (const [term, value] of pairs) {
      list.append(el("dt", term), el("dd", value === null || value === undefined ? "none" : value));
    }
  }

  // Counters reach 2**56, beyond a double's exact integers: such numbers are read as BigInt
  // from their source text (JSON.parse's source access).
  function parseJson(text) {
    return JSON.parse(text, (key, value, context) =>
      typeof value === "number" && !Number.isSafeInteger(value) && context &&
      /^[0-9]+$/.test(context.source || "") ? BigInt(context.source) : value);
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  /** GET ``path`` with the admin token; a wrong token sends the operator back to its form. */
  async function api(path, accept, timeout = TIMEOUT_MS) {
    const headers = { Authorization: "Bearer " + token() };
    if (accept) headers.Accept = accept;
    const controller = new AbortController();
    const timer = timeout ? setTimeout(() => controller.abort(), timeout) : null;
    try {
      const response = await fetch(path, {
        headers, signal: controller.signal, cache: "no-store", credentials: "omit",
      });
      if (response.status === 401) {
        askForToken("The service refused this token. Type it again (it changes when the service makes a new one at start).");
      }
      return response;
    } finally {
      clearTimeout(timer);
    }
  }

  async function body(response) {
    try {
      return parseJson(await response.text());
    } catch {
      return {};
    }
  }

  function explain(data, status) {
    const error = data && data.error ? data.error : "no explanation";
    return `The service answered ${status}: ${error}.`;
  }

  // --- Views and the token -----------------------------------------------------------------

  function show(name) {
    for (const section of document.querySelectorAll("main > section")) {
      section.hidden = section.id !== "view-" + name;
    }
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.view === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    $("forget-token").hidden = !token();
    const heading = document.querySelector(`#view-${name} h1`);
    if (heading) heading.focus();
  }

  function askForToken(problem) {
    sessionStorage.removeItem(TOKEN_KEY);
    show("token");
    $("token-problem").textContent = problem || "";
    $("token").focus();
  }

  function route() {
    const hash = decodeURIComponent(location.hash.slice(1));
    const slash = hash.indexOf("/");
    const name = slash < 0 ? hash : hash.slice(0, slash);
    const argument = slash < 0 ? "" : hash.slice(slash + 1);
    const view = VIEWS.includes(name) ? name : "find";
    if (!token()) {
      askForToken("");
      return;
    }
    show(view);
    if (view === "find" && argument) {
      $("number").value = argument;
      lookUp(argument);
    }
  }

  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const typed = $("token").value.trim();
    if (!typed) return;
    sessionStorage.setItem(TOKEN_KEY, typed);
    $("token").value = "";
    // The listing refuses a wrong token (401) even with the ledger off; a lookup would not.
    let response;
    try {
      response = await api("/tracking-numbers?limit=1");
    } catch {
      askForToken("The service does not answer. Try again in a moment.");
      return;
    }
    if (response.status === 401) return; // asked for it again, saying why
    $("token-problem").textContent = "";
    route();
    poll();
  });

  $("forget-token").addEventListener("click", () => askForToken("The token is forgotten."));

  // --- Find a number ---------------------------------------------------------------------

  function recordList(record) {
    const list = el("dl");
    const known = new Set(RECORD_LABELS.map(([key]) => key));
    // Fields this page does not know yet (another scheme's record) are shown under their names.
    const labels = [...RECORD_LABELS, ...Object.keys(record).filter((key) => !known.has(key)).map((key) => [key, key])];
    definitions(list, labels.filter(([key]) => key in record).map(([key, label]) =>
      [label, key === "issued_at" ? utc(record[key]) : display(record[key])]));
    return list;
  }

  function display(value) {
    if (typeof value === "bigint" || typeof value === "number") return numbers.format(value);
    return value;
  }

  /** A UTC time of the API (RFC 3339, Z) as people read it. */
  const utc = (text) => String(text).replace("T", " ").replace("Z", "");

  async function lookUp(typed) {
    const number = typed.trim();
    const out = $("find-result");
    out.replaceChildren(el("p", "Looking up " + number + "…"));
    let response;
    try {
      response = await api("/tracking-numbers/" + encodeURIComponent(number));
    } catch {
      out.replaceChildren(el("p", "The service does not answer. Try again in a moment.", "verdict bad"));
      return;
    }
    const data = await body(response);
    if (response.status === 401) return;
    if (response.status === 400) {
      out.replaceChildren(el("p", `${number}: not a tracking number`, "verdict bad"));
      const list = el("ul");
      for (const problem of (data.details && data.details.number) || []) list.append(el("li", problem));
      out.append(list);
      return;
    }
    if (!response.ok) {
      out.replaceChildren(el("p", explain(data, response.status), "verdict bad"));
      return;
    }
    const verdict = el("p", null, "verdict " + (data.valid ? "good" : "bad"));
    verdict.append(el("span", data.tracking_number, "number"), data.valid ? " is valid" : " is not valid");
    out.replaceChildren(verdict);
    if (data.problems && data.problems.length) {
      out.append(el("h2", "Why not"));
      const list = el("ul");
      for (const problem of data.problems) list.append(el("li", problem));
      out.append(list);
    }
    if (data.suggestion) {
      const line = el("p", "Did you mean ");
      const link = el("a", data.suggestion, "number");
      link.href = "#find/" + encodeURIComponent(data.suggestion);
      link.id = "suggestion";
      line.append(link, "? It is one easily misread character away.");
      out.append(line);
    }
    if (data.issued !== undefined) {
      out.append(el("p", data.issued ? "Issued by this service." : "Not issued by this service.",
        "verdict " + (data.issued ? "good" : "neutral")));
    }
    if (data.note) out.append(el("p", data.note));
    if (data.issued && !data.record && !data.note) {
      out.append(el("p", "Its record is not shown: the ledger is off, or the service no longer takes this token (a restart makes a new one): forget it and give the new one."));
    }
    if (data.record) {
      out.append(el("h2", "Its record"), recordList(data.record));
    }
  }

  $("find-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const number = $("number").value.trim();
    if (!number) return;
    const wanted = "#find/" + encodeURIComponent(number);
    if (location.hash === wanted) lookUp(number);
    else location.hash = wanted;
  });

  // --- Browse ----------------------------------------------------------------------------

  // cursors[i] opens page i (page 0 has none); counts[i] is how many records page i showed.
  const browse = { base: null, cursors: [null], counts: [], page: 0 };

  function browseFilters() {
    const params = new URLSearchParams();
    const problems = [];
    const customer = $("customer").value.trim();
    if (customer) params.set(UUID.test(customer) ? "customer_id" : "customer_slug", customer.toLowerCase());
    for (const [id, name] of [["origin", "origin_country_id"], ["destination", "destination_country_id"]]) {
      const value = $(id).value.trim().toUpperCase();
      if (value) params.set(name, value);
    }
    for (const [id, name] of [["issued-from", "issued_from"], ["issued-to", "issued_to"]]) {
      const value = $(id).value;
      if (!value) continue;
      const when = new Date(value);
      if (Number.isNaN(when.getTime())) problems.push(`${FIELD_LABELS[name]}: not a date and time`);
      else params.set(name, when.toISOString());
    }
    const correlation = $("correlation").value.trim();
    if (correlation) params.set("correlation_id", correlation);
    params.set("limit", $("limit").value);
    return { params, problems };
  }

  function browseProblem(lines) {
    const out = $("browse-problem");
    out.replaceChildren();
    for (const line of lines) out.append(el("p", line));
  }

  function refusal(response, data) {
    if (response.status === 404) {
      return ["The ledger is off on this service (ledger = false), so it keeps no records to browse. " +
        "Turn it on with ledger = true in the configuration, TRACKING_LEDGER=true or --ledger."];
    }
    if (response.status === 400 && data.details) {
      return Object.entries(data.details).map(
        ([name, problems]) => `${FIELD_LABELS[name] || name}: ${problems.join("; ")}`);
    }
    if (response.status === 503) return ["The ledger cannot be read right now. Try again in a moment."];
    return [explain(data, response.status)];
  }

  async function showPage(index) {
    const params = new URLSearchParams(browse.base);
    if (browse.cursors[index]) params.set("cursor", browse.cursors[index]);
    let response;
    try {
      response = await api("/tracking-numbers?" + params);
    } catch {
      browseProblem(["The service does not answer. Try again in a moment."]);
      return;
    }
    const data = await body(response);
    if (response.status === 401) return;
    if (!response.ok) {
      $("browse-result").hidden = true;
      browseProblem(refusal(response, data));
      return;
    }
    browseProblem([]);
    browse.page = index;
    browse.counts[index] = data.items.length;
    browse.cursors[index + 1] = data.next_cursor;
    browse.cursors.length = index + 2;
    const rows = $("browse-table").tBodies[0];
    rows.replaceChildren();
    for (const item of data.items) {
      const row = el("tr");
      const number = el("td", null, "mono");
      const link = el("a", item.tracking_number);
      link.href = "#find/" + encodeURIComponent(item.tracking_number);
      number.append(link);
      row.append(number, el("td", utc(item.issued_at)),
        el("td", item.customer_name), el("td", item.customer_slug), el("td", item.origin_country),
        el("td", item.destination_country), el("td", item.weight_kg), el("td", item.correlation_id, "mono"));
      rows.append(row);
    }
    const before = browse.counts.slice(0, index).reduce((sum, count) => sum + count, 0);
    $("browse-count").textContent = data.items.length
      ? `Page ${index + 1}: records ${before + 1} to ${before + data.items.length} shown, newest first` +
        (data.next_cursor ? "; more on the next page." : "; this is the last page.")
      : "No record matches these filters.";
    $("browse-result").hidden = false;
    const previous = $("previous-page");
    const next = $("next-page");
    const focused = document.activeElement;
    previous.disabled = index === 0;
    next.disabled = !data.next_cursor;
    // A button that was just disabled would drop the keyboard's focus on the page's body.
    if (focused && focused.disabled) {
      const other = previous.disabled ? next : previous;
      (other.disabled ? $("browse-count") : other).focus();
    }
  }

  $("browse-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const { params, problems } = browseFilters();
    if (problems.length) {
      browseProblem(problems);
      return;
    }
    browse.base = params.toString();
    browse.cursors = [null];
    browse.counts = [];
    showPage(0);
  });
  $("previous-page").addEventListener("click", () => showPage(Math.max(0, browse.page - 1)));
  $("next-page").addEventListener("click", () => showPage(browse.page + 1));

  /** The current filter's every record as a file: fetched with the token, saved from a Blob. */
  async function download(kind) {
    const params = new URLSearchParams(browse.base);
    params.delete("limit");
    const accept = kind === "csv" ? "text/csv" : "application/x-ndjson";
    let response;
    try {
      response = await api("/tracking-numbers?" + params, accept, 0);
    } catch {
      browseProblem(["The service does not answer. Try again in a moment."]);
      return;
    }
    if (!response.ok) {
      if (response.status !== 401) browseProblem(refusal(response, await body(response)));
      return;
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a");
    link.href = url;
    link.download = `tracking-numbers-${new Date().toISOString().replace(/[:.]/g, "-")}.${kind}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    $("browse-count").textContent = `Downloaded ${link.download} (${numbers.format(blob.size)} bytes).`;
  }

  $("download-csv").addEventListener("click", () => download("csv"));
  $("download-ndjson").addEventListener("click", () => download("ndjson"));

  // --- The allocator, live ---------------------------------------------------------------

  const samples = []; // [time in ms, issue rate], oldest first

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "never, at the current rate";
    const value = Number(seconds);
    const units = [[365.25 * 86400, "years"], [86400, "days"], [3600, "hours"], [60, "minutes"]];
    for (const [size, name] of units) {
      if (value >= size) return `about ${numbers.format(Math.round(value / size))} ${name}`;
    }
    return `${numbers.format(Math.round(value))} seconds`;
  }

  const clock = (seconds) => seconds ? new Date(Number(seconds) * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "none";

  function liveState(text, kind) {
    const state = $("live-state");
    state.textContent = text;
    state.className = "state " + kind;
    $("view-allocator").classList.toggle("stale", kind === "bad");
  }

  function fault(text) {
    const last = samples.length ? new Date(samples[samples.length - 1][0]).toLocaleTimeString("en-GB") : "never";
    liveState(`${text} The figures below are from the last answer (${last}).`, "bad");
  }

  function chart() {
    const now = Date.now();
    while (samples.length && samples[0][0] < now - CHART_MS) samples.shift();
    const peak = Math.max(1, ...samples.map(([, rate]) => rate));
    const points = samples.map(([when, rate]) =>
      `${((when - now + CHART_MS) / CHART_MS * 300).toFixed(1)},${(98 - rate / peak * 94).toFixed(1)}`);
    $("rate-line").setAttribute("points", points.join(" "));
    const latest = samples.length ? samples[samples.length - 1][1] : 0;
    const minutes = samples.length ? Math.max(1, Math.round((now - samples[0][0]) / 60000)) : 0;
    $("rate-summary").textContent = samples.length
      ? `Numbers issued a second, last ${minutes} minute${minutes === 1 ? "" : "s"}: now ${latest.toFixed(1)}, peak ${Math.max(...samples.map(([, r]) => r)).toFixed(1)} (a sample every ${POLL_MS / 1000} s).`
      : "No samples yet.";
  }

  function render(status) {
    const ledger = status.ledger;
    if (!status.store_up) {
      liveState(`The store cannot be written: ${status.last_store_error}. The allocator grants only what is already reserved, then refuses.`, "bad");
    } else if (ledger && !ledger.writer_up) {
      liveState(`The ledger's writer does not answer (${ledger.error || "no reason given"}): numbers cannot be recorded, so none are issued.`, "bad");
    } else {
      liveState(`Live: every ${POLL_MS / 1000} s, last at ${new Date().toLocaleTimeString("en-GB")}.`, "good");
    }
    samples.push([Date.now(), Number(status.issue_rate_per_second)]);
    chart();
    definitions($("marks"), [
      ["Next counter", display(status.next)],
      ["Reserved up to", display(status.reserved)],
      ["Reserved ahead", display(BigInt(status.reserved) - BigInt(status.next))],
      ["Numbers left", display(status.numbers_left)],
      ["Issue rate", `${Number(status.issue_rate_per_second).toFixed(1)} a second (last minute)`],
      ["Exhausted in", duration(status.seconds_to_exhaustion)],
      ["Blocks leased", display(status.leases_total)],
      ["Uptime", duration(status.uptime_seconds)],
    ]);
    const store = [
      ["Store", `${status.store}: ${status.store_up ? "up" : "cannot be written"}`],
      ["Last checkpoint", clock(status.last_checkpoint_at) + (status.last_checkpoint_latency_seconds === null ? "" : `, ${(status.last_checkpoint_latency_seconds * 1000).toFixed(1)} ms`)],
      ["Last store error", status.last_store_error ? `${status.last_store_error} (${clock(status.last_store_error_at)})` : "none"],
    ];
    if (!ledger) {
      store.push(["Ledger", "off (ledger = false)"]);
    } else {
      store.push(["Ledger writer", ledger.writer_up ? "up" : `does not answer: ${ledger.error || ""}`]);
      const stats = ledger.stats;
      if (stats) {
        store.push(["Records written", display(stats.records_written_total)]);
        store.push(["Commit failures", display(stats.commit_failures_total)]);
        if (stats.last_error) store.push(["Last ledger error", stats.last_error]);
        if (status.store !== "sqlite" || stats.spool_records) {
          store.push(["Spool", `${display(stats.spool_records)} records, oldest ${Number(stats.spool_oldest_seconds).toFixed(1)} s`]);
          if (stats.spool_error) store.push(["Spool error", stats.spool_error]);
        }
      }
    }
    definitions($("store"), store);
    const rows = $("workers").tBodies[0];
    rows.replaceChildren();
    const workers = Object.entries(status.leases_by_worker || {});
    for (const [pid, blocks] of workers) {
      const row = el("tr");
      row.append(el("td", pid), el("td", display(blocks)));
      rows.append(row);
    }
    if (!workers.length) {
      const row = el("tr");
      const cell = el("td", "No worker is connected.");
      cell.colSpan = 2;
      row.append(cell);
      rows.append(row);
    }
  }

  let polling = null; // the next refresh's timer
  let asking = false; // a status request is on its way: one refresh loop only

  async function poll() {
    clearTimeout(polling);
    if (asking || !token()) return;
    asking = true;
    try {
      const response = await api("/allocator/status");
      const data = await body(response);
      if (response.status === 401) return; // asked for the token again; polling stops
      if (response.status === 503) fault("The allocator does not answer. Workers issue from the blocks they hold, then refuse (503) until it is back.");
      else if (!response.ok) fault(explain(data, response.status));
      else render(data);
    } catch {
      fault("The service does not answer.");
    } finally {
      asking = false;
    }
    polling = setTimeout(poll, POLL_MS);
  }

  window.addEventListener("hashchange", route);
  route();
  poll();
})();
