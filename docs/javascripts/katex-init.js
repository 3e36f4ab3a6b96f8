// Typesets the math that pymdownx.arithmatex (generic mode) leaves in the pages:
// <span class="arithmatex">\(...\)</span> inline and <div class="arithmatex">\[...\]</div> displayed.
// KaTeX 0.19.1 (MIT, see katex/LICENSE) ships with the site under javascripts/katex/, fonts
// included, so the pages render offline; nothing is fetched from a CDN.
(function () {
  "use strict";

  function render() {
    var nodes = document.querySelectorAll(".arithmatex");
    for (var i = 0; i < nodes.length; i++) {
      var tex = nodes[i].textContent;
      var display = tex.startsWith("\\[") && tex.endsWith("\\]");
      var inline = tex.startsWith("\\(") && tex.endsWith("\\)");
      if (display || inline) {
        katex.render(tex.slice(2, -2), nodes[i], { displayMode: display, throwOnError: false });
      }
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }
})();
