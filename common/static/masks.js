// camfleet dashboard: draw a camera's masks over its reference frame (issue 20).
// Vanilla, no libraries, loaded as a file (the Content-Security-Policy allows no inline
// script). Click on the image to add corners; "close polygon" ends one; "save masks"
// sends them to PUT /api/devices/{id}/masks (the server checks them and says what is wrong).
"use strict";

(function () {
  const editor = document.getElementById("mask-editor");
  if (!editor) return;
  const device = editor.dataset.device;
  const masks = JSON.parse(editor.dataset.masks || "{}");
  masks.privacy = masks.privacy || [];
  masks.motion = masks.motion || [];
  const svg = editor.querySelector(".mask-layer");
  const msg = document.getElementById("mask-msg");
  const NS = "http://www.w3.org/2000/svg";
  let kind = "privacy";
  let draft = [];

  function say(text, isError) {
    msg.textContent = text;
    msg.className = isError ? "msg error" : "muted";
  }

  function round(v) {
    return Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
  }

  function draw() {
    if (!svg) return;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    for (const k of ["privacy", "motion"]) {
      for (const poly of masks[k]) {
        const p = document.createElementNS(NS, "polygon");
        p.setAttribute("class", "mask mask-" + k);
        p.setAttribute("points", poly.map((c) => c[0] + "," + c[1]).join(" "));
        svg.appendChild(p);
      }
    }
    if (draft.length) {
      const d = document.createElementNS(NS, "polyline");
      d.setAttribute("class", "mask mask-draft");
      d.setAttribute("points", draft.map((c) => c[0] + "," + c[1]).join(" "));
      svg.appendChild(d);
    }
  }

  function closeDraft() {
    if (draft.length < 3) {
      say("a polygon needs at least 3 corners", true);
      return false;
    }
    masks[kind].push(draft);
    draft = [];
    draw();
    return true;
  }

  async function send(method, url, body) {
    const resp = await fetch(url, {
      method: method,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      throw new Error(resp.status + " " + (data && data.detail ? data.detail : resp.statusText));
    }
    return data;
  }

  const actions = {
    "new-privacy": () => { kind = "privacy"; draft = []; say("privacy mask: click the corners", false); },
    "new-motion": () => { kind = "motion"; draft = []; say("motion mask: click the corners", false); },
    "close": () => closeDraft(),
    "undo": () => {
      if (draft.length) draft.pop(); else if (masks[kind].length) masks[kind].pop();
      draw();
    },
    "save": async () => {
      if (draft.length && !closeDraft()) return;
      try {
        const out = await send("PUT", "/api/devices/" + device + "/masks", { masks: masks });
        editor.dataset.version = out.version;
        say("saved: masks version " + out.version, false);
      } catch (err) {
        say("not saved: " + err.message, true);
      }
    },
    "confirm": async () => {
      try {
        const out = await send("POST", "/api/devices/" + device + "/masks/confirm", {});
        say("confirmed: masks version " + out.version, false);
      } catch (err) {
        say("not confirmed: " + err.message, true);
      }
    },
  };

  editor.addEventListener("click", (ev) => {
    const button = ev.target instanceof Element ? ev.target.closest("[data-mask-action]") : null;
    if (button && Object.hasOwn(actions, button.dataset.maskAction)) {
      ev.preventDefault();
      actions[button.dataset.maskAction]();
      return;
    }
    if (svg && ev.target instanceof Element && svg.contains(ev.target)) {
      const box = svg.getBoundingClientRect();
      draft.push([round((ev.clientX - box.left) / box.width),
                  round((ev.clientY - box.top) / box.height)]);
      draw();
    }
  });

  draw();
})();
