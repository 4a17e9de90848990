// camfleet dashboard: pages update themselves. Every data-refresh-s seconds the page's own
// URL is fetched again and each element marked data-live is replaced by its new version
// (same id); scroll position, form fields and filters stay as they are. When the server
// cannot be reached the header says since when the page is stale.
"use strict";

(function () {
  const body = document.body;
  const period = Math.max(2, parseFloat(body.dataset.refreshS || "15")) * 1000;
  const status = document.getElementById("live-status");
  const updated = document.getElementById("updated-at");
  let lastGood = updated ? updated.textContent : "";
  let stale = false;
  let busy = false;

  function markStale() {
    if (!status) return;
    stale = true;
    status.classList.add("stale");
    status.textContent = (status.dataset.stale || "stale") + " " + lastGood;
  }

  function markFresh(doc) {
    const fresh = doc.getElementById("live-status");
    if (status && fresh) {
      status.className = fresh.className;
      status.textContent = "";
      for (const node of Array.from(fresh.childNodes)) status.append(node);
      const t = document.getElementById("updated-at");
      lastGood = t ? t.textContent : lastGood;
    }
    stale = false;
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const resp = await fetch(window.location.href, {
        credentials: "same-origin", headers: { "X-Camfleet-Live": "1" }, cache: "no-store",
      });
      if (!resp.ok || (resp.redirected && resp.url.indexOf("/ui/login") >= 0)) {
        markStale();
        return;
      }
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      for (const old of Array.from(document.querySelectorAll("[data-live][id]"))) {
        if (old.contains(document.activeElement) && document.activeElement !== document.body) {
          continue; // someone is typing or clicking in it
        }
        const next = doc.getElementById(old.id);
        if (next) old.replaceWith(document.adoptNode(next));
      }
      markFresh(doc);
      document.dispatchEvent(new CustomEvent("camfleet:refreshed"));
    } catch (err) {
      markStale();
    } finally {
      busy = false;
    }
  }

  function loop() {
    window.setTimeout(async () => { await refresh(); loop(); }, period);
  }

  // language links come back to this very page (path and filters), not the section's first
  for (const id of ["lang-vi", "lang-en"]) {
    const a = document.getElementById(id);
    if (!a) continue;
    a.addEventListener("click", () => {
      const here = window.location.pathname + window.location.search;
      a.href = a.href.split("?")[0] + "?next=" + encodeURIComponent(here);
    });
  }

  window.camfleetRefresh = refresh; // tests and the "updated" label
  if (status) status.addEventListener("click", refresh);
  if (!stale) loop();
})();
