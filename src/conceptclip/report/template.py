"""The report page: one jinja2 template, self-contained (inline CSS, images as data URLs, no
scripts, nothing fetched). Kept in Python so it ships with the package without package data."""

REPORT_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="conceptclip {{ version }}">
<title>{{ title }}</title>
<style>
:root { --ink:#1d2733; --muted:#5b6776; --line:#d9dee5; --accent:#1f5f99; --bg:#f6f8fa; --ok:#1e7d3a; --bad:#b3261e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0; background: #fff; }
header { background: var(--accent); color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; opacity: .9; font-size: 13px; }
nav { padding: 8px 28px; background: var(--bg); border-bottom: 1px solid var(--line); font-size: 13px; position: sticky; top: 0; z-index: 2; }
nav a { color: var(--accent); margin-right: 16px; text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1400px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 20px 0 6px; }
p.note { color: var(--muted); font-size: 12.5px; margin: 4px 0 10px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.figs { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.figs figure { margin: 0; }
.figs img { max-width: 520px; border: 1px solid var(--line); }
figcaption { font-size: 12px; color: var(--muted); max-width: 520px; }
.group { border: 1px solid var(--line); border-radius: 8px; padding: 4px 18px 14px; margin: 18px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(285px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px; background: #fff; }
.card .top { display: flex; gap: 10px; }
.card .top img { width: 128px; height: 128px; object-fit: cover; image-rendering: auto; border-radius: 4px; }
.card .pred { font-weight: 600; }
.ok { color: var(--ok); } .bad { color: var(--bad); }
.bars { margin: 8px 0; }
.bar { display: grid; grid-template-columns: 132px 1fr 46px; gap: 6px; align-items: center; font-size: 12px; margin: 2px 0; }
.bar .track { background: #eef1f4; height: 10px; border-radius: 5px; overflow: hidden; }
.bar .fill { background: #e08a1e; height: 10px; }
.bar .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.maps { display: flex; flex-wrap: wrap; gap: 6px; }
.maps figure { margin: 0; width: 84px; }
.maps img { width: 84px; height: 84px; border-radius: 3px; }
.maps figcaption { font-size: 10.5px; line-height: 1.2; }
.maps figure.failed { width: 180px; border: 1px solid #b40000; border-radius: 3px; padding: 4px; background: #fff4f4; }
.sanity-failed { font-size: 10.5px; color: #b40000; margin: 3px 0; }
.rationale { font-size: 12.5px; margin: 6px 0 0; padding-left: 18px; }
details { margin: 4px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { background: var(--bg); padding: 8px; overflow-x: auto; font-size: 11.5px; max-height: 360px; }
.warn { color: var(--bad); }
</style>
</head>
<body>
<header>
  <h1>{{ title }}</h1>
  <p>{{ runs|length }} run folder(s){% if unfinished %}, {{ unfinished|length }} unfinished{% endif %} · {{ groups|length }} group(s) · generated {{ generated }} by conceptclip {{ version }}</p>
</header>
<nav>
  <a href="#metrics">Metrics</a>
  {% if fewshot %}<a href="#fewshot">Few-shot</a>{% endif %}
  {% if base2novel %}<a href="#base2novel">Base-to-novel</a>{% endif %}
  {% for g in groups %}<a href="#{{ g.anchor }}">{{ g.method }}{% if g.k_label %} {{ g.k_label }}{% endif %}</a>{% endfor %}
  <a href="#runs">Runs</a>
</nav>
<main>

<section id="metrics">
<h2>Test metrics, mean ± std over seeds</h2>
<p class="note">Runs are grouped by method, method options, dataset, split kind, shots K and backbone; std is the sample
standard deviation over the group's seeds (0 for one seed); [low, high] for accuracy and macro AUC: the 95 % bootstrap
interval of the seed mean, resampling the part's images (1,000 resamples). ECE: expected calibration error, 15 equal-width bins.</p>
<table>
  <tr><th>group</th><th>dataset</th><th>backbone</th><th>seeds</th><th>part</th><th>n</th>
  {% for m in metric_names %}<th>{{ m }}</th>{% endfor %}</tr>
  {% for row in metric_rows %}
  <tr>{% if row.first %}<td rowspan="{{ row.span }}"><a href="#{{ row.anchor }}">{{ row.label }}</a></td>
  <td rowspan="{{ row.span }}">{{ row.dataset }}</td><td rowspan="{{ row.span }}" class="mono">{{ row.backbone }}</td>
  <td rowspan="{{ row.span }}">{{ row.seeds }}</td>{% endif %}
  <td>{{ row.part }}</td><td class="num">{{ row.n }}</td>
  {% for v in row.cells %}<td class="num">{{ v }}</td>{% endfor %}</tr>
  {% endfor %}
</table>
</section>

{% if fewshot %}
<section id="fewshot">
<h2>Few-shot</h2>
<p class="note">{{ fewshot.source }}</p>
<div class="figs"><figure><img alt="few-shot accuracy against shots" src="{{ fewshot.plot }}"><figcaption>Test accuracy (%) against K shots per class, mean ± std over seeds.</figcaption></figure></div>
<p class="note">Cells: test accuracy (%), mean ± std over seeds [95 % bootstrap interval of the seed mean, resampling the test images].</p>
<table>
  <tr><th>method</th>{% for k in fewshot.shots %}<th>K={{ k }}</th>{% endfor %}</tr>
  {% for row in fewshot.rows %}<tr><td>{{ row.method }}</td>{% for v in row.cells %}<td class="num">{{ v }}</td>{% endfor %}</tr>{% endfor %}
</table>
</section>
{% endif %}

{% if base2novel %}
<section id="base2novel">
<h2>Base-to-novel</h2>
<p class="note">{{ base2novel.source }} H = 2·B·N / (B + N) of the seed-averaged base (B) and novel (N) accuracies.</p>
<table>
  <tr><th>method</th><th>K</th><th>seeds</th><th>base (%)</th><th>novel (%)</th><th>H (%)</th></tr>
  {% for r in base2novel.rows %}<tr><td>{{ r.method }}</td><td class="num">{{ r.shots }}</td><td class="num">{{ r.n_seeds }}</td>
  <td class="num">{{ r.base }}</td><td class="num">{{ r.novel }}</td><td class="num">{{ r.h }}</td></tr>{% endfor %}
</table>
{% if base2novel.plot %}<div class="figs"><figure><img alt="base-to-novel accuracy" src="{{ base2novel.plot }}"></figure></div>{% endif %}
</section>
{% endif %}

{% for g in groups %}
<section class="group" id="{{ g.anchor }}">
<h2>{{ g.label }}</h2>
<p class="note">{{ g.runs|length }} run(s), seeds {{ g.seeds }} · dataset {{ g.dataset }} · backbone <code>{{ g.backbone }}</code> · method options <code>{{ g.options }}</code></p>
{% if g.auc_rows %}
<table><tr><th>part</th>{% for c in g.auc_classes %}<th>AUC {{ c }}</th>{% endfor %}</tr>
{% for r in g.auc_rows %}<tr><td>{{ r.part }}</td>{% for v in r.cells %}<td class="num">{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
{% endif %}
<div class="figs">
{% for f in g.figures %}<figure><img alt="{{ f.caption }}" src="{{ f.src }}"><figcaption>{{ f.caption }}</figcaption></figure>{% endfor %}
</div>
{% if g.prompt_text %}
<h3>Textual explanation of the learned prompts</h3>
<p class="note">Concepts nearest (cosine distance) to each class's learned prompt feature; concepts from {{ g.concept_source }}.</p>
<table><tr><th>class</th><th>nearest concepts</th></tr>
{% for c, rows in g.prompt_text %}<tr><td>{{ c }}</td><td>{% for n, d in rows %}{{ n }} <span class="mono">({{ '%.3f'|format(d) }})</span>{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>{% endfor %}
</table>
{% endif %}
{% if g.cards %}
<h3>Test images (run {{ g.card_run }})</h3>
<p class="note">{{ g.card_note }}</p>
<div class="cards">
{% for c in g.cards %}
<div class="card">
  <div class="top"><img alt="test image {{ c.id }}" src="{{ c.image }}">
  <div><div class="mono">{{ c.id }}</div>
  <div>true: {{ c.truth }}</div>
  <div class="pred {{ 'ok' if c.correct else 'bad' }}">predicted: {{ c.prediction }} ({{ '%.2f'|format(c.probability) }}) {{ '✓' if c.correct else '✗' }}</div>
  </div></div>
  {% if c.concepts %}<div class="bars">{% for b in c.concepts %}
  <div class="bar" title="{{ b.name }}: {{ '%.4f'|format(b.score) }}"><span class="name">{{ b.name }}</span><span class="track"><span class="fill" style="display:block;width:{{ (100 * b.bar)|round(1) }}%"></span></span><span class="mono">{{ '%.3f'|format(b.score) }}</span></div>
  {% endfor %}</div>{% endif %}
  <div class="maps">{% for m in c.maps %}{% if m.failed %}<figure class="failed"><figcaption>{{ m.title }}</figcaption><div class="sanity-failed">{{ m.sanity_text }}</div><details><summary>show the map anyway</summary><img alt="{{ m.title }}" src="{{ m.src }}"></details></figure>{% else %}<figure><img alt="{{ m.title }}" src="{{ m.src }}" title="{{ m.sanity_text }}"><figcaption>{{ m.title }}</figcaption></figure>{% endif %}{% endfor %}</div>
  <ul class="rationale">{% for line in c.rationale %}<li>{{ line }}</li>{% endfor %}</ul>
</div>
{% endfor %}
</div>
{% elif g.card_note %}<p class="note">{{ g.card_note }}</p>{% endif %}
</section>
{% endfor %}

<section id="runs">
<h2>Runs</h2>
<p class="note">Every results folder read, with the sha256 of the split manifest it trained and tested on (split.json) and the
fingerprint of the dataset (ids, files, labels) at training time.</p>
<table>
<tr><th>run</th><th>method</th><th>seed</th><th>split</th><th>split sha256</th><th>dataset (fingerprint)</th><th>backbone (weights)</th><th>fit s</th><th>tested epoch</th><th>config</th></tr>
{% for r in run_rows %}
<tr><td class="mono">{{ r.path }}{% if not r.finished %} <span class="warn">(unfinished)</span>{% endif %}{% for p in r.problems %}<br><span class="warn">incomplete: {{ p }}</span>{% endfor %}</td><td>{{ r.method }}</td><td class="num">{{ r.seed }}</td>
<td>{{ r.split }}</td><td class="mono" title="{{ r.split_sha }}">{{ r.split_sha[:16] }}{% if r.split_ok is false %} <span class="warn">(split.json differs!)</span>{% endif %}</td>
<td>{{ r.dataset }} <span class="mono">({{ r.fingerprint }})</span></td><td class="mono">{{ r.backbone }} ({{ r.weights }})</td>
<td class="num">{{ r.fit }}</td><td class="num">{{ r.best_epoch }}</td>
<td><details><summary>config.json</summary><pre>{{ r.config }}</pre></details></td></tr>
{% endfor %}
</table>
</section>
</main>
</body>
</html>
"""
