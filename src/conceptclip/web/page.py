"""The demo page: one HTML document with inline CSS and JS. Server data is inserted as JSON and
every text the page shows is set through `textContent` (never parsed as HTML)."""

from __future__ import annotations

import json
from typing import Any

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>conceptclip demo</title>
<style>
:root { --ink:#1d2733; --muted:#5b6776; --line:#d9dee5; --accent:#1f5f99; --bg:#f6f8fa; --bad:#b3261e; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0; }
header { background: var(--accent); color: #fff; padding: 16px 28px; }
header h1 { margin: 0; font-size: 21px; }
header p { margin: 4px 0 0; font-size: 13px; opacity: .9; }
main { padding: 18px 28px 40px; max-width: 1180px; }
form { display: flex; gap: 12px; align-items: center; padding: 14px; background: var(--bg); border: 1px solid var(--line); border-radius: 8px; }
button { background: var(--accent); color: #fff; border: 0; border-radius: 6px; padding: 8px 18px; font-size: 14px; cursor: pointer; }
button:disabled { opacity: .5; cursor: progress; }
#status { color: var(--muted); font-size: 13px; }
#error { display: none; margin: 14px 0; padding: 10px 14px; border: 1px solid var(--bad); background: #fdecea; color: var(--bad); border-radius: 6px; }
#result { display: none; margin-top: 18px; }
.row { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.panel { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
#shown { width: 224px; height: 224px; border-radius: 6px; image-rendering: auto; }
#prediction { font-size: 22px; font-weight: 650; margin: 0 0 6px; }
h2 { font-size: 15px; margin: 0 0 8px; }
.bar { display: grid; grid-template-columns: 190px 240px 60px; gap: 8px; align-items: center; font-size: 13px; margin: 3px 0; }
.track { background: #eef1f4; height: 12px; border-radius: 6px; overflow: hidden; }
.fill { height: 12px; display: block; }
.prob .fill { background: var(--accent); }
.concept-bar .fill { background: #e08a1e; }
.name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.val { font-family: ui-monospace, Menlo, monospace; font-size: 12px; }
#maps { display: flex; gap: 12px; flex-wrap: wrap; }
#maps figure { margin: 0; width: 200px; }
#maps img { width: 200px; height: 200px; border-radius: 4px; }
#maps figcaption { font-size: 12px; color: var(--muted); }
#maps figure.failed { border: 1px solid #b40000; border-radius: 4px; padding: 6px; background: #fff4f4; }
.sanity-failed { font-size: 12px; color: #b40000; margin: 4px 0; }
.sanity-ok { font-size: 11px; color: var(--muted); margin-top: 2px; }
#rationale { margin: 0; padding-left: 20px; }
.note { color: var(--muted); font-size: 12.5px; }
</style>
</head>
<body>
<header>
  <h1>conceptclip demo</h1>
  <p id="runinfo"></p>
</header>
<main>
  <form id="upload">
    <input type="file" id="file" name="file" accept="image/*">
    <button type="submit" id="submit">Explain</button>
    <span id="status">Choose an image (at most <span id="limit"></span>).</span>
  </form>
  <div id="error" role="alert"></div>
  <section id="result">
    <div class="row">
      <div class="panel"><img id="shown" alt="the image as the model sees it"></div>
      <div class="panel" style="flex:1; min-width: 360px">
        <p id="prediction"></p>
        <h2>Class probabilities</h2>
        <div id="probabilities"></div>
        <h2 style="margin-top:12px">Concept scores</h2>
        <p class="note" id="concept-note"></p>
        <div id="concepts"></div>
      </div>
    </div>
    <div class="panel" style="margin-top:16px">
      <h2>Heat maps (predicted class)</h2>
      <div id="maps"></div>
    </div>
    <div class="panel" style="margin-top:16px">
      <h2>Explanation</h2>
      <ul id="rationale"></ul>
    </div>
  </section>
</main>
<script>
const INFO = __INFO__;
const $ = (id) => document.getElementById(id);
function mb(n) { return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.round(n / 1024) + " KB"; }
$("limit").textContent = mb(INFO.max_bytes);
$("runinfo").textContent = `run ${INFO.run} · method ${INFO.method} · backbone ${INFO.backbone} · classes: ${INFO.classnames.join(", ")}` +
  (INFO.concepts ? ` · ${INFO.concepts} concepts from ${INFO.concept_source}` : " · no concept bank");
function bar(cls, name, value, width, text) {
  const row = document.createElement("div"); row.className = "bar " + cls; row.title = name;
  const n = document.createElement("span"); n.className = "name"; n.textContent = name;
  const t = document.createElement("span"); t.className = "track";
  const f = document.createElement("span"); f.className = "fill"; f.style.width = (100 * Math.max(0, Math.min(1, width))).toFixed(1) + "%";
  t.appendChild(f);
  const v = document.createElement("span"); v.className = "val"; v.textContent = text;
  row.append(n, t, v); return row;
}
function showError(message) {
  $("error").textContent = message; $("error").style.display = "block"; $("result").style.display = "none";
}
function show(doc) {
  $("error").style.display = "none";
  $("shown").src = doc.image;
  $("prediction").textContent = `Prediction: ${doc.prediction} (${doc.probability.toFixed(2)})`;
  $("probabilities").replaceChildren(...doc.probabilities.map(p => bar("prob", p.class, p.p, p.p, p.p.toFixed(3))));
  $("concepts").replaceChildren(...doc.concepts.map(c => bar("concept-bar", c.name, c.score, c.bar, c.score.toFixed(3))));
  $("concept-note").textContent = doc.concept_kind === "method" ? "The method's own concept scores." :
    doc.concept_kind === "cosine" ? "Cosine similarity of the image with each concept prompt; bars relative to the lowest and highest concept." :
    "No concept bank for this run (start the server with --concepts BANK).";
  $("maps").replaceChildren(...doc.maps.map(m => {
    const fig = document.createElement("figure"); const img = document.createElement("img");
    img.className = "heatmap"; img.src = m.data_url; img.alt = m.title;
    const cap = document.createElement("figcaption"); cap.textContent = m.title;
    if (!m.failed) {
      if (m.sanity_text) { const ok = document.createElement("div"); ok.className = "sanity-ok"; ok.textContent = m.sanity_text; cap.append(ok); }
      fig.append(img, cap); return fig;
    }
    // a map that fails its sanity check is not shown as an explanation: the reason first, the map on request
    fig.className = "failed";
    const warn = document.createElement("div"); warn.className = "sanity-failed"; warn.textContent = m.sanity_text;
    const more = document.createElement("details"); const sum = document.createElement("summary");
    sum.textContent = "show the map anyway"; more.append(sum, img);
    fig.append(cap, warn, more); return fig;
  }));
  $("rationale").replaceChildren(...doc.rationale.map(line => { const li = document.createElement("li"); li.textContent = line; return li; }));
  $("result").style.display = "block";
}
$("upload").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) { showError("Choose an image file first."); return; }
  const form = new FormData(); form.append("file", file);
  $("submit").disabled = true; $("status").textContent = `Explaining ${file.name} ...`;
  try {
    const res = await fetch("api/explain", { method: "POST", body: form });
    let doc; try { doc = await res.json(); } catch (e) { doc = { error: `server answered ${res.status} without JSON` }; }
    if (!res.ok) { showError(doc.error || `server answered ${res.status}`); $("status").textContent = "Rejected."; }
    else { show(doc); $("status").textContent = `Explained ${doc.file} in ${doc.seconds.toFixed(2)} s.`; }
  } catch (e) {
    showError("Upload failed: " + e); $("status").textContent = "Failed.";
  } finally { $("submit").disabled = false; }
});
</script>
</body>
</html>
"""


def render_page(info: dict[str, Any]) -> str:
    """The page with the run's info embedded (JSON with `<`, `>` and `&` escaped, so no string
    can close the script element)."""
    data = json.dumps(info).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return PAGE.replace("__INFO__", data)
