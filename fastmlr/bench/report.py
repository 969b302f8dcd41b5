"""Report: overheads with their spread, the markdown tables, the chart.

The chart compares like with like: the latencies measured here in one panel,
the paper's RTX 3070 latencies in a panel of their own, and the overheads
(each model against its own baseline, measured here or in the paper) in a third.
"""

from __future__ import annotations

from ..measure import CLOCKS, LEVEL, overhead, overhead_interval

# Paper table 3: ms per image, ResNet-101, 448 x 448, RTX 3070, PyTorch.
PAPER_MS = {
    "baseline": 31.54,
    "srdl": 32.58,
    "mlgcn": 32.40,
}
PAPER_ONLY_MS = {"SSGRL": 33.36, "P-GCN": 32.33, "MCAR (global)": 32.48, "MCAR (global-local)": 123.47}
PAPER_LABEL = "paper: RTX 3070, PyTorch, R101 448 px (ms/image)"
PAPER_SHORT = "paper: RTX 3070, R101 448 px"


def add_overheads(result: dict) -> None:
    """Each ok cell's overhead over ``baseline`` on the same runtime and batch size, from the two medians, with
    the bootstrap interval of the interleaved samples and ``overhead_uncertain`` when it reaches zero."""
    cells = result["cells"]
    for c in cells:
        base = next((b for b in cells if b["model"] == "baseline" and b["runtime"] == c["runtime"]), None)
        for bs, st in c.get("batches", {}).items():
            ref = base["batches"].get(bs) if base and base.get("status") == "ok" else None
            st["overhead_vs_baseline"] = overhead(st["median_ms"], ref["median_ms"]) if ref else None
            st["overhead_interval"], st["overhead_uncertain"] = None, None
            if ref is None or c is base:
                continue
            xs, ys = st.get("samples_ms"), ref.get("samples_ms")
            if xs and ys and len(xs) == len(ys) and st.get("timing") == "interleaved":
                lo, hi = overhead_interval(xs, ys)
                st["overhead_interval"], st["overhead_level"] = [lo, hi], LEVEL
                st["overhead_uncertain"] = bool(lo <= 0.0 <= hi)


def uncertain_overheads(result: dict) -> list[tuple[str, str, str, dict]]:
    """(model, runtime, batch, stats) of every overhead whose spread is larger than the overhead itself."""
    return [(c["model"], c["runtime"], bs, st) for c in result["cells"] for bs, st in c.get("batches", {}).items()
            if st.get("overhead_uncertain")]


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _fmt_overhead(st: dict) -> str:
    ov = st.get("overhead_vs_baseline")
    if ov is None:
        return ""
    iv = st.get("overhead_interval")
    if not iv:
        return f" ({_pct(ov)})"
    flag = ", spread > overhead" if st.get("overhead_uncertain") else ""
    return f" ({_pct(ov)} [{_pct(iv[0])}, {_pct(iv[1])}]{flag})"


def machine_line(m: dict) -> str:
    hw = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    la = m.get("load_average_start")
    le = m.get("load_average_end")
    load = ""
    if la:
        load = f"; load average (1/5/15 min) {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} at start"
        if le:
            load += f", {le[0]:.2f}/{le[1]:.2f}/{le[2]:.2f} at end"
    return (f"{m['cpu']}, {m['cpus_usable']} usable of {m['cpu_count']} cores, {hw}; torch {m['torch']} "
            f"({m['torch_threads']} threads), onnxruntime {m.get('onnxruntime') or 'absent'}, "
            f"Python {m['python']}{load}")


def _timing_line(cfg: dict) -> str:
    if cfg["min_iters"] == cfg["max_iters"]:
        reps = f"{cfg['min_iters']} rounds"
    else:
        reps = (f"{cfg['min_iters']} to {cfg['max_iters']} rounds, stopping early after {cfg['max_time']:g} s or once "
                f"every overhead's {int(100 * LEVEL)}% interval is within ±{100 * cfg['target_spread']:.1f} points")
    return (f"- Timed interleaved: the models of one runtime prepared in one process, then rounds of one call "
            f"each in an order rotated every round ({reps}; {cfg['warmup']} warm-up calls each); "
            f"random weights, random normal inputs; CPU threads {cfg.get('threads') or 'default'}; "
            f"fastmlr.ops backend {cfg.get('ops_backend') or 'default dispatch'}; peak memory "
            f"{'of each cell in its own process' if cfg['isolate'] else 'in the shared process'}.")


