"""Reports that open anywhere: one self-contained HTML file per run or experiment, and a run's model card.

A report is what a student attaches to a homework answer: plotly.js is inlined once, thumbnails are
embedded as data: URIs, the CSS is inline and nothing points outside the file (no CDN, no fonts, no
MathJax), so it opens in any browser with no network and no lab. Every string that came from a user
(class names, dataset paths, author, run names) is HTML-escaped; figure data goes through plotly's JSON,
which escapes `<` and `>`.

The figures come from report_figures (plain plotly.graph_objects: the engine cannot import the
dashboard's charts.py); this module assembles the page, the model card and the reproducibility card.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any

from engine.errors import NotFound
from engine.runs import experiments
from engine.runs import report_figures as figures
from engine.runs.results import RunResults
from engine.training import summaries
from engine.training.config import TrainConfig

_DATA_URI = re.compile(r"data:image/(?:jpeg|png);base64,[A-Za-z0-9+/]+={0,2}")
THUMBNAIL_URI_LIMIT = 256 * 1024
GALLERY_LIMIT = 24  # misclassified thumbnails embedded (the rest are counted)
THUMBNAIL_SIDE = 112  # pixels; JPEG at this size keeps a 24-image gallery near 100 KB
FIGURE_HEIGHT = 340
# `python -m engine retrain` flag -> the config key it sets (dotted for TrainConfig fields). The order
# is the command's order. tests/test_report.py checks it against the retrain parser both ways, so a
# flag added to the CLI without a line here fails a test instead of making the card silently wrong.
RETRAIN_FLAGS = (
    ("--image_dir", "source"),
    ("--architecture", "architecture"),
    ("--weights", "weights"),
    ("--learning_rate", "train.learning_rate"),
    ("--how_many_training_steps", "train.steps"),
    ("--train_batch_size", "train.batch_size"),
    ("--eval_step_interval", "train.eval_interval"),
    ("--testing_percentage", "testing_percentage"),
    ("--validation_percentage", "validation_percentage"),
    ("--optimizer", "train.optimizer"),
    ("--fine_tune_layers", "train.fine_tune_layers"),
    ("--seed", "train.seed"),
    ("--name", "name"),
    ("--author", "author"),
)
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
 background:#f6f7f9;color:#1f2933;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:1.6rem;margin:0 0 4px} h2{font-size:1.2rem;margin:32px 0 8px;border-bottom:1px solid #d9dee4;
 padding-bottom:4px} h3{font-size:1rem;margin:16px 0 6px}
.meta{color:#52606d;margin:0 0 16px} .muted{color:#7b8794;font-size:.9rem}
.headline{display:flex;gap:16px;flex-wrap:wrap;margin:16px 0}
.metric{background:#fff;border:1px solid #d9dee4;border-radius:8px;padding:12px 18px;min-width:150px}
.metric .label{font-size:.8rem;color:#52606d;text-transform:uppercase;letter-spacing:.04em}
.metric .value{font-size:1.7rem;font-weight:600}
.row{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:16px}
@media (max-width:860px){.row{grid-template-columns:minmax(0,1fr)}}
.card{background:#fff;border:1px solid #d9dee4;border-radius:8px;padding:8px 12px;margin:8px 0}
table{border-collapse:collapse;background:#fff;font-size:.9rem;margin:8px 0;width:100%}
th,td{border:1px solid #d9dee4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#1f2933;color:#f5f7fa;padding:12px;border-radius:6px;white-space:pre-wrap;word-break:break-all}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.gallery figure{margin:0;width:128px;background:#fff;border:1px solid #d9dee4;border-radius:6px;padding:6px}
.gallery img{width:112px;height:112px;object-fit:cover;display:block;margin:0 auto}
.gallery figcaption{font-size:.75rem;word-break:break-word}
.flag{font-weight:600} footer{margin-top:40px;color:#7b8794;font-size:.8rem}
"""
# plots are drawn while the page parses; once it is laid out, fit each to its final cell
_RESIZE = (
    "<script>window.addEventListener('load',function(){document.querySelectorAll('.js-plotly-plot')"
    ".forEach(function(p){Plotly.Plots.resize(p)})})</script>"
)


