# ruff: noqa: E501  (HTML template: long lines are markup, not code)
"""The report's one Jinja2 template: inline CSS, no script, no external resource of any kind."""

from __future__ import annotations

REPORT_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>imgbatch report: job {{ s.job_id[:8] }}</title>
<style>
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #263238; color: #fff; padding: 12px 24px; }
header h1 { margin: 0; font-size: 20px; }
header nav a { color: #b3e5fc; margin-right: 14px; text-decoration: none; }
main { padding: 8px 24px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid #e0e0e0; border-radius: 6px; padding: 10px 16px; margin: 14px 0; }
h2 { font-size: 17px; margin: 4px 0 10px; }
table.kv td { padding: 2px 12px 2px 0; vertical-align: top; }
table.kv td:first-child { color: #666; white-space: nowrap; }
table.list { border-collapse: collapse; }
table.list td, table.list th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
.bad { color: #c62828; font-weight: 600; }
.warn { color: #ef6c00; }
.charts img { max-width: 100%; height: auto; display: inline-block; vertical-align: top; margin: 4px 8px 4px 0; }
details { margin: 6px 0; }
details > summary { cursor: pointer; padding: 4px 0; font-weight: 600; }
details > summary .meta { font-weight: 400; color: #666; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; padding: 4px 0 8px; }
.card { width: 136px; border: 1px solid #e0e0e0; border-radius: 4px; padding: 4px; background: #fff; font-size: 11px; }
.card .pic { width: 128px; height: 128px; display: flex; align-items: center; justify-content: center; background: #f0f0f0; overflow: hidden; }
.card .pic img { max-width: 128px; max-height: 128px; }
.card .pic.none { color: #999; font-size: 12px; text-align: center; padding: 4px; box-sizing: border-box; }
.card .pic.missing { background: repeating-linear-gradient(45deg, #fbe9e7, #fbe9e7 8px, #fff 8px, #fff 16px); color: #bf360c; font-weight: 600; }
.card .name { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.card .label { font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.pair { display: flex; gap: 6px; border: 1px solid #e0e0e0; border-radius: 4px; padding: 4px; background: #fff; }
.pair .card { border: none; }
.arrow { color: #888; font-size: 16px; }
.verdicts { width: 150px; font-size: 12px; display: flex; flex-direction: column; justify-content: center; }
.verdict { overflow-wrap: anywhere; }
ul.errs { margin: 2px 0 8px; padding-left: 20px; }
ul.errs li { margin: 1px 0; }
.muted { color: #777; }
</style>
</head>
<body>
<header>
<h1>imgbatch report &middot; job <span class="mono">{{ s.job_id }}</span></h1>
<nav>
<a href="#summary">Summary</a><a href="#charts">Charts</a><a href="#gallery">Gallery</a><a href="#doubtful">Least confident</a><a href="#errors">Errors ({{ s.error }})</a>{% if compare %}<a href="#changes">Label changes ({{ compare.count }})</a>{% endif %}
</nav>
</header>
<main>

<section id="summary">
<h2>Summary</h2>
<table class="kv">
<tr><td>images</td><td><b>{{ s.total }}</b>: {{ s.ok }} classified, <span class="{{ 'bad' if s.error else '' }}">{{ s.error }} errors</span>{% if s.pending %}, <span class="warn">{{ s.pending }} still pending (job {{ s.state }})</span>{% endif %}</td></tr>
<tr><td>throughput</td><td>{% if s.images_per_second %}<b>{{ '%.1f' % s.images_per_second }} images/s</b> ({{ s.results }} results in {{ '%.1f' % s.seconds }} s from submission to the last result){% else %}&mdash;{% endif %}</td></tr>
<tr><td>submitted</td><td>{{ s.created_at.strftime('%Y-%m-%d %H:%M:%S UTC') }}{% if s.finished_at %}; finished {{ s.finished_at.strftime('%Y-%m-%d %H:%M:%S UTC') }}{% endif %}</td></tr>
<tr><td>directories</td><td>{% for r in s.roots %}<code>{{ r }}</code>{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
<tr><td>model</td><td><code>{{ s.model_path }}</code><br>sha256 <code>{{ s.model_sha256 }}</code>{% if s.result_model_sha256s and s.result_model_sha256s != [s.model_sha256] %}<br><span class="bad">results were written by models {% for h in s.result_model_sha256s %}<code>{{ h[:12] }}</code> {% endfor %}</span>{% endif %}</td></tr>
<tr><td>workers</td><td>{{ s.workers|length }}: {% for w in s.workers[:20] %}<code>{{ w.worker }}</code> ({{ w.images }}){% if not loop.last %}, {% endif %}{% endfor %}{% if s.workers|length > 20 %} and {{ s.workers|length - 20 }} more{% endif %}</td></tr>
<tr><td>latency p50 / p95</td><td>{% for st in stages %}{{ st.title }} {{ '%.1f' % st.p50 }} / {{ '%.1f' % st.p95 }} ms{% if not loop.last %}; {% endif %}{% endfor %}</td></tr>
<tr><td>labels</td><td>{{ labels|length }} distinct</td></tr>
</table>
</section>

<section id="charts" class="charts">
<h2>Where the time went</h2>
{% for c in charts %}{% if c.uri %}<img id="chart-{{ c.key }}" class="chart" src="{{ c.uri }}" alt="{{ c.alt }}">{% else %}<p class="muted">{{ c.alt }}: no data</p>{% endif %}
{% endfor %}
</section>

{% macro card(path, thumb, line1, line2, title) -%}
<div class="card" title="{{ title }}">
{%- if thumb and thumb.uri %}<div class="pic"><img src="{{ thumb.uri }}" alt="{{ path|shortpath }}" loading="lazy" decoding="async"></div>
{%- elif thumb and thumb.missing %}<div class="pic none missing">file missing</div>
{%- elif thumb %}<div class="pic none">no preview<br>{{ thumb.problem|truncate(60) }}</div>
{%- else %}<div class="pic none">not shown</div>{% endif %}
<div class="label">{{ line1 }}</div><div class="name">{{ line2 }}</div>
</div>
{%- endmacro %}

<section id="gallery">
<h2>What the model found: {{ labels|length }} labels, largest first</h2>
<p class="muted">Up to {{ per_label }} most confident images shown per label{% if labels_without_thumbs %}, for the {{ groups|length }} largest labels; the other {{ labels_without_thumbs|length }} labels are counted below{% endif %}. Hover an image for its top-5.</p>
{% for g in groups %}
<details class="group"{% if loop.index <= open_groups %} open{% endif %}>
<summary>{{ g.label }} <span class="meta">&mdash; {{ g.count }} image{{ '' if g.count == 1 else 's' }}, mean score {{ '%.2f' % g.mean_score }}, lowest {{ '%.2f' % g.min_score }}{% if g.count > g.images|length %}; {{ g.images|length }} shown{% endif %}</span></summary>
<div class="grid">{% for im in g.images %}{{ card(im.path, thumbs.get(im.path), '%.3f' % im.score, im.path|shortpath, im.path|shown ~ '\n' ~ (im.top5|top5text)) }}{% endfor %}</div>
</details>
{% endfor %}
{% if labels_without_thumbs %}
<details><summary>{{ labels_without_thumbs|length }} more labels <span class="meta">(counts only)</span></summary>
<table class="list"><tr><th>label</th><th class="num">images</th><th class="num">mean score</th></tr>
{% for l in labels_without_thumbs %}<tr><td>{{ l.label }}</td><td class="num">{{ l.count }}</td><td class="num">{{ '%.2f' % l.mean_score }}</td></tr>
{% endfor %}</table>
</details>
{% endif %}
{% if not labels %}<p class="muted">No image was classified.</p>{% endif %}
</section>

<section id="doubtful">
<h2>Least confident: the {{ lowest|length }} lowest top-1 scores</h2>
<div class="grid">{% for im in lowest %}{{ card(im.path, thumbs.get(im.path), im.label ~ ' ' ~ ('%.3f' % im.score), im.path|shortpath, im.path|shown ~ '\n' ~ (im.top5|top5text)) }}{% endfor %}</div>
{% if not lowest %}<p class="muted">No image was classified.</p>{% endif %}
</section>

<section id="errors">
<h2>Errors: {{ s.error }} image{{ '' if s.error == 1 else 's' }} failed{% if error_groups %}, {{ error_groups|length }} reason{{ '' if error_groups|length == 1 else 's' }}{% endif %}</h2>
{% for e in error_groups %}
<details class="error-group" open>
<summary><span class="bad">{{ e.reason }}</span> <span class="meta">&mdash; {{ e.count }} file{{ '' if e.count == 1 else 's' }}</span></summary>
<ul class="errs">{% for path, full in e.items %}<li><code>{{ path|shortpath }}</code>{% if full != e.reason %} <span class="muted">{{ full }}</span>{% endif %}</li>
{% endfor %}{% if e.count > e.items|length %}<li class="muted">&hellip; and {{ e.count - e.items|length }} more (all of them: <code>imgbatch results {{ s.job_id[:8] }} --format csv</code>)</li>{% endif %}</ul>
</details>
{% endfor %}
{% if not error_groups %}<p>No errors.</p>{% endif %}
</section>

{% if compare %}
<section id="changes">
<h2>Label changes: job <span class="mono">{{ s.job_id[:8] }}</span> &rarr; job <span class="mono">{{ compare.job_id[:8] }}</span></h2>
<p>{{ compare.count }} of {{ compare.common }} images present in both jobs (matched by path) changed label{% if compare.count > compare.changes|length %}; the first {{ compare.changes|length }} by path are shown{% endif %}.</p>
<p class="muted">Both jobs read the same path, so each image is shown once with the two predictions beside it.</p>
<div class="grid">{% for c in compare.changes %}<div class="pair change">
{{ card(c.path, thumbs.get(c.path), '', c.path|shortpath, c.path|shown) }}
<div class="verdicts"><div class="verdict"><span class="muted">job {{ s.job_id[:8] }}</span><br><b>{{ c.label_a or c.status_a }}</b>{% if c.score_a is not none %} {{ '%.3f' % c.score_a }}{% endif %}</div>
<div class="arrow">&darr;</div>
<div class="verdict"><span class="muted">job {{ compare.job_id[:8] }}</span><br><b>{{ c.label_b or c.status_b }}</b>{% if c.score_b is not none %} {{ '%.3f' % c.score_b }}{% endif %}</div></div>
</div>{% endfor %}</div>
</section>
{% endif %}

<p class="muted">Made by <code>imgbatch report</code> at {{ generated }}; self-contained: no network needed.</p>
</main>
</body>
</html>
"""
