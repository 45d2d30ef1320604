"""A small SVG writer shared by the figures: escaped text, a palette for light and dark pages, and
width estimates for laying out text without a font engine.

Every figure has an explicit background rect (so it reads the same on a light or a dark page), a
<title> and a <desc> referenced by aria-labelledby, a viewBox, and labels as <text> (never paths).
Colours are presentation attributes (the light theme, for renderers without CSS) plus role classes
that a `prefers-color-scheme: dark` rule in the figure's own <style> recolours."""

from __future__ import annotations

import math
import re

SANS = "DejaVu Sans, Verdana, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
# Smallest text any figure uses, in px at 100 % zoom: 11 px stays legible at 80 % zoom (8.8 px).
MIN_FONT_PX = 11
FONT_PX = 12

# role -> (light, dark). Text colours keep >= 4.5:1 contrast on their background in both themes.
PALETTE = {
    "bg": ("#ffffff", "#16191d"),
    "fg": ("#1b1f24", "#e6e9ed"),
    "muted": ("#57606a", "#a3acb7"),
    "grid": ("#d8dee4", "#3a4048"),
    "stripe": ("#f3f5f7", "#1f2329"),
    "lane": ("#57606a", "#8b949e"),
    "normal": ("#0b5cad", "#6cb6ff"),
    "retransmit": ("#a64d00", "#f0a050"),
    "lost": ("#7a3fc4", "#c39bf5"),
    "rst": ("#c21c1c", "#ff7b72"),
    "pass": ("#1a7f37", "#1a7f37"),  # badges: white text on these in both themes
    "fail": ("#c21c1c", "#c21c1c"),
    "skip": ("#7d5800", "#7d5800"),
    "band": ("#d55e00", "#f08c4a"),
}
# Okabe-Ito colour-blind-safe colours per TCP state (the counts chart also varies the dash pattern).
STATE_COLOURS = {
    "TIME_WAIT": ("#d55e00", "#f08c4a"), "ESTABLISHED": ("#0072b2", "#56b4e9"),
    "CLOSE_WAIT": ("#b0417e", "#e38cc0"), "FIN_WAIT2": ("#007a5a", "#3cc79b"),
    "FIN_WAIT1": ("#3c7fa8", "#8fcdf0"), "LAST_ACK": ("#a86f00", "#e6b040"),
    "LISTEN": ("#57606a", "#a3acb7"), "SYN_RECV": ("#5c4d9e", "#a99ce0"),
    "SYN_SENT": ("#5c4d9e", "#a99ce0"), "CLOSING": ("#7f4f24", "#d3a070"),
}
OTHER_STATE = ("#333333", "#cccccc")


# Characters XML 1.0 cannot carry at all, even escaped (C0 controls but tab/newline/CR, surrogates, FFFE/FFFF):
# observed strings (a process name, an error text) could hold them, and one would make the SVG unparseable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def esc(text: object) -> str:
    """Text or attribute value for XML and HTML (xml.sax.saxutils would import urllib: +40 ms at start-up)."""
    text = _NOT_XML.sub("\ufffd", str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def text_width(text: str, size: float = FONT_PX, mono: bool = False) -> float:
    """Width of a line of text, estimated generously (Verdana, the widest fallback, averages ~0.62 em;
    DejaVu Sans Mono advances 0.602 em)."""
    return len(text) * size * (0.61 if mono else 0.62)


def wrap(text: str, width_px: float, size: float = FONT_PX, mono: bool = False, max_lines: int = 6) -> list[str]:
    """Greedy word wrap to an estimated pixel width; long words are cut; an overflow ends in '…'."""
    per_line = max(4, int(width_px / (size * (0.61 if mono else 0.62))))
    lines: list[str] = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            while len(word) > per_line:
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:per_line])
                word = word[per_line:]
            candidate = f"{line} {word}" if line else word
            if len(candidate) <= per_line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: per_line - 1] + "…"
    return lines


