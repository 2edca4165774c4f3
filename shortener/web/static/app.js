// The page at /: shorten a URL, copy it, show its QR code, and manage the key's links.
// Everything is built with DOM APIs and textContent: no server or user text becomes markup.

const LINKS = "/api/v1/links";
const KEY_STORAGE = "shortener.apiKey";
const PAGE_SIZE = 20;

const FIELD_LABELS = {
  url: "The URL",
  alias: "The alias",
  expires_at: "The expiry",
  max_visits: "The visit limit",
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.retryAfter = retryAfter;
  }
}

// ---- The key, kept in localStorage ----

function savedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // Storage may be off (private mode): the key then lasts as long as the page.
  }
  sessionKey = key;
}

let sessionKey = savedKey();

// ---- Talking to the API ----

async function call(method, path, { body, key = sessionKey, as = "json" } = {}) {
  const headers = { Accept: as === "json" ? "application/json" : "*/*" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, {
      detail: "The service could not be reached. Check your connection and try again.",
    });
  }
  if (response.ok) {
    if (response.status === 204) return null;
    return as === "blob" ? response.blob() : response.json();
  }
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // Not a problem document (a proxy's error page, say): the status speaks for itself.
  }
  throw new ApiError(response.status, problem, response.headers.get("Retry-After"));
}

function plainWords(error) {
  switch (error.status) {
    case 0:
      return error.problem.detail;
    case 401:
      return sessionKey
        ? "The saved API key was not accepted. Check it, or forget it and save a new one."
        : "This needs an API key. Enter your key above and save it, then try again.";
    case 404:
      return "That link no longer exists.";
    case 409:
      return "This alias is already taken. Choose another one.";
    case 413:
      return "That is too long to send.";
    case 429: {
      const wait = error.retryAfter ? ` in ${error.retryAfter} seconds` : " shortly";
      return `Too many links were created from this address. Try again${wait}.`;
    }
    case 503:
      return "The service is briefly unavailable. Try again in a moment.";
    default:
      return error.problem.detail || `Something went wrong (HTTP ${error.status}).`;
  }
}

function sentence(field, message) {
  const label = FIELD_LABELS[field];
  const text = label ? `${label} ${message}` : `${field}: ${message}`;
  return text.endsWith(".") ? text : `${text}.`;
}

// ---- Field errors next to their fields ----

function describedBy(input, errorId, on) {
  const ids = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
  const rest = ids.filter((id) => id !== errorId);
  if (on) rest.push(errorId);
  if (rest.length) input.setAttribute("aria-describedby", rest.join(" "));
  else input.removeAttribute("aria-describedby");
}

function showFieldError(input, message) {
  const errorId = `${input.id}-error`;
  let node = $(errorId);
  if (!node) {
    node = document.createElement("p");
    node.id = errorId;
    node.className = "field-error";
    input.closest(".field").append(node);
  }
  node.textContent = message;
  node.hidden = false;
  input.setAttribute("aria-invalid", "true");
  describedBy(input, errorId, true);
}

function clearFieldError(input) {
  const node = $(`${input.id}-error`);
  if (node) node.remove();
  input.removeAttribute("aria-invalid");
  describedBy(input, `${input.id}-error`, false);
}

function showFormError(message) {
  const node = $("form-error");
  node.textContent = message;
  node.hidden = false;
}

function clearFormErrors(form) {
  for (const input of form.querySelectorAll("input")) clearFieldError(input);
  $("form-error").hidden = true;
  $("form-error").textContent = "";
}

// ---- Shortening ----

function pad(number) {
  return String(number).padStart(2, "0");
}