# -- public API -------------------------------------------------------------------------------------
def report_kind(item_id: str, store=None) -> str:
    """ "run" or "experiment" for an id the store knows; NotFound names the id otherwise."""
    store = _open(store)
    for kind, get in (("run", store.get_run), ("experiment", store.get_experiment)):
        try:
            get(item_id)
            return kind
        except NotFound:
            continue
    raise NotFound(f"No run or experiment with id {item_id!r} (see `python -m engine runs`)")


def report_file_name(kind: str, item_id: str) -> str:
    """The default file name: says it is a Classifier Lab report of which run or experiment."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(item_id))
    return f"classifier-lab-{kind}-{safe}.html"


def report_html(item_id: str, store=None) -> tuple[str, str]:
    """(kind, HTML) of the report of a run or an experiment, decided by looking the id up."""
    kind = report_kind(item_id, store)
    make = run_report_html if kind == "run" else experiment_report_html
    return kind, make(item_id, store)


def run_report_html(run_id: str, store=None) -> str:
    """One self-contained HTML page on a run: results, curves, confusion, gallery, config, cards."""
    store = _open(store)
    run = store.get_run(run_id)
    res = RunResults.of(run)
    history = store.get_history(run_id, phase="train")
    names = _class_names(run, res)
    page = _Page(f"Run {run.name}")
    page.header(f"Run {run.name}", _run_meta(run))
    headline = [
        ("Test accuracy", _pct(res.test_accuracy), f"on {res.test_count} test images"),
        ("Validation accuracy", _pct(res.validation_accuracy), "last evaluation"),
        ("Classes", str(len(names) or "—"), ""),
        ("Steps", str(int(history[-1]["step"])) if history else "—", "head training"),
    ]
    if res.fine_tune:  # what unfreezing backbone layers added over the head alone
        headline.insert(1, ("Head-only test accuracy", _pct(res.head_test_accuracy), "before fine-tuning"))
    page.metrics(headline)
    if res.note:
        page.para(res.note, "muted")
    if run.error:
        page.para(f"Error: {run.error}", "muted")
    page.section("Training curves")
    if history:
        page.figures([figures.curves(history, "accuracy"), figures.curves(history, "cross_entropy")])
        diagnosis = summaries.diagnose(history, None, len(names) or None)
        page.para(diagnosis.explanation)
    else:
        page.para("No evaluations were recorded.", "muted")
    page.section("Confusion matrix and per-class accuracy")
    if res.confusion_matrix and names:
        page.figures(
            [
                figures.confusion_matrix(res.confusion_matrix, names),
                figures.per_class_accuracy(res.per_class_accuracy),
            ]
        )
    else:
        page.para("No test results.", "muted")
    page.section("Misclassified test images")
    page.gallery(res.misclassified)
    page.section("Model card")
    page.card(model_card(run, res, names))
    page.section("Reproduce it")
    command, notes = reproduce_command(run.config)
    page.para("Run this in a Classifier Lab checkout (with the same dataset folder) to train it again:")
    page.code(command)
    for note in notes:
        page.para(note, "muted")
    page.section("Configuration")
    page.table(["Setting", "Value"], _flatten(run.config))
    page.section("Environment")
    page.table(["Fact", "Value"], _flatten(run.environment))
    page.table(["Phase", "Seconds"], [(k, f"{v:.2f}") for k, v in run.phases.items()])
    return page.html()


def experiment_report_html(experiment_id: str, store=None) -> str:
    """One self-contained HTML page on an experiment: overlaid curves, result table and verdicts."""
    store = _open(store)
    exp = store.get_experiment(experiment_id)
    rows = experiments.experiment_table(experiment_id, store)
    curves = experiments.experiment_curves(experiment_id, store)
    label = experiments.KINDS.get(exp.kind, exp.kind)
    page = _Page(f"Experiment {exp.name}")
    meta = [
        ("Experiment", exp.id),
        ("Kind", label),
        ("Created", _date(exp.created)),
        ("Runs", str(len(rows))),
    ]
    page.header(exp.name, meta)
    best = max(
        (r for r in rows if r.get("test_accuracy") is not None),
        key=lambda r: r["test_accuracy"],
        default=None,
    )
    page.metrics(
        [
            ("Best test accuracy", _pct(best and best["test_accuracy"]), best["name"] if best else ""),
            ("Runs", str(len(rows)), ", ".join(sorted({r["status"] for r in rows}))),
        ]
    )
    page.section("Curves of every run")
    if curves:
        target = exp.config.get("target") if exp.kind == "lr_race" else None
        page.figures(
            [
                figures.overlaid_curves(curves, "accuracy", target),
                figures.overlaid_curves(curves, "cross_entropy"),
            ]
        )
    else:
        page.para("No evaluations were recorded.", "muted")
    page.section("Results")
    columns = [c for c in experiments.COLUMNS[exp.kind] if c not in ("explanation", "flag")]
    page.table([_header(c) for c in columns], [[_cell(r, c) for c in columns] for r in rows])
    page.section("Verdicts")
    for row in rows:
        page.verdict(row["name"], row.get("flag"), row.get("explanation") or "")
    page.section("Settings")
    page.table(["Setting", "Value"], _flatten(exp.config))
    page.para(
        "Each run has its own report: python -m engine report RUN_ID (run ids are in the table above).",
        "muted",
    )
    return page.html()


def model_card_markdown(run_id: str, store=None) -> str:
    """The run's model card as Markdown (what run bundles carry as MODEL_CARD.md)."""
    store = _open(store)
    run = store.get_run(run_id)
    res = RunResults.of(run)
    lines = [f"# Model card: {run.name}", ""]
    for title, items in model_card(run, res, _class_names(run, res)):
        # Markdown renders inline HTML: a class named "<img onerror=...>" must stay text
        lines += [f"## {title}", ""] + [f"- {html.escape(item, quote=False)}" for item in items] + [""]
    return "\n".join(lines)


