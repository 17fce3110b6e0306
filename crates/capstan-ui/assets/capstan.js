// Capstan's dashboard: the theme toggle, keyboard shortcuts (`?` lists them), and the live stream's state shown in the
// header. Loaded as a file: the Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  var root = document.documentElement;
  var saved = localStorage.getItem("capstan-theme");
  if (saved === "light" || saved === "dark") root.setAttribute("data-theme", saved);

  function toggleTheme() {
    var dark = root.getAttribute("data-theme") === "dark" ||
      (!root.getAttribute("data-theme") && window.matchMedia("(prefers-color-scheme: dark)").matches);
    var next = dark ? "light" : "dark";
    root.setAttribute("data-theme", next);
    localStorage.setItem("capstan-theme", next);
  }

  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }

  var pending = null;
  document.addEventListener("keydown", function (e) {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (pending === "g") {
      pending = null;
      var to = { o: "/ui", a: "/ui?kind=App", s: "/ui?kind=Sync", c: "/ui?kind=Certificate" }[e.key];
      if (to) { e.preventDefault(); window.location.assign(to); }
      return;
    }
    if (e.key === "g") { pending = "g"; return; }
    if (e.key === "/") {
      var search = document.getElementById("search");
      if (search) { e.preventDefault(); search.focus(); }
    } else if (e.key === "?") {
      var help = document.getElementById("help");
      if (help && help.showModal) help.showModal();
    } else if (e.key === "t") {
      toggleTheme();
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("theme");
    if (button) button.addEventListener("click", toggleTheme);
    var close = document.getElementById("help-close");
    if (close) close.addEventListener("click", function () { document.getElementById("help").close(); });
  });

  // The live stream: "live" while connected, "reconnecting…" while the browser retries (EventSource does).
  function live(text, lost) {
    var el = document.getElementById("live");
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("lost", lost);
  }
  // A session that ended sends the page to the sign-in, and back here afterwards.
  function signIn() {
    window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
  }
  document.addEventListener("htmx:sseOpen", function () { live("live", false); });
  document.addEventListener("htmx:sseError", function () {
    live("reconnecting…", true);
    // A stream refused because the session ended: the sign-in, not endless reconnecting.
    fetch("/ui/session", { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401) signIn();
    }).catch(function () {});
  });
  document.addEventListener("htmx:responseError", function (e) {
    if (e.detail.xhr && e.detail.xhr.status === 401) signIn();
  });
})();
