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
  title: "The title",
  tags: "The tags",
};
const BATCH_SIZE = 1000;

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
  const title = form.elements.title.value.trim();
  if (title) body.title = title;
  const tags = splitTags(form.elements.tags.value);
  if (tags.length) body.tags = tags;
  return body;
}

function splitTags(text) {
  return text.split(/[,|]/).map((tag) => tag.trim()).filter(Boolean);
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

  const target = document.createElement("div");
  if (link.title) {
    const title = document.createElement("span");
    title.className = "link-title";
    title.textContent = link.title;
    target.append(title);
  }
  const url = document.createElement("span");
  url.className = "link-url";
  url.textContent = link.url;
  url.title = link.url;
  target.append(url);
  if (link.tags.length) {
    const tags = document.createElement("span");
    tags.className = "tags";
    for (const tag of link.tags) {
      tags.append(button(tag, `Show links tagged ${tag}`, "tag", () => filterByTag(tag)));
    }
    target.append(tags);
  }

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
    button("Edit", `Edit title and tags of ${link.code}`, "", () => editLink(row, link)),
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

function filtering() {
  return Boolean($("search").value.trim() || $("tag-filter").value.trim());
}

function showEmptyState() {
  const empty = !$("links-body").children.length;
  $("links-table").hidden = empty;
  if (empty && !$("links-status").textContent) {
    setLinksStatus(filtering() ? "No links match." : "No links yet. Shorten one above.");
  }
}

function filterByTag(tag) {
  $("tag-filter").value = tag;
  loadLinks(true);
}

function search(event) {
  event.preventDefault();
  loadLinks(true);
}

function clearSearch() {
  $("search").value = "";
  $("tag-filter").value = "";
  loadLinks(true);
  $("search").focus();
}

// ---- Editing a link's title and tags, in a row of its own under the link ----

function editLink(row, link) {
  if (row.nextElementSibling && row.nextElementSibling.classList.contains("edit-row")) {
    row.nextElementSibling.querySelector("input").focus();
    return;
  }
  const editor = document.createElement("tr");
  editor.className = "edit-row";
  const form = document.createElement("form");
  form.className = "edit-form";
  form.noValidate = true;
  const field = (name, label, value) => {
    const id = `edit-${name}-${link.code}`;
    const wrap = document.createElement("div");
    wrap.className = "field";
    const labelNode = document.createElement("label");
    labelNode.htmlFor = id;
    labelNode.textContent = label;
    const input = document.createElement("input");
    input.id = id;
    input.name = name;
    input.type = "text";
    input.autocomplete = "off";
    input.value = value;
    wrap.append(labelNode, input);
    return wrap;
  };
  const problem = document.createElement("p");
  problem.className = "field-error";
  problem.setAttribute("role", "alert");
  problem.hidden = true;
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "button small";
  save.textContent = "Save";
  form.append(
    field("title", `Title of ${link.code}`, link.title || ""),
    field("tags", `Tags of ${link.code}`, link.tags.join(", ")),
    save,
    button("Cancel", `Stop editing ${link.code}`, "", () => {
      editor.remove();
      row.querySelector(".actions button").focus();
    }),
    problem,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = form.elements.title.value.trim();
    try {
      const changed = await call("PATCH", `${LINKS}/${encodeURIComponent(link.code)}`, {
        body: { title: title || null, tags: splitTags(form.elements.tags.value) },
      });
      const fresh = linkRow(changed);
      row.replaceWith(fresh);
      editor.remove();
      setLinksStatus(`${changed.code} was saved.`);
      fresh.querySelector(".actions button").focus();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const errors = error.problem.errors || [];
      problem.textContent = errors.length
        ? errors.map((e) => sentence(e.field, e.message)).join(" ")
        : plainWords(error);
      problem.hidden = false;
    }
  });
  const td = document.createElement("td");
  td.colSpan = 5;
  td.append(form);
  editor.append(td);
  row.after(editor);
  form.elements.title.focus();
}

// ---- Adding many links from a file, through the batch API ----