def nice_step(span: float, target: int = 6) -> float:
    """A 1/2/5 x 10^k tick step giving about `target` ticks over `span`."""
    if span <= 0:
        return 1.0
    raw = span / target
    base = 10 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def fmt_duration(seconds: float) -> str:
    """A gap for people: 71 µs, 2.5 ms, 205 ms, 60.0 s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.1f} s"


def _attrs(attrs: dict) -> str:
    out = []
    for key, value in attrs.items():
        if value is None:
            continue
        name = key.rstrip("_").replace("_", "-")
        if isinstance(value, float):
            value = f"{value:.2f}".rstrip("0").rstrip(".")
        out.append(f' {name}="{esc(value)}"')
    return "".join(out)


class Svg:
    """Collects elements; render() wraps them with the background, <title>, <desc> and the style."""

    def __init__(self, width: int, height: int, title: str, desc: str, id_prefix: str = "fig"):
        self.width, self.height, self.title, self.desc, self.id = width, height, title, desc, id_prefix
        self.parts: list[str] = []
        self.roles: set[str] = {"bg", "fg", "grid"}
        self.states: set[str] = set()

    def el(self, tag: str, content: str | None = None, **attrs) -> str:
        start = f"<{tag}{_attrs(attrs)}"
        return f"{start}/>" if content is None else f"{start}>{content}</{tag}>"

    def add(self, tag: str, content: str | None = None, **attrs) -> None:
        self.parts.append(self.el(tag, content, **attrs))

    def raw(self, element: str) -> None:
        self.parts.append(element)

    def paint(self, role: str, kind: str) -> dict:
        """fill= or stroke= in the light colour plus the class the dark theme overrides."""
        return self.paints(**{kind: role})

    def paints(self, fill: str | None = None, stroke: str | None = None) -> dict:
        out, classes = {}, []
        for kind, role in (("fill", fill), ("stroke", stroke)):
            if role is None:
                continue
            if role.startswith("state:"):
                self.states.add(role[6:])
                out[kind] = STATE_COLOURS.get(role[6:], OTHER_STATE)[0]
                classes.append(f"{kind[0]}-st-{role[6:].lower()}")
            else:
                self.roles.add(role)
                out[kind] = PALETTE[role][0]
                classes.append(f"{kind[0]}-{role}")
        out["class_"] = " ".join(classes)
        return out

    def text(self, x: float, y: float, s: str | list[str], role: str = "fg", size: int = FONT_PX,
             anchor: str = "start", bold: bool = False, mono: bool = False, halo: bool = False,
             italic: bool = False, line_h: float = 15, **extra) -> str:
        """One <text>; a list of strings becomes one line (<tspan>) each."""
        assert size >= MIN_FONT_PX
        attrs = dict(x=float(x), y=float(y), font_size=size, text_anchor=anchor if anchor != "start" else None,
                     font_weight="bold" if bold else None, font_style="italic" if italic else None,
                     font_family=MONO if mono else None, **self.paint(role, "fill"))
        if halo:  # a background-coloured outline keeps a label readable where it crosses a line
            self.roles.add("bg")
            attrs.update(stroke=PALETTE["bg"][0], stroke_width=3, paint_order="stroke", stroke_linejoin="round")
            attrs["class_"] += " halo"
        attrs.update(extra)
        if isinstance(s, str):
            return self.el("text", esc(s), **attrs)
        lines = "".join(self.el("tspan", esc(line), x=float(x), dy=(float(line_h) if i else None))
                        for i, line in enumerate(s))
        return self.el("text", lines, **attrs)

    def line(self, x1, y1, x2, y2, role="fg", width=1.0, dash=None, **extra) -> str:
        return self.el("line", x1=float(x1), y1=float(y1), x2=float(x2), y2=float(y2), stroke_width=width,
                       stroke_dasharray=dash, **self.paint(role, "stroke"), **extra)

    def rect(self, x, y, w, h, role="bg", stroke_role: str | None = None, **extra) -> str:
        return self.el("rect", x=float(x), y=float(y), width=float(w), height=float(h),
                       **self.paints(fill=role, stroke=stroke_role), **extra)

    def _style(self) -> str:
        rules = []
        for role in sorted(self.roles):
            dark = PALETTE[role][1]
            rules.append(f".f-{role}{{fill:{dark}}}.s-{role}{{stroke:{dark}}}")
        for state in sorted(self.states):
            dark = STATE_COLOURS.get(state, OTHER_STATE)[1]
            rules.append(f".f-st-{state.lower()}{{fill:{dark}}}.s-st-{state.lower()}{{stroke:{dark}}}")
        rules.append(f".halo{{stroke:{PALETTE['bg'][1]}}}")
        return "@media (prefers-color-scheme: dark){" + "".join(rules) + "}"

    def render(self) -> str:
        tid, did = f"{self.id}-title", f"{self.id}-desc"
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
                f'width="{self.width}" height="{self.height}" role="img" aria-labelledby="{tid} {did}" '
                f'font-family="{esc(SANS)}" font-size="{FONT_PX}">')
        return "\n".join([
            head,
            f'<title id="{tid}">{esc(self.title)}</title>',
            f'<desc id="{did}">{esc(self.desc)}</desc>',
            f"<style>{self._style()}</style>",
            self.el("rect", x=0, y=0, width=self.width, height=self.height, fill=PALETTE["bg"][0],
                    stroke=PALETTE["grid"][0], class_="f-bg s-grid"),
            *self.parts,
            "</svg>",
        ]) + "\n"
