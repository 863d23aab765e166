"""The RCA report's Global Evidence Graph drawn as a tree (SVG, no JavaScript): one box per span agent,
red where the agent found its own span abnormal, a thick border on the spans of the top candidate."""

from __future__ import annotations

from html import escape

from services.common.pb.faultline.v1 import rca_pb2

BOX_W, BOX_H, GAP_X, GAP_Y = 150, 38, 14, 34
MAX_NODES = 150  # a page, not a dump: the deepest levels of huge traces are cut


def _layout(graph: rca_pb2.EvidenceGraph) -> dict[str, tuple[int, int]]:
    """(column, depth) per span id: leaves take the next free column, a parent sits over its first child."""
    nodes = {n.span_id: n for n in graph.nodes}
    place: dict[str, tuple[int, int]] = {}
    column = 0

    def visit(span_id: str, depth: int) -> int:
        nonlocal column
        if span_id in place or len(place) >= MAX_NODES:
            return place.get(span_id, (column, depth))[0]
        children = [c for c in nodes[span_id].children if c in nodes]
        if not children:
            place[span_id] = (column, depth)
            column += 1
            return place[span_id][0]
        first = visit(children[0], depth + 1)
        for child in children[1:]:
            visit(child, depth + 1)
        place[span_id] = (first, depth)
        return first

    for root in graph.roots or [n.span_id for n in graph.nodes[:1]]:
        if root in nodes:
            visit(root, 0)
    return place


def evidence_svg(report: rca_pb2.RcaReport) -> str:
    graph = report.evidence
    place = _layout(graph)
    if not place:
        return '<p class="muted">no evidence graph in this report</p>'
    nodes = {n.span_id: n for n in graph.nodes}
    top = report.candidates[0].service if report.candidates else ""
    width = (max(c for c, _ in place.values()) + 1) * (BOX_W + GAP_X)
    height = (max(d for _, d in place.values()) + 1) * (BOX_H + GAP_Y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="evidence">']
    for span_id, (col, depth) in place.items():
        for child in nodes[span_id].children:
            if child in place:
                c_col, c_depth = place[child]
                x1, y1 = col * (BOX_W + GAP_X) + BOX_W / 2, depth * (BOX_H + GAP_Y) + BOX_H
                x2, y2 = c_col * (BOX_W + GAP_X) + BOX_W / 2, c_depth * (BOX_H + GAP_Y)
                parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#999"/>')
    for span_id, (col, depth) in place.items():
        node = nodes[span_id]
        x, y = col * (BOX_W + GAP_X), depth * (BOX_H + GAP_Y)
        fill = "#f8d0d0" if node.is_abnormal else "#e8f0e8"
        stroke = 3 if node.service == top else 1
        title = escape("; ".join(node.symptoms) or node.reason or "normal")
        parts.append(
            f'<g class="agent" data-service="{escape(node.service)}" data-abnormal="{str(node.is_abnormal).lower()}">'
            f"<title>{title}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="{fill}" stroke="#333" '
            f'stroke-width="{stroke}"/>'
            f'<text x="{x + 6}" y="{y + 15}" font-size="11">{escape(node.service[:22])}</text>'
            f'<text x="{x + 6}" y="{y + 30}" font-size="10" fill="#555">{escape(node.operation[:24])}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