def model_card(run, res: RunResults, names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The model card as (section, plain-text lines): one source for the Markdown and the HTML card."""
    config = run.config or {}
    train = config.get("train") or {}
    splits = (res.dataset or {}).get("splits") or {}
    images = (res.dataset or {}).get("num_images")
    author = getattr(run, "author", None)
    origin = getattr(run, "origin", None) or {}
    details = [
        f"Run {run.id}, trained {_date(run.created)}" + (f" by {author}" if author else ""),
        f"Backbone {config.get('architecture', '?')} ({config.get('weights', '?')} weights), "
        f"a softmax head over its bottleneck features"
        + (
            f", top {train['fine_tune_layers']} backbone layers fine-tuned"
            if train.get("fine_tune_layers")
            else ""
        ),
        f"Classes ({len(names)}): " + ", ".join(names) if names else "Classes: unknown",
    ]
    if origin:
        details.append(
            f"Imported from {origin.get('from') or 'someone'} (their run {origin.get('original_run_id')})"
        )
    data = [
        f"Dataset: {config.get('source', '?')}"
        + (f", {images} images" if images else "")
        + (
            " (train {train} / validation {validation} / test {test})".format(
                **{k: splits.get(k, "?") for k in ("train", "validation", "test")}
            )
            if splits
            else ""
        ),
        f"Split: {config.get('validation_percentage', '?')}% validation, "
        f"{config.get('testing_percentage', '?')}% test, chosen by a stable hash of each file name",
    ]
    metrics = [f"Test accuracy: {_pct(res.test_accuracy)} on {res.test_count} test images"]
    metrics += [f"{name}: {_pct(acc)}" for name, acc in (res.per_class_accuracy or {}).items()]
    small = res.test_count < 100
    limits = [
        f"Evaluated on {res.test_count} test images"
        + (
            "; with so few, one image moves the accuracy by " + _pct(1 / res.test_count)
            if res.test_count
            else ""
        )
        + (" — treat it as a rough estimate" if small else ""),
        "Knows only the classes above: any other picture is still given one of them, "
        "often with high confidence",
        "Learned from a small class dataset: photos unlike it (lighting, angle, camera, background) "
        "may be misclassified",
        "Not for decisions about people, safety or health",
    ]
    use = [
        "Teaching and homework: classifying photos of the classes above, and comparing training settings",
        "Load model.keras with its labels.txt (one class name per output, in order) or classify in the lab",
    ]
    return [
        ("Model details", details),
        ("Training data", data),
        ("Intended use", use),
        ("Metrics", metrics),
        ("Limitations", limits),
    ]


def reproduce_command(config: dict[str, Any]) -> tuple[str, list[str]]:
    """(the `python -m engine retrain ...` command with every flag set from the config, notes).

    The notes name settings the command cannot carry (no CLI flag) whose value differs from the
    default, and the experiment a run belonged to, so the card never claims more than it reproduces.
    """
    config = dict(config or {})
    words = ["python", "-m", "engine", "retrain"]
    for flag, key in RETRAIN_FLAGS:
        value = _dotted(config, key)
        if value is None:
            continue
        words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    covered = {key.split(".", 1)[1] for _, key in RETRAIN_FLAGS if key.startswith("train.")}
    train, defaults = config.get("train") or {}, TrainConfig()
    extra = [
        f"{f.name}={train[f.name]!r}"
        for f in fields(TrainConfig)
        if f.name not in covered and f.name in train and train[f.name] != getattr(defaults, f.name)
    ]
    notes = []
    if extra:
        notes.append("Not settable from the command line, set these on the Train page: " + ", ".join(extra))
    if config.get("experiment_id"):
        notes.append(f"It was one run of experiment {config['experiment_id']}; this command trains it alone.")
    return " ".join(shlex.quote(w) for w in words), notes


# -- page builder -----------------------------------------------------------------------------------
class _Page:
    """An HTML page assembled section by section; every text passed in is escaped here."""

    def __init__(self, title: str) -> None:
        self.title, self.parts, self.has_figures = title, [], False

    def header(self, title: str, meta: Iterable[tuple[str, str]]) -> None:
        self.parts.append(f"<h1>{_e(title)}</h1>")
        line = " · ".join(f"{_e(k)}: <b>{_e(v)}</b>" for k, v in meta if v)
        self.parts.append(f'<p class="meta">{line}</p>')

    def metrics(self, items: Iterable[tuple[str, str, str]]) -> None:
        boxes = "".join(
            f'<div class="metric"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
            f'<div class="muted">{_e(note)}</div></div>'
            for label, value, note in items
        )
        self.parts.append(f'<div class="headline">{boxes}</div>')

    def section(self, title: str) -> None:
        anchor = title.lower().split()[0]
        self.parts.append(f'<h2 id="{_e(anchor)}">{_e(title)}</h2>')

    def para(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{_e(text)}</p>' if cls else f"<p>{_e(text)}</p>")

    def code(self, text: str) -> None:
        self.parts.append(f"<pre><code>{_e(text)}</code></pre>")

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        head = "".join(f"<th>{_e(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f'<td class="{_num_class(c)}">{_e(c)}</td>' for c in row) + "</tr>"
            for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def verdict(self, name: str, flag: str | None, explanation: str) -> None:
        mark = "✔ stable" if flag is None else f"⚠ {flag}"
        text = f'<span class="flag">{_e(mark)}</span> · <b>{_e(name)}</b>: {_e(explanation)}'
        self.parts.append(f'<div class="card">{text}</div>')

    def card(self, sections: list[tuple[str, list[str]]]) -> None:
        body = "".join(
            f"<h3>{_e(title)}</h3><ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"
            for title, items in sections
        )
        self.parts.append(f'<div class="card">{body}</div>')

    def figures(self, figs: Sequence[Any]) -> None:
        """Figures side by side (wrapping on narrow screens); plotly.js goes in the page head, once."""
        self.has_figures = True
        cells = "".join(
            "<div>"
            + fig.to_html(
                full_html=False,
                include_plotlyjs=False,
                include_mathjax=False,
                default_height=f"{FIGURE_HEIGHT}px",
                # plotly.py would otherwise write its cloud's address into the config
                config={"displaylogo": False, "responsive": True, "plotlyServerURL": ""},
            )
            + "</div>"
            for fig in figs
        )
        self.parts.append(f'<div class="row">{cells}</div>')

    def gallery(self, misclassified: list[dict[str, Any]]) -> None:
        if not misclassified:
            self.para("None: every test image was classified right (or there were none).", "muted")
            return
        shown, items = misclassified[:GALLERY_LIMIT], []
        for item in shown:
            uri = _travelling_thumbnail(item.get("thumbnail")) or thumbnail_uri(item.get("path"))
            picture = (
                f'<img alt="" src="{uri}">' if uri else '<div class="muted">image not on this machine</div>'
            )
            file = _e(_basename(item.get("path")))
            caption = (
                f"true <b>{_e(item.get('true'))}</b><br>said <b>{_e(item.get('predicted'))}</b> "
                f'({_pct(item.get("probability"))})<br><span class="muted">{file}</span>'
            )
            items.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
        self.parts.append(f'<div class="gallery">{"".join(items)}</div>')
        if len(misclassified) > len(shown):
            self.para(f"{len(misclassified) - len(shown)} more misclassified images are not shown.", "muted")

    def html(self) -> str:
        script = ""
        if self.has_figures:
            from plotly.offline import get_plotlyjs

            script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
        made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(self.title)} · Classifier Lab</title><style>{_CSS}</style>{script}</head>"
            f"<body><main>{''.join(self.parts)}"
            f"<footer>Classifier Lab report, made {made}. Self-contained: it needs no network.</footer>"
            f"</main>{_RESIZE if self.has_figures else ''}</body></html>"
        )


# -- helpers ----------------------------------------------------------------------------------------
def _open(store):
    if store is None:
        from engine.runs.store import RunStore

        store = RunStore()
    return store


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{float(value):.1%}"


def _date(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp)) if timestamp else "—"


def _basename(path: Any) -> str:
    return str(path or "").replace("\\", "/").rsplit("/", 1)[-1]


def _num_class(value: Any) -> str:
    return "num" if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _class_names(run, res: RunResults) -> list[str]:
    if res.class_names:
        return list(res.class_names)
    return list((res.dataset or {}).get("classes") or res.per_class_accuracy)


def _run_meta(run) -> list[tuple[str, str]]:
    config = run.config or {}
    dataset = config.get("source", "")
    return [
        ("Run", run.id),
        ("Backbone", config.get("architecture", "")),
        ("Dataset", _basename(dataset) or dataset),
        ("Author", getattr(run, "author", None) or ""),
        ("Experiment", run.experiment_id or ""),
        ("Date", _date(run.created)),
        ("Status", run.status),
    ]


def _dotted(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as (dotted key, text) rows; lists and other values as compact JSON or text."""
    if not isinstance(data, dict):
        return [(prefix or "value", _text(data))]
    rows = []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        rows += _flatten(value, name) if isinstance(value, dict) and value else [(name, _text(value))]
    return rows


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def _header(column: str) -> str:
    return column.replace("_", " ").capitalize()


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if column.endswith("_to_target") and value is None:
        return summaries.NEVER
    return summaries.display(value, percent=column.endswith("accuracy"))


def _travelling_thumbnail(uri: Any) -> str | None:
    """The data: URI an imported run's misclassified item carries, if it is a plain base64 JPEG/PNG.

    It came from someone else's bundle, so it is written into an attribute only when it cannot leave it.
    """
    if isinstance(uri, str) and len(uri) <= THUMBNAIL_URI_LIMIT and _DATA_URI.fullmatch(uri):
        return uri
    return None


def thumbnail_uri(path: Any, side: int = THUMBNAIL_SIDE, quality: int = 85) -> str | None:
    """A small JPEG of an image file as a data: URI, or None when it cannot be read here."""
    if not path:
        return None
    from PIL import Image

    from engine.data.images import decode_or_reason

    pixels, _ = decode_or_reason(path)  # the lab's safe decoder: no bombs, links or FIFOs
    if pixels is None:
        return None
    img = Image.fromarray(pixels)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
