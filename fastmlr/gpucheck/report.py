"""gpu-check's report: OUT/report.json (the result as it is) and OUT/report.md (for people).

report.md says what ran (each step's status, seconds against its limit and expectation, figures),
what was skipped and why (steps, and the skipped tests with pytest's reasons), and the op table.
Standard library only.
"""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_write_bytes, atomic_write_json


def _fmt_figures(fig: dict) -> str:
    parts = []
    for k, v in fig.items():
        if k == "failures":
            if v:
                parts.append(f"failures: {len(v)}")
        elif not isinstance(v, (dict, list)):
            parts.append(f"{k} {v}")
    return ", ".join(parts)


def _header(result: dict) -> list[str]:
    host = result.get("host", {})
    return [
        "# fastmlr gpu-check",
        "",
        f"{result.get('started', '')}: {host.get('gpu', '?')} (sm_{host.get('capability', '?').replace('.', '')}, "
        f"{host.get('memory_gib', '?')} GiB), torch {host.get('torch', '?')} (CUDA {host.get('torch_cuda', '?')}), "
        f"Triton {host.get('triton', '?')}, Python {host.get('python', '?')}.",
        f"Total {result.get('total_s', 0):.0f} s of a {result.get('budget_s', 0):.0f} s budget.",
        "",
    ]


def _steps_table(result: dict) -> list[str]:
    expected = result.get("expected_s", {})
    lines = ["| step | status | seconds | limit | expected | figures / detail |", "|---|---|---|---|---|---|"]
    for s in result["steps"]:
        text = "; ".join(x for x in (_fmt_figures(s.get("figures", {})), s.get("detail", "")) if x)
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']:.1f} | {s.get('limit_s', '')} | "
                     f"{expected.get(s['step'], '')} | {text.replace('|', '/')} |")
    skipped = [(s["step"], r) for s in result["steps"] for r in s.get("figures", {}).get("skipped_reasons", [])]
    if skipped:
        lines += ["", "Skipped tests and why:", ""] + [f"- {step}: {r}" for step, r in skipped]
    return lines


def _ops_table(data: dict) -> list[str]:
    lines = ["", f"## Ops on {data.get('device')} at the {data.get('size')} shapes "
             f"(median of {data.get('iters')} timings, ms)", "",
             "| op | dtype | backend | forward | forward+backward | vs reference | peak MiB | status |",
             "|---|---|---|---|---|---|---|---|"]
    for c in data.get("cells", []):
        diff = (f"{c['elements_differing']} elements differ" if "elements_differing" in c
                else f"{c['max_abs_diff']:.2e}" if "max_abs_diff" in c else "")
        fwd = c.get("forward", {}).get("median_ms", "")
        fb = c.get("forward_backward", {}).get("median_ms", "")
        status = c.get("status", "") + (f": {c['error']}" if c.get("error") else "")
        lines.append(f"| {c['op']} | {c['dtype']} | {c['backend']} | {fwd} | {fb} | {diff} | "
                     f"{c.get('peak_mib', '')} | {status.replace('|', '/')} |")
    for op, shapes in data.get("shapes", {}).items():
        lines.append(f"\n{op}: inputs {', '.join('x'.join(map(str, s)) for s in shapes)}")
    return lines


def render_markdown(result: dict) -> str:
    lines = _header(result)
    lines += [f"- {note}" for note in result.get("notes", [])]
    if result.get("notes"):
        lines.append("")
    lines += _steps_table(result)
    for s in result["steps"]:
        if "ops" in s.get("figures", {}):
            lines += _ops_table(s["figures"]["ops"])
        if s.get("markdown"):
            lines += ["", f"## {s['step']} (python3 -m fastmlr.bench)", "", s["markdown"].strip()]
    failed = [s for s in result["steps"] if s["status"] == "failed" and s.get("tail")]
    if failed:
        lines += ["", "## Failed steps: end of their logs"]
        for s in failed:
            lines += ["", f"### {s['step']}", "", "```", s["tail"].strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, result: dict) -> tuple[Path, Path]:
    """OUT/report.json and OUT/report.md, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write_json(str(json_path), result)
    md = render_markdown(result).encode()
    atomic_write_bytes(str(md_path), lambda fh: fh.write(md))
    return json_path, md_path


__all__ = ["render_markdown", "write_reports"]
