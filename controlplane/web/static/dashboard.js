// mixprec dashboard: live regions over server-sent events, confirmations, actions. No framework.
"use strict";

(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const notice = document.getElementById("notice");
  const live = document.getElementById("live");

  function say(message, kind) {
    notice.textContent = message;
    notice.className = "notice" + (kind ? " " + kind : "");
    notice.hidden = false;
  }

  // --- live regions: swap what the server re-rendered, but never under the user's focus ----------
  const pending = new Map();

  function swap(region, html) {
    if (region.contains(document.activeElement) && document.activeElement !== document.body) {
      pending.set(region, html);  // applied when focus leaves the region
      return;
    }
    pending.delete(region);
    region.innerHTML = html;
  }

  document.addEventListener("focusout", () => {
    setTimeout(() => {
      for (const [region, html] of pending) swap(region, html);
    }, 0);
  });

  // New policy versions (a proposal, a rollback to base) join the version pickers without a reload.
  function refreshVersionPickers() {
    const rows = [...document.querySelectorAll('[data-region="policies"] tr[data-version]')];
    if (!rows.length) return;
    const option = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; return o; };
    for (const id of ["diff-from", "diff-to"]) {
      const select = document.getElementById(id);
      if (!select || document.activeElement === select) continue;
      const chosen = select.value;
      select.replaceChildren(...rows.map((r) => option(r.dataset.version, "v" + r.dataset.version)));
      select.value = chosen;
    }
    const target = document.getElementById("rollback-target");
    if (target && document.activeElement !== target) {
      const chosen = target.value;
      const first = target.querySelector('option[value="last-good"]');
      const last = target.querySelector('option[value="base"]');
      const versions = rows.filter((r) => !("active" in r.dataset)).map((r) =>
        option(r.dataset.version, "v" + r.dataset.version + (r.dataset.message ? ": " + r.dataset.message : "")));
      target.replaceChildren(first, ...versions, last);
      target.value = [...target.options].some((o) => o.value === chosen) ? chosen : "last-good";
    }
  }

  function connect(url) {
    const source = new EventSource(url);
    source.addEventListener("open", () => { live.hidden = false; live.className = "live on"; live.textContent = "live"; });
    source.addEventListener("error", () => { live.hidden = false; live.className = "live off"; live.textContent = "reconnecting…"; });
    source.addEventListener("region", (event) => {
      const data = JSON.parse(event.data);
      const region = document.querySelector('[data-region="' + data.id + '"]');
      if (region) swap(region, data.html);
      if (data.id === "policies") refreshVersionPickers();
    });
    source.addEventListener("trouble", (event) => say(event.data, "bad"));
    source.addEventListener("gone", (event) => { say(event.data, "bad"); source.close(); });
  }

  if (document.body.dataset.events) connect(document.body.dataset.events);

  // --- actions --------------------------------------------------------------------------------
  // One id per confirmed action: the server applies a request id once, so the retry after a network
  // failure (and any resent POST) cannot roll back twice.
  function requestId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function post(action, fields) {
    const body = new URLSearchParams({ ...fields, request_id: requestId() });
    const send = () => fetch(action, {
      method: "POST", body, credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRF-Token": csrf() },
    });
    let response;
    try { response = await send(); } catch (err) { response = await send(); }
    let data = {};
    try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
    if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
    return data.message;
  }

  const dialog = document.getElementById("confirm");
  // Enter in the dialog's reason field confirms (the form's only submit button); Cancel and Esc do not.
  if (dialog) document.getElementById("confirm-cancel").addEventListener("click", () => dialog.close("cancel"));

  // Shows the confirmation dialog; resolves with the reason typed there, or null when cancelled.
  function confirmDialog(title, bodyHtml, okText, askReason) {
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-body").innerHTML = bodyHtml;
    document.getElementById("confirm-ok").textContent = okText;
    document.getElementById("confirm-error").hidden = true;
    const reasonField = document.getElementById("confirm-reason-field");
    const reason = document.getElementById("confirm-reason");
    reasonField.hidden = !askReason;
    reason.value = "";
    dialog.returnValue = "";
    dialog.showModal();
    (askReason ? reason : document.getElementById("confirm-ok")).focus();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? reason.value : null), { once: true });
    });
  }

  function escapeText(text) {
    const div = document.createElement("div");
    div.textContent = text;
    return div.innerHTML;
  }

  async function act(button, action, fields, done) {
    button.disabled = true;
    try {
      const message = await post(action, fields);
      say(message, "ok");
      if (done) done();
    } catch (err) {
      say(err.message, "bad");
    } finally {
      button.disabled = false;
    }
  }

  const rollbackForm = document.getElementById("rollback-form");
  if (rollbackForm && dialog) {
    rollbackForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = rollbackForm.querySelector("button[type=submit]");
      const target = rollbackForm.elements.target.value;
      const reason = rollbackForm.elements.reason.value.trim();
      if (!reason) { rollbackForm.elements.reason.focus(); return; }
      let preview;
      try {
        const response = await fetch(rollbackForm.dataset.preview + "?target=" + encodeURIComponent(target),
                                     { headers: { "X-Fragment": "1" }, credentials: "same-origin" });
        if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.statusText);
        preview = await response.text();
      } catch (err) {
        say(err.message, "bad");
        return;
      }
      const body = preview + "<p><strong>Reason:</strong> " + escapeText(reason) + "</p>";
      const answer = await confirmDialog("Roll back " + document.body.dataset.endpoint + "?", body, "Roll back now", false);
      if (answer === null) { button.focus(); return; }
      await act(button, rollbackForm.action, { target, reason }, () => { rollbackForm.elements.reason.value = ""; });
      button.focus();
    });
  }

  // Rollout buttons live in a region that is re-rendered: listen on the document.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.matches("form[data-confirm]") || !dialog) return;
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    const verb = button.textContent.trim();
    const reason = await confirmDialog(verb + " rollout?", "<p>" + escapeText(form.dataset.confirm) + "</p>", verb, true);
    if (reason === null) { button.focus(); return; }
    await act(button, form.action, { reason });
  });

  // Fragments on demand: the layer grid of two versions, a stored sweep.
  for (const id of ["diff-form", "sweep-form"]) {
    const form = document.getElementById(id);
    if (!form) continue;
    const into = document.getElementById(id === "diff-form" ? "diff-grid" : "sweep-view");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const query = new URLSearchParams(new FormData(form)).toString();
      const response = await fetch(form.dataset.fragment + "?" + query, { headers: { "X-Fragment": "1" }, credentials: "same-origin" });
      if (response.ok) {
        into.innerHTML = await response.text();
      } else {
        say((await response.json().catch(() => ({}))).error || response.statusText, "bad");
      }
    });
  }
})();