function parseCsv(text) {
  const rows = [];
  let row = [];
  let cellText = "";
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const char = text[i];
    if (quoted) {
      if (char === '"' && text[i + 1] === '"') {
        cellText += '"';
        i += 1;
      } else if (char === '"') {
        quoted = false;
      } else {
        cellText += char;
      }
    } else if (char === '"') {
      quoted = true;
    } else if (char === ",") {
      row.push(cellText);
      cellText = "";
    } else if (char === "\n" || char === "\r") {
      if (char === "\r" && text[i + 1] === "\n") i += 1;
      row.push(cellText);
      rows.push(row);
      row = [];
      cellText = "";
    } else {
      cellText += char;
    }
  }
  if (cellText || row.length) {
    row.push(cellText);
    rows.push(row);
  }
  return rows;
}

// Each link body with the line it came from (lines counted from 1, the header included).
function linksOfFile(text) {
  const lines = parseCsv(text.replace(/^\uFEFF/, ""));
  const header = (lines[0] || []).map((name) => name.trim().toLowerCase());
  if (!header.includes("url")) {
    return lines
      .map((cells, index) => ({ line: index + 1, url: cells.join(",").trim() }))
      .filter((item) => item.url)
      .map(({ line, url }) => ({ line, body: { url } }));
  }
  const found = [];
  lines.slice(1).forEach((cells, index) => {
    if (!cells.some((cellValue) => cellValue.trim())) return;
    const value = (name) => (cells[header.indexOf(name)] || "").trim();
    const body = { url: value("url") };
    if (value("alias")) body.alias = value("alias");
    if (value("title")) body.title = value("title");
    const tags = splitTags(value("tags"));
    if (tags.length) body.tags = tags;
    found.push({ line: index + 2, body });
  });
  return found;
}

async function upload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  const problems = $("upload-problems");
  problems.replaceChildren();
  if (!file) {
    $("upload-status").textContent = "Choose a file first.";
    $("upload-file").focus();
    return;
  }
  const items = linksOfFile(await file.text());
  if (!items.length) {
    $("upload-status").textContent = "The file holds no links.";
    return;
  }
  $("upload").disabled = true;
  let created = 0;
  const refused = [];
  try {
    for (let start = 0; start < items.length; start += BATCH_SIZE) {
      const chunk = items.slice(start, start + BATCH_SIZE);
      $("upload-status").textContent = `Sending links ${start + 1} to ${start + chunk.length} of ${items.length}…`;
      const reply = await call("POST", `${LINKS}/batch`, { body: { links: chunk.map((item) => item.body) } });
      reply.results.forEach((result, index) => {
        if (result.status === 201) created += 1;
        else refused.push({ line: chunk[index].line, problem: result.problem });
      });
    }
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    $("upload-status").textContent = `The upload stopped: ${plainWords(error)}`;
    return;
  } finally {
    $("upload").disabled = false;
  }
  $("upload-status").textContent =
    `${created} ${created === 1 ? "link" : "links"} created, ${refused.length} refused.`;
  for (const { line, problem } of refused) {
    const item = document.createElement("li");
    const errors = problem.errors || [];
    const reason = errors.length
      ? errors.map((e) => sentence(e.field, e.message)).join(" ")
      : problem.detail;
    item.textContent = `Line ${line}: ${reason}`;
    problems.append(item);
  }
  if (created) loadLinks(true);
}

async function loadLinks(reset) {
  if (!sessionKey) {
    $("links-body").replaceChildren();
    $("links-table").hidden = true;
    $("more").hidden = true;
    $("refresh").hidden = true;
    $("search-form").hidden = true;
    setLinksStatus("Save your API key to see and manage your links.");
    return;
  }
  $("refresh").hidden = false;
  $("search-form").hidden = false;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const search = $("search").value.trim();
  if (search) query.set("q", search);
  for (const tag of splitTags($("tag-filter").value)) query.append("tag", tag);
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
$("search-form").addEventListener("submit", search);
$("search-clear").addEventListener("click", clearSearch);
$("upload-form").addEventListener("submit", upload);
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
