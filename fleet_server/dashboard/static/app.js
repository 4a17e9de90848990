// camfleet dashboard: a few actions over the REST API. No libraries, nothing remote.
"use strict";

function say(text, isError) {
  const box = document.getElementById("msg");
  if (!box) return;
  box.textContent = text;
  box.className = isError ? "msg error" : "msg";
  box.hidden = false;
}

// The session cookie (HttpOnly, SameSite=Strict) carries the signed-in person's token.
async function signIn() {
  const token = document.getElementById("login-token").value.trim();
  try {
    await call("POST", "/ui/login", { token: token });
    window.location = "/ui/";
  } catch (err) {
    say("sign-in refused: " + err.message, true);
  }
}

async function signOut() {
  await call("POST", "/ui/logout", {});
  window.location = "/ui/login";
}

async function call(method, url, body) {
  const resp = await fetch(url, {
    method: method,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const detail = data && data.detail ? JSON.stringify(data.detail) : resp.statusText;
    throw new Error(resp.status + " " + detail);
  }
  return data;
}

async function acknowledge(alertId) {
  try {
    await call("POST", "/api/alerts/" + alertId + "/acknowledge", {});
    say("alert " + alertId + " acknowledged", false);
    const row = document.getElementById("alert-" + alertId);
    if (row) {
      row.querySelector(".alert-state").textContent = "acknowledged";
      const btn = row.querySelector("button");
      if (btn) btn.remove();
    }
  } catch (err) {
    say("could not acknowledge: " + err.message, true);
  }
}

async function sendCommand(deviceId) {
  const cmd = document.getElementById("cmd").value;
  say("sending " + cmd + " ...", false);
  try {
    const res = await call("POST", "/api/devices/" + deviceId + "/commands?wait=true",
                           { cmd: cmd, timeout_s: 10 });
    say(cmd + ": " + res.state + (res.error ? " (" + res.error + ")" : "") +
        (res.result ? " " + JSON.stringify(res.result) : ""), res.state !== "succeeded");
  } catch (err) {
    say("command failed: " + err.message, true);
  }
}

async function saveTags(deviceId) {
  const words = document.getElementById("tags-edit").value.toLowerCase().split(/[\s,]+/);
  const tags = words.filter((w) => w.length > 0);
  try {
    const res = await call("PUT", "/api/devices/" + deviceId + "/tags", { tags: tags });
    const box = document.getElementById("tags");
    box.textContent = "";
    for (const t of res.tags) {
      const span = document.createElement("span");
      span.className = "tag";
      span.textContent = t;
      box.append(span, " ");
    }
    say("tags saved: " + (res.tags.join(" ") || "none"), false);
  } catch (err) {
    say("tags not saved: " + err.message, true);
  }
}

async function rollout(campaignId, what) {
  try {
    await call("POST", "/api/rollouts/" + campaignId + "/" + what, {});
    window.location.reload();
  } catch (err) {
    say(what + " refused: " + err.message, true);
  }
}

// issue 15: shut a misbehaving device out (broker deny role), or let it back in
async function quarantine(deviceId, on) {
  try {
    if (on) {
      await call("POST", "/api/devices/" + deviceId + "/quarantine",
                 { reason: "quarantined from the dashboard" });
    } else {
      await call("DELETE", "/api/devices/" + deviceId + "/quarantine", {});
    }
    window.location.reload();
  } catch (err) {
    say((on ? "quarantine" : "release") + " refused: " + err.message, true);
  }
}

// No inline handlers (the Content-Security-Policy allows only this file's script): buttons
// say what they do in data-action, and one listener dispatches.
const ACTIONS = {
  "sign-in": () => signIn(),
  "sign-out": () => signOut(),
  "acknowledge": (el) => acknowledge(el.dataset.alert),
  "send-command": (el) => sendCommand(el.dataset.device),
  "save-tags": (el) => saveTags(el.dataset.device),
  "rollout": (el) => rollout(el.dataset.campaign, el.dataset.what),
  "quarantine": (el) => quarantine(el.dataset.device, true),
  "release": (el) => quarantine(el.dataset.device, false),
};

document.addEventListener("click", (ev) => {
  const el = ev.target instanceof Element ? ev.target.closest("[data-action]") : null;
  if (!el || !Object.hasOwn(ACTIONS, el.dataset.action)) return;
  ev.preventDefault();
  ACTIONS[el.dataset.action](el);
});

document.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && ev.target instanceof Element && ev.target.id === "login-token") {
    signIn();
  }
});