def format_markdown(result: dict) -> str:
    cfg, m = result["config"], result["machine"]
    models, runtimes = cfg["models"], cfg["runtimes"]
    cells = {(c["model"], c["runtime"]): c for c in result["cells"]}
    notes: list[str] = []

    def note(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    lines = [
        "# fastmlr inference table (python -m fastmlr.bench)",
        "",
        f"- Run: {result['date']}, command `{result['command']}`",
        f"- Machine: {machine_line(m)}",
        f"- Config: {cfg['backbone']}, {cfg['image_size']} x {cfg['image_size']}, {cfg['num_classes']} classes, "
        f"batch {', '.join(map(str, cfg['batch_sizes']))}, device {cfg['device']}.",
        _timing_line(cfg),
        "- A call: one inference on a prepared input tensor, outputs ready; timed by "
        + ("CUDA events" if cfg["device"].startswith("cuda") else CLOCKS[cfg.get("clock", "wall")])
        + "; export/compilation excluded (prepare_s in bench.json).",
    ]
    cpu_clock = cfg.get("clock") == "cpu" and not cfg["device"].startswith("cuda")
    what = "CPU time per call" if cpu_clock else "Latency per call"
    for bs in cfg["batch_sizes"]:
        k = str(bs)
        lines += ["", f"## {what}, batch {bs}: median ms [p25-p75], overhead over baseline on the same "
                      f"runtime [{int(100 * LEVEL)}% interval]", ""]
        head = ["model"] + runtimes
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in models:
            row = [name]
            for rt in runtimes:
                c = cells.get((name, rt))
                if c is None:
                    row.append("-")
                elif c["status"] != "ok" or k not in c["batches"]:
                    # A skip reason belongs to the runtime, a failure to the (model, runtime) pair.
                    text = (f"{name} / {rt}: " if c["status"] == "failed" else f"{rt}: ") + c.get("reason", "")
                    row.append(f"{c['status']} {note(text)}")
                else:
                    st = c["batches"][k]
                    ov = _fmt_overhead(st) if name != "baseline" else ""
                    row.append(f"{st['median_ms']:.2f} [{st['p25_ms']:.2f}-{st['p75_ms']:.2f}]{ov}")
            lines.append("| " + " | ".join(row) + " |")
        rounds = [f"{rt}: {st['rounds']} rounds ({st['stop']})" for rt in runtimes
                  for st in [cells.get(("baseline", rt), {}).get("batches", {}).get(k)] if st and "rounds" in st]
        if rounds:
            lines += ["", "Rounds timed: " + ", ".join(rounds) + "."]
        for mo, rt, b, st in uncertain_overheads(result):
            if b == k:
                lo, hi = st["overhead_interval"]
                lines += ["", f"**Warning**: {mo} on {rt}, batch {b}: the overhead {_pct(st['overhead_vs_baseline'])} "
                              f"has a {int(100 * LEVEL)}% interval {_pct(lo)} to {_pct(hi)}, which reaches zero: "
                              "the spread is larger than the overhead, so not even its sign is measured here "
                              "(a quieter machine or a larger --max-time narrows it)."]
        lines += ["", f"## Throughput and peak memory, batch {bs}: images/s{' of CPU time' if cpu_clock else ''}, "
                      "peak MB", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in models:
            row = [name]
            for rt in runtimes:
                c = cells.get((name, rt))
                st = (c or {}).get("batches", {}).get(k)
                if c is None or c["status"] != "ok" or st is None:
                    row.append("-" if c is None else c["status"])
                else:
                    mem = ""
                    if "peak_mem_mb" in st:
                        inc = f" (+{st['rss_increase_mb']:.0f})" if "rss_increase_mb" in st else ""
                        mem = f", {st['peak_mem_mb']:.0f}{inc} MB"
                    row.append(f"{st['images_per_s']:.2f} img/s{mem}")
            lines.append("| " + " | ".join(row) + " |")
    mem_kinds = sorted({st["mem_kind"] for c in result["cells"] for st in c.get("batches", {}).values() if "mem_kind" in st})
    if mem_kinds:
        lines += ["", "Peak memory: " + "; ".join(mem_kinds) + "; on the CPU, (+N) is its rise over the resident "
                  "set when the cell's calls began" + ("" if cfg["isolate"] else
                                                        " (cells share one process: earlier cells' memory is included)")
                  + "."]
    lines += _paper_lines(cfg, models)
    if "train" in result:
        lines += _train_lines(result, models, note)
    timed = sorted({(c["runtime"], c["timed"], c.get("provider", "")) for c in result["cells"] if c["status"] == "ok"})
    if timed:
        lines += ["", "What each runtime's time covers:"]
        lines += [f"- {rt}: {t}" + (f" ({p})" if p else "") for rt, t, p in timed]
    if notes:
        lines += ["", "Notes:"] + [f"[{i + 1}] {n}" for i, n in enumerate(notes)]
    return "\n".join(lines) + "\n"


def _paper_lines(cfg: dict, models: list[str]) -> list[str]:
    same = (cfg["backbone"], cfg["image_size"], cfg["num_classes"]) == ("resnet101", 448, 80)
    lines = ["", "## The paper's figures (SRDL table 3), for reference", "",
             "Measured on another machine" + ("" if same else " and another configuration") + ": compare its "
             "overheads with the ones above, not its milliseconds.", "",
             f"| model | {PAPER_LABEL} | overhead over its baseline |", "|---|---|---|"]
    for name in models:
        p = PAPER_MS.get(name)
        if p is None:
            lines.append(f"| {name} | - | - |")
        else:
            ov = "" if name == "baseline" else _pct(overhead(p, PAPER_MS["baseline"]))
            lines.append(f"| {name} | {p:.2f} | {ov} |")
    lines += ["", "Paper rows without a fastmlr model (ms/image, RTX 3070): "
              + ", ".join(f"{k} {v:.2f}" for k, v in PAPER_ONLY_MS.items()) + "."]
    return lines


def _train_lines(result: dict, models: list[str], note) -> list[str]:
    tr = result["train"]
    lines = ["", f"## Training forward+backward, batch {tr['batch']}: images/s, peak MB "
                 f"(fastmlr.ops reference vs fused)", ""]
    fused = tr["fused_backend"] or "fused"
    head = ["model", "reference", fused, "speed-up"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in models:
        row, pair = [name], []
        for ob in ("reference", tr["fused_backend"]):
            c = next((t for t in tr["cells"] if t["model"] == name and t["ops_backend"] == ob), None)
            if ob is None:
                row.append(f"skipped {note('fused: ' + tr['fused_reason'])}")
            elif c is None or c["status"] != "ok":
                row.append("-" if c is None else f"failed {note(name + ' / train ' + ob + ': ' + c['reason'])}")
            else:
                inc = f" (+{c['rss_increase_mb']:.0f})" if "rss_increase_mb" in c else ""
                row.append(f"{c['images_per_s']:.2f} img/s, {c['peak_mem_mb']:.0f}{inc} MB")
                pair.append(c["images_per_s"])
        row.append(f"x{pair[1] / pair[0]:.2f}" if len(pair) == 2 else "-")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Models whose head calls no fastmlr.ops (baseline, ML-GCN) run the same code in both columns: "
                  "their difference is noise."]
    return lines


# -- chart --------------------------------------------------------------------------------------------


def chart_panels(result: dict) -> list[dict]:
    """The chart's three panels, each one unit and one source: measured ms/image (error bars p25-p75), the
    overheads over each source's own baseline in percent (measured with their interval, the paper's
    labelled), and the paper's ms/image. A series: (label, values, (low errors, high errors) or None)."""
    cfg, mach = result["config"], result["machine"]
    bs = str(cfg["batch_sizes"][0])
    models, runtimes = cfg["models"], cfg["runtimes"]
    cells = {(c["model"], c["runtime"]): c for c in result["cells"]}
    nan = float("nan")

    def st(mo, rt):
        c = cells.get((mo, rt), {})
        return c["batches"].get(bs) if c.get("status") == "ok" else None

    lat, ovh = [], []
    for rt in runtimes:
        sts = [st(mo, rt) for mo in models]
        if not any(sts):
            continue
        ms = [s["ms_per_image"] if s else nan for s in sts]
        lo = [(s["median_ms"] - s["p25_ms"]) / int(bs) if s else 0.0 for s in sts]
        hi = [(s["p75_ms"] - s["median_ms"]) / int(bs) if s else 0.0 for s in sts]
        lat.append((rt, ms, (lo, hi)))
        ov, elo, ehi = [], [], []
        for s in sts:
            o = s.get("overhead_vs_baseline") if s else None
            iv = s.get("overhead_interval") if s else None
            ov.append(100 * o if o is not None else nan)
            elo.append(100 * (o - iv[0]) if iv else 0.0)
            ehi.append(100 * (iv[1] - o) if iv else 0.0)
        ovh.append((f"{rt} (here)", ov, (elo, ehi)))
    paper_ov = [100 * overhead(PAPER_MS[mo], PAPER_MS["baseline"]) if mo in PAPER_MS else nan for mo in models]
    ovh.append((PAPER_SHORT, paper_ov, None))
    where = mach.get("gpu") or mach["cpu"]
    return [
        {"title": f"measured here: {cfg['backbone']} {cfg['image_size']} px, batch {bs}, {where}",
         "ylabel": "ms per image (median, bars p25-p75)", "series": lat, "source": "measured"},
        {"title": "overhead over the baseline, each source against its own",
         "ylabel": f"% (measured: {int(100 * LEVEL)}% interval)", "series": ovh, "source": "ratio"},
        {"title": "paper (SRDL table 3): RTX 3070, PyTorch, R101 448 px", "ylabel": "ms per image",
         "series": [(PAPER_SHORT, [PAPER_MS.get(mo, nan) for mo in models], None)], "source": "paper"},
    ]


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["config"]["models"]
    panels = chart_panels(result)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(12, 4.2 * len(panels)), 4.6))
    for ax, panel in zip(axes, panels):
        series = panel["series"]
        width = 0.8 / max(1, len(series))
        for i, (label, ys, err) in enumerate(series):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(models))]
            paper = label == PAPER_SHORT
            # A bootstrap interval need not contain the median it is drawn around: clip the bars at zero length.
            yerr = None if err is None else [[max(0.0, e) for e in err[0]], [max(0.0, e) for e in err[1]]]
            ax.bar(xs, ys, width, label=label, yerr=yerr, capsize=2,
                   hatch="//" if paper else None, color="lightgrey" if paper else None, edgecolor="black",
                   linewidth=0.4)
        if panel["source"] == "ratio":
            ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set_ylabel(panel["ylabel"], fontsize=8)
        ax.set_title(panel["title"], fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
