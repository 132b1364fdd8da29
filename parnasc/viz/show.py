"""A picture of the supernet for papers and slides: `parnasc show SPEC -o net.svg`.

Paths are columns, levels run top to bottom. Each block lists its candidate operations with
their FLOPs; the input, stem, merge, head and output span all paths; a sync site is a bar across
the paths after its level (dashed: searchable, solid: always there), and the direct edges that
bypass a searchable sync are dashed arrows. Row names and shapes sit in a gutter on the left.

matplotlib is imported inside `draw` (Agg canvas, no pyplot), so `parnasc check` never loads it.
Output is deterministic: no dates in the metadata, fixed SVG ids, text kept as text in SVG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parnasc.files import atomic_path
from parnasc.ir.graph import IR, Node, count, flops_range, search_space_size
from parnasc.viz.summary import human

FORMATS = ("svg", "png", "pdf")
MAX_LEVELS = 24  # longer supernets show their first and last levels around an ellipsis row
DPI = 200  # for .png

# Lengths in inches (one data unit is one inch), font sizes in points.
FONT, SMALL, NAME, TITLE = 8.0, 7.0, 9.0, 11.0
LINE = 0.17  # text line pitch
PAD = 0.07  # inside a box, above and below its text
GAP = 0.30  # between rows (the length of an arrow)
BAR = 0.12  # height of a sync bar
COL_GAP = 0.35  # between path columns
MIN_COL = 1.5  # narrowest path column
MARGIN = 0.25
TITLE_H, HEADER_H = 0.62, 0.30
DASHED = (0, (4, 2))

INK, MUTED = "#222222", "#666666"
BLOCK_FACE, BLOCK_EDGE = "#eaf1fb", "#3b6ea8"
SPAN_FACE, SPAN_EDGE = "#f2f2f2", "#555555"
SYNC_FACE, SYNC_EDGE = "#f8dcae", "#b3611a"
DIRECT = "#b3611a"

LEGEND = {
    "block": "block: candidates, FLOPs",
    "search": "searchable sync",
    "always": "fixed sync",
    "direct": "direct (sync off)",
}


@dataclass
class _Row:
    """One horizontal band: its gutter name and note, and the nodes it draws."""

    kind: str  # input, stem, level, sync, gap, merge, head, output
    name: str
    note: str = ""
    nodes: list[Node] = field(default_factory=list)
    lines: int = 1  # text lines in its boxes
    skipped: int = 0  # levels left out (gap row)

    @property
    def spans(self) -> bool:
        """Drawn as one element across all paths."""
        return self.kind in ("input", "stem", "merge", "head", "output")

    @property
    def height(self) -> float:
        if self.kind == "sync":
            return BAR
        if self.kind == "gap":
            return 0.45
        if self.kind in ("input", "output"):
            return LINE + PAD
        return self.lines * LINE + 2 * PAD


def _shape(s: tuple[int, ...] | None) -> str:
    return "?" if s is None else "×".join(map(str, s))


def _op_lines(nodes: list[Node]) -> list[tuple[str, str]]:
    return [(c.label, human(c.cost.flops)) for n in nodes for c in n.candidates]


def _rows(ir: IR) -> list[_Row]:
    levels = ir.levels
    shown: list[str | None] = list(levels)
    if len(levels) > MAX_LEVELS:
        shown = [*levels[: MAX_LEVELS * 2 // 3], None, *levels[-(MAX_LEVELS // 4) :]]
    nodes = ir.nodes()
    stem = [n for n in nodes if n.kind == "op" and n.id.startswith("stem.")]
    head = [n for n in nodes if n.kind == "op" and n.id.startswith("head.")]
    inp, merge, out = ir.node("input"), ir.node("merge"), ir.node("output")
    rows = [_Row("input", "input", _shape(inp.out_shape), [inp])]
    if stem:
        rows.append(_Row("stem", "stem", _shape(stem[-1].out_shape), stem, len(stem)))
    for lv in shown:
        if lv is None:
            skipped = len(levels) - (len(shown) - 1)
            rows.append(_Row("gap", "⋮", f"{skipped:,} levels", skipped=skipped))
            continue
        blocks = [ir.block(lv, p) for p in range(1, ir.paths + 1)]
        lines = max(len(b.candidates) for b in blocks)
        rows.append(_Row("level", lv, _shape(blocks[0].out_shape), blocks, lines))
        s = ir.sync(lv)
        if s is not None:
            comb = "concat + 1×1 conv" if s.combiner == "concat" else "sum"
            what = "searchable sync" if s.mode == "search" else "fixed sync"
            rows.append(_Row("sync", what, f"{comb} · {human(s.cost.flops)}", [s]))
    rows.append(_Row("merge", "merge", _shape(merge.out_shape), [merge]))
    if head:
        rows.append(_Row("head", "head", _shape(head[-1].out_shape), head, len(head)))
    rows.append(_Row("output", "output", _shape(out.out_shape), [out]))
    return rows


def draw(ir: IR, path: Path) -> None:
    """Draw `ir` to `path`; the format (.svg, .png or .pdf) comes from the suffix. Atomic."""
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"unsupported picture format '{path.suffix}' (use .svg, .png or .pdf)")
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rc: Any = {
        "font.family": "DejaVu Sans",
        "font.size": FONT,
        "svg.fonttype": "none",  # text stays text: searchable, editable, small
        "svg.hashsalt": "parnasc",  # deterministic ids
    }
    meta: dict[str, Any] = {
        "svg": {"Date": None},
        "pdf": {"CreationDate": None, "ModDate": None},
        "png": {"Software": None},
    }[fmt]
    meta["Title"] = f"parnasc supernet {ir.meta['model']}"
    with mpl.rc_context(rc):
        fig = Figure(dpi=DPI)
        FigureCanvasAgg(fig)
        _Picture(fig, ir).render()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, metadata=meta, dpi=DPI)


class _Picture:
    """Lays out the rows of one IR on a figure and draws them."""

    def __init__(self, fig: Any, ir: IR) -> None:
        from matplotlib.font_manager import FontProperties

        self.fig, self.ir, self.rows = fig, ir, _rows(ir)
        self._renderer = fig.canvas.get_renderer()
        self._font = FontProperties
        p = ir.paths
        has = {r.nodes[0].mode for r in self.rows if r.kind == "sync"}
        self.legend = ["block", *(m for m in ("search", "always") if m in has)]
        self.legend += ["direct"] if "search" in has else []
        # column width: the widest candidate line; spanning boxes: the widest stem/head line
        col_w = max(
            [MIN_COL]
            + [
                self.width(label) + self.width(flops) + 0.4
                for r in self.rows
                if r.kind == "level"
                for label, flops in _op_lines(r.nodes)
            ]
        )
        span_w = [
            self.width(label) + self.width(flops) + 0.4
            for r in self.rows
            if r.kind in ("stem", "head")
            for label, flops in _op_lines(r.nodes)
        ]
        self.body_w = max(p * col_w + (p - 1) * COL_GAP, *span_w)
        self.col_w = (self.body_w - (p - 1) * COL_GAP) / p
        gutter = 0.2 + max(
            max(self.width(r.name, NAME, bold=True), self.width(r.note, SMALL)) for r in self.rows
        )
        self.x0 = MARGIN + gutter  # left edge of the body; the gutter text ends just before
        self.fig_w = self.x0 + self.body_w + MARGIN
        self.xs = [self.x0 + self.col_w * (i + 0.5) + i * COL_GAP for i in range(p)]
        self.legend_at = self._legend_layout()
        body_h = sum(r.height for r in self.rows) + GAP * (len(self.rows) - 1)
        legend_h = 0.25 + max(y for _, y in self.legend_at)
        self.fig_h = MARGIN + TITLE_H + HEADER_H + body_h + legend_h + MARGIN

    def width(self, text: str, size: float = FONT, bold: bool = False) -> float:
        """Width of `text` in inches, from the Agg renderer."""
        fp = self._font(size=size, weight="bold" if bold else "normal")
        w, _, _ = self._renderer.get_text_width_height_descent(text, fp, ismath=False)
        return float(w) / self.fig.dpi

    def _legend_layout(self) -> list[tuple[float, float]]:
        """(x, height above the bottom margin) of each legend item, wrapped to the width."""
        lines: list[list[float]] = [[]]
        x = MARGIN
        for key in self.legend:
            w = 0.36 + self.width(LEGEND[key], SMALL)
            if lines[-1] and x + w > self.fig_w - MARGIN:
                lines.append([])
                x = MARGIN
            lines[-1].append(x)
            x += w + 0.3
        n = len(lines)
        return [(x, 0.1 + (n - 1 - i) * 0.24) for i, xs in enumerate(lines) for x in xs]

    # -- primitives ------------------------------------------------------------------------

    def text(self, x: float, y: float, s: str, **kw: Any) -> None:
        kw.setdefault("va", "center")
        kw.setdefault("color", INK)
        self.ax.text(x, y, s, zorder=5, **kw)

    def box(self, x: float, top: float, w: float, h: float, face: str, edge: str) -> None:
        from matplotlib.patches import FancyBboxPatch

        style = "round,pad=0,rounding_size=0.05"
        self.ax.add_patch(
            FancyBboxPatch(
                (x, top - h),
                w,
                h,
                boxstyle=style,
                facecolor=face,
                edgecolor=edge,
                linewidth=0.9,
                zorder=2,
            )
        )

    def bar(self, x: float, top: float, w: float, h: float, dashed: bool) -> None:
        from matplotlib.patches import Rectangle

        self.ax.add_patch(
            Rectangle(
                (x, top - h),
                w,
                h,
                facecolor=SYNC_FACE,
                edgecolor=SYNC_EDGE,
                linewidth=1.0,
                linestyle=DASHED if dashed else "-",
                zorder=2,
            )
        )

    def arrow(self, x1: float, y1: float, x2: float, y2: float, direct: bool = False) -> None:
        from matplotlib.patches import FancyArrowPatch

        self.ax.add_patch(
            FancyArrowPatch(
                (x1, y1),
                (x2, y2),
                arrowstyle="-|>",
                mutation_scale=7,
                linewidth=0.8,
                color=DIRECT if direct else INK,
                linestyle=(0, (3, 2)) if direct else "-",
                connectionstyle="arc3,rad=-0.35" if direct else "arc3",
                shrinkA=0,
                shrinkB=0,
                zorder=4 if direct else 3,
            )
        )

    def op_lines(self, x: float, top: float, w: float, items: list[tuple[str, str]]) -> None:
        """Operation labels on the left of a box, their FLOPs on the right."""
        for i, (label, flops) in enumerate(items):
            y = top - PAD - (i + 0.5) * LINE
            self.text(x + 0.1, y, label, ha="left")
            self.text(x + w - 0.1, y, flops, ha="right", color=MUTED)

    # -- the picture -----------------------------------------------------------------------

    def render(self) -> None:
        self.fig.set_size_inches(self.fig_w, self.fig_h)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, self.fig_w)
        self.ax.set_ylim(-self.fig_h, 0)
        self.ax.set_axis_off()
        ir, mid = self.ir, self.x0 + self.body_w / 2
        lo, hi = flops_range(ir)
        size = search_space_size(ir)
        space = f"{size:,}" if size < 10**15 else count(size)
        y = -MARGIN
        title = f"{ir.meta['model']}: {ir.paths} paths × {len(ir.levels)} levels"
        self.text(self.fig_w / 2, y, title, ha="center", va="top", size=TITLE, weight="bold")
        subtitle = f"{space} architectures · {human(lo)} – {human(hi)} FLOPs (mul + add)"
        self.text(self.fig_w / 2, y - 0.28, subtitle, ha="center", va="top", color=MUTED)
        y -= TITLE_H
        for i, x in enumerate(self.xs):
            self.text(
                x,
                y - HEADER_H / 2,
                f"path {i + 1}",
                ha="center",
                size=NAME,
                weight="bold",
                color=BLOCK_EDGE,
            )
        y -= HEADER_H

        prev: _Row | None = None
        bottom = y  # where the previous row ends
        bypass: float | None = None  # bottom of the blocks a searchable sync lets through
        for r in self.rows:
            top = y
            self.gutter(r, top)
            if prev is not None:  # arrows from the previous row
                if prev.spans and r.spans:
                    self.arrow(mid, bottom, mid, top)
                else:
                    for x in self.xs:
                        self.arrow(x, bottom, x, top)
                if bypass is not None and r.kind in ("level", "merge"):
                    for x in self.xs:
                        dx = x + 0.3 * self.col_w
                        self.arrow(dx, bypass, dx, top, direct=True)
            if r.kind != "sync":
                bypass = None
            self.row(r, top)
            if r.kind == "sync" and r.nodes[0].mode == "search":
                bypass = bottom
            prev, bottom, y = r, top - r.height, top - r.height - GAP
        self.draw_legend()

    def gutter(self, r: _Row, top: float) -> None:
        x = self.x0 - 0.15
        if r.kind == "sync":
            mid = top - r.height / 2
            self.text(x, mid + 0.07, r.name, ha="right", size=SMALL, weight="bold", color=SYNC_EDGE)
            self.text(x, mid - 0.07, r.note, ha="right", size=SMALL, color=MUTED)
            return
        mid = top - min(r.height, 2 * LINE) / 2
        self.text(x, mid + 0.05, r.name, ha="right", size=NAME, weight="bold")
        self.text(x, mid - 0.13, r.note, ha="right", size=SMALL, color=MUTED)

    def row(self, r: _Row, top: float) -> None:
        h, x0, w = r.height, self.x0, self.body_w
        if r.kind == "level":
            for x, b in zip(self.xs, r.nodes, strict=True):
                left = x - self.col_w / 2
                self.box(left, top, self.col_w, h, BLOCK_FACE, BLOCK_EDGE)
                self.op_lines(left, top, self.col_w, _op_lines([b]))
        elif r.kind == "sync":
            self.bar(x0, top, w, h, dashed=r.nodes[0].mode == "search")
        elif r.kind == "gap":
            from matplotlib.lines import Line2D

            for x in self.xs:
                self.ax.add_line(
                    Line2D(
                        [x, x],
                        [top - 0.05, top - h + 0.05],
                        color=MUTED,
                        linewidth=1.0,
                        linestyle=(0, (1, 2)),
                        zorder=3,
                    )
                )
        elif r.kind in ("input", "output"):
            label = r.note if r.kind == "input" else f"{self.ir.meta['classes']} class scores"
            bw = max(1.4, self.width(label) + 0.4)
            self.box(x0 + (w - bw) / 2, top, bw, h, SPAN_FACE, SPAN_EDGE)
            self.text(x0 + w / 2, top - h / 2, label, ha="center")
        else:  # stem, merge, head
            self.box(x0, top, w, h, SPAN_FACE, SPAN_EDGE)
            if r.kind == "merge":
                m = r.nodes[0]
                items = [(f"{m.combiner} of {self.ir.paths} paths", human(m.cost.flops))]
            else:
                items = _op_lines(r.nodes)
            self.op_lines(x0, top, w, items)

    def draw_legend(self) -> None:
        from matplotlib.patches import FancyArrowPatch

        for key, (x, above) in zip(self.legend, self.legend_at, strict=True):
            y = -self.fig_h + MARGIN + above
            if key == "block":
                self.box(x, y + 0.07, 0.28, 0.14, BLOCK_FACE, BLOCK_EDGE)
            elif key in ("search", "always"):
                self.bar(x, y + 0.05, 0.28, 0.1, dashed=key == "search")
            else:
                self.ax.add_patch(
                    FancyArrowPatch(
                        (x, y),
                        (x + 0.28, y),
                        arrowstyle="-|>",
                        mutation_scale=7,
                        color=DIRECT,
                        linewidth=0.8,
                        linestyle=(0, (3, 2)),
                        shrinkA=0,
                        shrinkB=0,
                    )
                )
            self.text(x + 0.36, y, LEGEND[key], ha="left", size=SMALL, color=MUTED)
