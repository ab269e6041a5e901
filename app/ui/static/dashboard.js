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

// What identifies a focusable control across a refresh (its copy text, its form's action, or its link).
function focusKey(control) {
  if (!control || control === document.body) {
    return null;
  }
  const form = control.closest("form");
  return control.dataset.copy || (form && form.getAttribute("action")) || control.getAttribute("href");
}

function refocus(element, key) {
  const match = Array.from(element.querySelectorAll("button, a")).find((control) => focusKey(control) === key);
  if (match) {
    match.focus();
  }
}

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
        // Replace only on change; keyboard focus moves to the same control in the new content.
        const focused = element.contains(document.activeElement) ? document.activeElement : null;
        const typing = focused && focused.matches("input, select, textarea");
        if (html !== last && !typing) {
          const key = focusKey(focused);
          element.innerHTML = html;
          last = html;
          if (key) {
            refocus(element, key);
          }
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
