// The dashboard's only script (served by the app itself; the page's CSP allows no other).
// 1. Copy buttons: <button data-copy="text"> puts the text on the clipboard and says so.
// 2. Live updates: an element with data-poll-url is refreshed from that HTML fragment every
//    data-poll-seconds, without reloading the page; a lost session reloads the page (to sign-in).
"use strict";

function announce(message) {
  const region = document.getElementById("announcer");
  if (region) {
    region.textContent = "";
    window.setTimeout(() => { region.textContent = message; }, 50);
  }
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain HTTP on a non-local address has no Clipboard API: fall back to a selected, hidden textarea.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.appendChild(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) {
    throw new Error("copy refused");
  }
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) {
    return;
  }
  const label = button.textContent;
  try {
    await copyText(button.dataset.copy);
    button.textContent = "Copied";
    button.dataset.copied = "true";
    announce("Copied to the clipboard");
  } catch (error) {
    button.textContent = "Copy failed: select the text";
    announce("Copying failed");
  }
  window.setTimeout(() => { button.textContent = label; }, 2000);
});

function poll(element) {
  const url = element.dataset.pollUrl;
  const seconds = Math.max(1, Number(element.dataset.pollSeconds) || 5);
  let last = element.innerHTML;
  let busy = false;
  window.setInterval(async () => {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        headers: { "X-Dashboard-Fragment": "1" },
        cache: "no-store",
      });
      if (response.status === 401) {
        window.location.reload();
        return;
      }
      if (response.ok) {
        const html = await response.text();
        // Replace only on change, so focus and text selection survive quiet polls.
        if (html !== last && !element.contains(document.activeElement)) {
          element.innerHTML = html;
          last = html;
        }
      }
    } catch (error) {
      // A network blip: the next poll tries again.
    } finally {
      busy = false;
    }
  }, seconds * 1000);
}

document.querySelectorAll("[data-poll-url]").forEach(poll);
