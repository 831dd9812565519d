"""Render a run as one self-contained HTML file: tables, plots, a pair viewer, the cache index and heatmaps.

Safety: every string from the data reaches the page either through Jinja2's autoescaping or inside one JSON blob
(`<`, `>`, `&` written as \\u escapes) that the page's script reads with JSON.parse and shows with textContent;
nothing from the data is ever parsed as HTML or run.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from cot_patching.report.data import RunView, char_chunks, reproduce_command, selected_steps, token_chunks
from cot_patching.runs.files import atomic_write_text, default_file_mode
from cot_patching.traces.analysis import first_difference
from cot_patching.traces.spans import Decoder

TEMPLATE = "report.html.j2"


def safe_json(data: Any) -> str:
    """JSON that cannot end a <script> element or start markup: <, >, & and line separators escaped."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def outcome(record: Any) -> str:
    """correct, incorrect, unparsed or error."""
    if record.finish_reason == "error":
        return "error"
    if not record.parse_ok:
        return "unparsed"
    return "correct" if record.correct else "incorrect"


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def run_plots(view: RunView) -> dict[str, str]:
    """Inline SVG plots: attempts per problem, and outcomes by temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    if not view.runs:
        return plots
    per_problem = Counter(record.id for record in view.runs)
    paired = {pair.id for pair in view.pairs}
    most = max(per_problem.values())
    fig, ax = plt.subplots(figsize=(5, 2.6), constrained_layout=True)
    bins = range(1, most + 2)
    ax.hist([[n for pid, n in per_problem.items() if pid in paired],
             [n for pid, n in per_problem.items() if pid not in paired]], bins=bins, stacked=True, align="left",
            label=["paired", "no pair"], color=["#2b8a3e", "#adb5bd"])
    ax.set_xlabel("attempts made")
    ax.set_ylabel("problems")
    ax.set_xticks(list(bins)[:-1])
    ax.legend(fontsize=8)
    ax.set_title("attempts per problem", fontsize=10)
    plots["attempts"] = _svg(fig)
    plt.close(fig)

    temperatures = sorted({record.temperature for record in view.runs})
    kinds = ("correct", "incorrect", "unparsed", "error")
    colors = {"correct": "#2b8a3e", "incorrect": "#c92a2a", "unparsed": "#adb5bd", "error": "#343a40"}
    counts = {kind: [sum(1 for r in view.runs if r.temperature == t and outcome(r) == kind) for t in temperatures]
              for kind in kinds}
    fig, ax = plt.subplots(figsize=(5, 2.6), constrained_layout=True)
    bottom = [0] * len(temperatures)
    labels = [f"T={t:g}" for t in temperatures]
    for kind in kinds:
        if any(counts[kind]):
            ax.bar(labels, counts[kind], bottom=bottom, label=kind, color=colors[kind])
            bottom = [b + c for b, c in zip(bottom, counts[kind])]
    ax.set_ylabel("attempts")
    ax.legend(fontsize=8)
    ax.set_title("outcome by temperature", fontsize=10)
    plots["temperature"] = _svg(fig)
    plt.close(fig)
    return plots


def pair_data(view: RunView, tokenizer: Decoder | None) -> list[dict[str, Any]]:
    """Per pair: both traces as chunks (tokens when a tokenizer is given), answers, rules, reproduce commands."""
    strict = bool(view.manifest.settings.get("strict_format"))
    out = []
    for pair in view.pairs:
        diff = first_difference(pair.correct.token_ids, pair.incorrect.token_ids)
        traces = {}
        for which in ("correct", "incorrect"):
            record = pair.trace(which)
            selected = selected_steps(pair, which, strict)
            chunks = (token_chunks(record, tokenizer, selected, diff) if tokenizer is not None
                      else char_chunks(record, selected))
            traces[which] = {
                "attempt": record.attempt, "temperature": record.temperature, "seed": str(record.seed),
                "final_answer": record.final_answer, "normalized": record.normalized_answer,
                "score_rule": record.score_rule, "finish_reason": record.finish_reason,
                "n_tokens": len(record.token_ids), "steps": len(record.step_spans),
                "selected": {part: idx for idx, label in selected.items() for part in label.split("/")},
                "reproduce": reproduce_command(view.root, record),
                "chunks": [chunk.to_json() for chunk in chunks],
            }
        out.append({"id": pair.id, "problem": pair.pair.problem, "gold": pair.pair.gold_answer,
                    "n_attempts": pair.pair.n_attempts, "first_diff": diff, "traces": traces,
                    "localization": view.localization.get(pair.id)})
    return out


def attempt_data(view: RunView) -> list[list[Any]]:
    """One compact row per attempt: id, attempt, T, outcome, final answer, normalized, rule, tokens, finish."""
    return [[r.id, r.attempt, r.temperature, outcome(r), r.final_answer, r.normalized_answer, r.score_rule,
             len(r.token_ids), r.finish_reason] for r in view.runs]


def heatmap_images(view: RunView) -> list[dict[str, str]]:
    """The patching heatmaps as data: URIs (the report stays one file)."""
    return [{"name": path.stem, "uri": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()}
            for path in view.heatmaps]


def render_report(view: RunView, tokenizer: Decoder | None = None) -> str:
    """The report's HTML."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("cot_patching.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    model = view.manifest.model.to_json()
    last = view.manifest.last_session
    environment = last.environment
    data = {"pairs": pair_data(view, tokenizer), "attempts": attempt_data(view),
            "outdir": str(view.root), "tokens": tokenizer is not None}
    agreement = view.patching_agreement.get("overall") if view.patching_agreement else None
    return env.get_template(TEMPLATE).render(
        title=view.root.name, root=str(view.root), summary=view.summary, model=model,
        settings=view.manifest.settings, decode_path=last.decode_path,
        versions=environment.get("versions") or {}, gpu=environment.get("gpu"),
        repairs=list(view.manifest.repairs), n_sessions=len(view.manifest.sessions),
        plots=run_plots(view), data_json=safe_json(_finite(data)),
        activation_index=view.activation_index, activation_config=view.activation_config,
        patching_rows=len(view.patching_rows), heatmaps=heatmap_images(view),
        agreement=agreement, agreement_pairs=(view.patching_agreement or {}).get("per_pair") or {},
        localized=len(view.localization),
        kstars=sum(1 for entry in view.localization.values() if entry.get("kstar") is not None),
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write_report(view: RunView, out: str | Path, tokenizer: Decoder | None = None) -> Path:
    """Render and write the report atomically; the path written."""
    out = Path(out)
    html = render_report(view, tokenizer)
    atomic_write_text(out, html)
    os.chmod(out, default_file_mode())
    return out
