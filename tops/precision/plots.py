"""The report page's plots, drawn with matplotlib (the ``report`` extra) and returned as
inline SVG, from the rows of the report's JSON record.

Per op: ε_TPU against ε_GPU (log-log, the line y = x and each output's floor); ε against
the case parameter that sets the problem size (T for simple GLA, also the chunk size;
V for the vocabulary ops), one panel per output and dtype, one series per gate kind;
and, for exact outputs, the share of cases each backend gets exactly right.
"""

from __future__ import annotations

import importlib.util
import io
import math

# Open circles for the TPU, crosses for the GPU, in the series' colour.
MARKERS = {"tpu": "o", "gpu": "x"}
SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def available() -> bool:
    """Whether matplotlib is installed (``pip install 'tops[report]'``)."""
    return importlib.util.find_spec("matplotlib") is not None


def _svg(figure, salt: str) -> str:
    """The figure as an ``<svg>`` element; ``salt`` keeps its ids apart from the other
    figures' on the same page and the output identical from run to run."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(rows: int, columns: int, width: float = 3.2, height: float = 2.6):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def _positive_floor(values: list[float]) -> float:
    """Where an ε of 0 is drawn on log axes: a decade under the smallest positive value."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return min(positive, default=1e-8) / 10


def _clip(value: float, zero: float) -> float:
    return value if value > 0 else zero


def scatter_tpu_gpu(op: str, rows: list[dict]) -> tuple[str, str] | None:
    """ε_TPU against ε_GPU for every inexact output measured on both backends."""
    points = [
        (
            row["output"],
            row["measurements"]["gpu"]["rel_l2"],
            row["measurements"]["tpu"]["rel_l2"],
            row["measurements"]["tpu"]["floor"],
        )
        for row in rows
        if not row["exact"] and {"tpu", "gpu"} <= row["measurements"].keys()
    ]
    points = [p for p in points if all(map(math.isfinite, p[1:]))]
    if not points:
        return None
    zero = _positive_floor([v for p in points for v in p[1:]])
    figure, axes = _figure(1, 1, 5.2, 4.4)
    ax = axes[0][0]
    outputs = list(dict.fromkeys(p[0] for p in points))
    for colour, output in zip(SERIES_COLOURS * 3, outputs, strict=False):
        mine = [p for p in points if p[0] == output]
        ax.scatter(
            [_clip(p[1], zero) for p in mine],
            [_clip(p[2], zero) for p in mine],
            s=14,
            color=colour,
            label=output,
        )
        ax.scatter(
            [_clip(p[1], zero) for p in mine],
            [_clip(p[3], zero) for p in mine],
            s=30,
            marker="_",
            color=colour,
            alpha=0.5,
        )
    high = 2 * max(max(p[1:]) for p in points)
    ax.plot([zero, high], [zero, high], color="black", linewidth=0.8, label="y = x")
    ax.set(xscale="log", yscale="log", xlabel="ε_GPU", ylabel="ε_TPU", title=op)
    ax.legend(fontsize=7, loc="upper left")
    caption = (
        f"{op}: ε_TPU against ε_GPU, one dot per output of a case; a faint dash at the same "
        f"ε_GPU marks that output's floor. Below the line the TPU is closer to the reference. "
        f"ε = 0 is drawn at {zero:.0e}."
    )
    return caption, _svg(figure, f"{op}-scatter")


def against(op: str, rows: list[dict], parameter: str) -> tuple[str, str] | None:
    """ε against ``parameter`` (log x where it spans a decade): one panel per output
    (columns) and dtype (rows); one colour per gate kind where cases have one; open
    circles TPU, crosses GPU."""
    rows = [r for r in rows if not r["exact"] and parameter in r["parameters"]]
    if not rows:
        return None
    outputs = list(dict.fromkeys(r["output"] for r in rows))
    dtypes = list(dict.fromkeys(r["parameters"]["dtype"] for r in rows))

    def series_of(row: dict) -> str:
        return row["parameters"].get("gate", "")

    def gated(name: str) -> str:
        return f"gate {name}" if name else ""

    series = list(dict.fromkeys(series_of(r) for r in rows))
    every = [m["rel_l2"] for r in rows for m in r["measurements"].values()]
    zero = _positive_floor(every)
    xs = sorted({r["parameters"][parameter] for r in rows})
    logarithmic = xs[0] > 0 and xs[-1] / xs[0] >= 10
    figure, axes = _figure(len(dtypes), len(outputs))
    for i, dtype in enumerate(dtypes):
        for j, output in enumerate(outputs):
            ax = axes[i][j]
            for k, name in enumerate(series):
                mine = [
                    r
                    for r in rows
                    if r["output"] == output
                    and r["parameters"]["dtype"] == dtype
                    and series_of(r) == name
                ]
                # Series side by side where x takes few values (chunk sizes 64, 128).
                shift = 1 + 0.04 * (k - (len(series) - 1) / 2) if not logarithmic else 1
                colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
                for backend, marker in MARKERS.items():
                    measured = [r for r in mine if backend in r["measurements"]]
                    ax.scatter(
                        [r["parameters"][parameter] * shift for r in measured],
                        [_clip(r["measurements"][backend]["rel_l2"], zero) for r in measured],
                        s=16,
                        marker=marker,
                        color=colour,
                        facecolors="none" if marker == "o" else colour,
                        label=None
                        if i or j
                        else " ".join(filter(None, (gated(name), backend.upper()))),
                    )
            ax.set(yscale="log", title=f"{output} ({dtype})", xlabel=parameter, ylabel="ε")
            if logarithmic:
                ax.set_xscale("log")
            else:
                ax.set_xticks(xs)
    axes[0][0].legend(fontsize=6, loc="best")
    colours = ", one colour per gate kind" if series != [""] else ""
    caption = (
        f"{op}: ε against {parameter}, per output and dtype{colours} (open circles TPU, "
        f"crosses GPU); ε = 0 is drawn at {zero:.0e}."
    )
    return caption, _svg(figure, f"{op}-{parameter}")


def exactness(op: str, table: list[dict]) -> tuple[str, str] | None:
    """Bars: per exact output, the share of cases each backend reproduces exactly."""
    if not table:
        return None
    figure, axes = _figure(1, 1, max(3.0, 1.2 * len(table)), 2.8)
    ax = axes[0][0]
    width = 0.38
    for offset, backend, colour in ((-width / 2, "tpu", "#1f77b4"), (width / 2, "gpu", "#d62728")):
        if any(t[backend] is None for t in table):
            continue
        shares = [t[backend] / t["cases"] for t in table]
        ax.bar(
            [i + offset for i in range(len(table))],
            shares,
            width,
            color=colour,
            label=backend.upper(),
        )
    ax.set_xticks(range(len(table)), [t["output"] for t in table], rotation=30, fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="cases exact", title=op)
    ax.legend(fontsize=7, loc="lower right")
    caption = f"{op}: share of cases in which each exact output equals the reference."
    return caption, _svg(figure, f"{op}-exact")