// "2030-06-01T10:00" typed in the browser's zone -> "2030-06-01T10:00:00+02:00".
function localToRfc3339(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return value;
  const offset = -date.getTimezoneOffset();
  const sign = offset >= 0 ? "+" : "-";
  const abs = Math.abs(offset);
  return (
    `${String(date.getFullYear()).padStart(4, "0")}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
    `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`
  );
}

function newLinkBody(form) {
  const body = { url: form.elements.url.value.trim() };
  const alias = form.elements.alias.value.trim();
  if (alias) body.alias = alias;
  if (form.elements.expires_at.value) body.expires_at = localToRfc3339(form.elements.expires_at.value);
  const visits = form.elements.max_visits.value.trim();
  // A non-number goes as typed, so the API's message explains what is wrong with it.
  if (visits) body.max_visits = /^-?\d+$/.test(visits) ? Number(visits) : visits;
  return body;
}

function showProblem(form, error) {
  const fieldErrors = (error.problem.errors || []).filter((e) => form.elements[e.field]);
  if (error.status === 400 && fieldErrors.length) {
    for (const { field, message } of fieldErrors) {
      const input = form.elements[field];
      if (input.closest("details")) $("options").open = true;
      showFieldError(input, sentence(field, message));
    }
    form.elements[fieldErrors[0].field].focus();
    const others = error.problem.errors.filter((e) => !form.elements[e.field]);
    if (others.length) showFormError(others.map((e) => sentence(e.field, e.message)).join(" "));
    return;
  }
  if (error.status === 409) {
    $("options").open = true;
    showFieldError(form.elements.alias, plainWords(error));
    form.elements.alias.focus();
    return;
  }
  showFormError(plainWords(error));
  if (error.status === 401) $(sessionKey ? "key-forget" : "key").focus();
}

async function shorten(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearFormErrors(form);
  if (!form.elements.url.value.trim()) {
    showFieldError(form.elements.url, "Enter the URL to shorten.");
    form.elements.url.focus();
    return;
  }
  const button = $("shorten");
  button.disabled = true;
  try {
    const link = await call("POST", LINKS, { body: newLinkBody(form) });
    form.reset();
    showResult(link);
    if (sessionKey) prependLink(link);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showProblem(form, error);
  } finally {
    button.disabled = false;
  }
}

// ---- The result: short link, copy, QR ----

let qrObjectUrl = null;

function showQr(url) {
  if (qrObjectUrl) URL.revokeObjectURL(qrObjectUrl);
  qrObjectUrl = url;
  const img = $("qr");
  if (url) img.src = url;
  else img.removeAttribute("src");
  img.hidden = !url;
  $("qr-png").hidden = !url;
}

async function loadQr(link) {
  showQr(null);
  if (!sessionKey) {
    $("qr-note").textContent = "Save an API key to get a QR code.";
    return;
  }
  $("qr-note").textContent = "";
  try {
    const blob = await call("GET", `${LINKS}/${encodeURIComponent(link.code)}/qr`, { as: "blob" });
    if ($("result").dataset.code !== link.code) return;
    $("qr").alt = `QR code for ${link.short_url}`;
    showQr(URL.createObjectURL(blob));
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    $("qr-note").textContent = `No QR code: ${plainWords(error)}`;
  }
}

function showResult(link) {
  const result = $("result");
  result.dataset.code = link.code;
  result.dataset.shortUrl = link.short_url;
  const anchor = $("result-link");
  anchor.href = link.short_url;
  anchor.textContent = link.short_url;
  $("result-target").textContent = link.url;
  $("copy-status").textContent = "";
  result.hidden = false;
  result.focus();
  loadQr(link);
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // Denied or unavailable: fall back to a selection and the copy command.
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch {
    copied = false;
  }
  area.remove();
  return copied;
}

async function copyShortUrl() {
  const text = $("result").dataset.shortUrl;
  const copied = await copyText(text);
  const status = $("copy-status");
  if (copied) {
    status.textContent = "Copied to the clipboard.";
  } else {
    window.getSelection().selectAllChildren($("result-link"));
    status.textContent = "Press Ctrl+C (or ⌘C) to copy the selected link.";
  }
}

async function downloadPng() {
  const { code } = $("result").dataset;
  try {
    const blob = await call("GET", `${LINKS}/${encodeURIComponent(code)}/qr?format=png&scale=10`, {
      as: "blob",
    });
    const url = URL.createObjectURL(blob);
    const anchor = document.createElement("a");
    anchor.href = url;
    anchor.download = `${code}.png`;
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    $("qr-note").textContent = `No PNG: ${plainWords(error)}`;
  }
}

// ---- My links ----

let nextCursor = null;

function linkStatus(link) {
  if (link.disabled) return ["Disabled", "disabled"];
  if (link.expires_at && Date.parse(link.expires_at) <= Date.now()) return ["Expired", "expired"];
  if (link.max_visits !== null && link.clicks >= link.max_visits) return ["Used up", "used-up"];
  return ["Active", "active"];
}

function cell(className, ...children) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.append(...children);
  return td;
}

function button(text, label, className, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = `button quiet small ${className}`.trim();
  node.textContent = text;
  node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

function linkRow(link) {
  const row = document.createElement("tr");
  row.dataset.code = link.code;

  const shortLink = document.createElement("a");
  shortLink.href = link.short_url;
  shortLink.textContent = link.code;
  shortLink.title = link.short_url;

  const target = document.createElement("span");
  target.textContent = link.url;
  target.title = link.url;

  const clicks = link.max_visits === null
    ? link.clicks.toLocaleString()
    : `${link.clicks.toLocaleString()} / ${link.max_visits.toLocaleString()}`;

  const [statusText, statusClass] = linkStatus(link);
  const badge = document.createElement("span");
  badge.className = `badge ${statusClass}`;
  badge.textContent = statusText;

  const actions = document.createElement("div");
  actions.className = "actions";
  actions.append(
    button(link.disabled ? "Enable" : "Disable", `${link.disabled ? "Enable" : "Disable"} ${link.code}`, "",
      () => toggleLink(row, link)),
    // The stats view lives in stats.js; it gets the link and the key with the event.
    button("Stats", `Stats of ${link.code}`, "", () => document.dispatchEvent(
      new CustomEvent("shortener:stats", { detail: { code: link.code, key: sessionKey } }))),
    button("Delete", `Delete ${link.code}`, "danger", () => deleteLink(row, link)),
  );

  row.append(
    cell("code", shortLink),
    cell("target", target),
    cell("num", clicks),
    cell("state", badge),
    cell("row-actions", actions),
  );
  return row;
}

function setLinksStatus(text) {
  $("links-status").textContent = text;
}

function showEmptyState() {
  const empty = !$("links-body").children.length;
  $("links-table").hidden = empty;
  if (empty && !$("links-status").textContent) setLinksStatus("No links yet. Shorten one above.");
}

async function loadLinks(reset) {
  if (!sessionKey) {
    $("links-body").replaceChildren();
    $("links-table").hidden = true;
    $("more").hidden = true;
    $("refresh").hidden = true;
    setLinksStatus("Save your API key to see and manage your links.");
    return;
  }
  $("refresh").hidden = false;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (!reset && nextCursor) query.set("cursor", nextCursor);
  setLinksStatus("Loading…");
  try {
    const page = await call("GET", `${LINKS}?${query}`);
    const rows = page.items.map(linkRow);
    if (reset) $("links-body").replaceChildren(...rows);
    else $("links-body").append(...rows);
    nextCursor = page.next_cursor;
    $("more").hidden = !nextCursor;
    setLinksStatus("");
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    setLinksStatus(plainWords(error));
  }
  showEmptyState();
}

function prependLink(link) {
  $("links-body").prepend(linkRow(link));
  setLinksStatus("");
  showEmptyState();
}

async function toggleLink(row, link) {
  try {
    const changed = await call("PATCH", `${LINKS}/${encodeURIComponent(link.code)}`, {
      body: { disabled: !link.disabled },
    });
    const fresh = linkRow(changed);
    row.replaceWith(fresh);
    setLinksStatus(`${changed.code} is now ${changed.disabled ? "disabled" : "enabled"}.`);
    fresh.querySelector(".actions button").focus();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    setLinksStatus(`Could not change ${link.code}: ${plainWords(error)}`);
  }
}

async function deleteLink(row, link) {
  const sure = window.confirm(
    `Delete ${link.short_url}?\n\nIt stops working at once, and its code is never given out again.`,
  );
  if (!sure) return;
  try {
    await call("DELETE", `${LINKS}/${encodeURIComponent(link.code)}`);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status !== 404) {
      setLinksStatus(`Could not delete ${link.code}: ${plainWords(error)}`);
      return;
    }
  }
  const next = row.nextElementSibling || row.previousElementSibling;
  row.remove();
  setLinksStatus(`${link.code} was deleted.`);
  showEmptyState();
  (next ? next.querySelector(".actions button") : $("links-title")).focus();
}

// ---- Key form ----

function showKeyState() {
  const saved = Boolean(sessionKey);
  $("key-form").hidden = saved;
  $("key-saved").hidden = !saved;
  $("key-hint").hidden = saved;
  $("key-end").textContent = saved ? sessionKey.slice(-4) : "";
}

async function saveKey(event) {
  event.preventDefault();
  const input = $("key");
  const key = input.value.trim();
  const errorNode = $("key-error");
  errorNode.hidden = true;
  input.removeAttribute("aria-invalid");
  if (!key) {
    errorNode.textContent = "Enter your API key first.";
    errorNode.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  try {
    // Checked before it is kept, so a typo is caught here rather than on the next action.
    await call("GET", `${LINKS}?limit=1`, { key });
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    errorNode.textContent = error.status === 401
      ? "This key was not accepted. Check that it is complete."
      : plainWords(error);
    errorNode.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  input.value = "";
  storeKey(key);
  showKeyState();
  $("key-forget").focus();
  nextCursor = null;
  loadLinks(true);
}

function forgetKey() {
  storeKey("");
  showKeyState();
  showQr(null);
  $("key").focus();
  loadLinks(true);
}

// ---- Start ----

$("key-form").addEventListener("submit", saveKey);
$("key-forget").addEventListener("click", forgetKey);
$("shorten-form").addEventListener("submit", shorten);
$("copy").addEventListener("click", copyShortUrl);
$("qr-png").addEventListener("click", downloadPng);
$("refresh").addEventListener("click", () => loadLinks(true));
$("more").addEventListener("click", () => loadLinks(false));
for (const input of $("shorten-form").querySelectorAll("input")) {
  input.addEventListener("input", () => clearFieldError(input));
}
window.addEventListener("storage", (event) => {
  if (event.key !== KEY_STORAGE) return;
  sessionKey = savedKey();
  showKeyState();
  loadLinks(true);
});
showKeyState();
loadLinks(true);
