"""Mixed fp16 ONNX graphs that meet an error budget: which nodes stay fp32, found by measurement.

:func:`search_fp16` chooses those nodes. It groups the nodes by the module
scope torch.onnx records in each node's metadata (a backbone stage, a head
layer, or a single functional op of the model's own forward), measures on the
verification images the largest probability error each group causes when it
alone joins the mandatory fp16 convolutions, then moves the most sensitive
groups back to fp32 until the graph meets the budget and finally returns any
group whose return to fp16 keeps the budget. The backbone's convolutions stay
fp16; only when the budget cannot be met with them in fp16 does the search move
convolution groups too, and its report says so.

Errors are measured with ONNX Runtime's CPU provider, the runtime of the
export check. Where that provider has no fp16 kernel it computes the op in fp32
between casts, so its figures hold fp16 storage rounding at every node
boundary, not fp16 arithmetic inside an op.
"""

from __future__ import annotations

import time

import numpy as np

from .fp16_graph import Fp16Graph, convert_fp16, load_model, precision_of  # noqa: F401  (the conversion, here too)


def _session(data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # fp16 graphs make the CPU provider warn about every node it computes in fp32
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def run_probs(model, images: dict, output: str = "probs") -> dict:
    """{set name: probabilities} of an ONNX graph (path, bytes or ModelProto) on ONNX Runtime's CPU provider."""
    import onnx

    data = model if isinstance(model, (bytes, bytearray)) else \
        (model if isinstance(model, onnx.ModelProto) else load_model(model)).SerializeToString()
    sess = _session(bytes(data))
    name = sess.get_inputs()[0].name
    return {k: sess.run([output], {name: np.ascontiguousarray(x, dtype=np.float32)})[0] for k, x in images.items()}


def max_error(probs: dict, reference: dict) -> dict:
    """{set name: max |p - p_ref|} and, under ``"max"``, the largest of them."""
    errs = {k: float(np.abs(np.asarray(p, np.float64) - np.asarray(reference[k], np.float64)).max())
            for k, p in probs.items()}
    errs["max"] = max(errs.values())
    return errs


def _as_sets(images) -> dict:
    if isinstance(images, dict):
        sets = {k: np.asarray(v, np.float32) for k, v in images.items()}
    else:
        sets = {"images": np.asarray(images, np.float32)}
    if not sets or any(v.ndim != 4 or len(v) == 0 for v in sets.values()):
        raise ValueError("images: expected one or more float32 arrays [n, 3, S, S] with n >= 1")
    return sets


# -- search ---------------------------------------------------------------------------------------------------
def search_fp16(onnx_fp32, out_path: str | None, images, *, budget: float = 1e-2, reference=None,
                margin: float = 0.9, output: str = "probs", compare: dict | None = None) -> dict:
    """Choose the fp32 nodes of an fp16 graph so that it meets ``budget`` on ``images``; write it to ``out_path``.

    ``onnx_fp32``: the fp32 graph (path, bytes or ModelProto). ``images``: an array
    [n, 3, S, S] or {set name: array}, the verification images. ``reference``:
    {set name: probabilities} to measure against (e.g. PyTorch fp32), default the
    fp32 graph on ONNX Runtime. The search aims at ``margin * budget`` so the
    check passes with room; ``ok`` says whether ``budget`` itself is met.
    ``compare``: {label: {set name: probabilities}} of other fp16 routes (PyTorch's
    half forward), measured against the same reference and reported beside.

    Returns the report: kept_fp32 (groups moved back, with the error each caused
    alone and the nodes), forced_fp32, error_all_fp16, error_conv_only,
    error_final (each {set: err, "max": err}), budget, target, images (count),
    conv_fp16_fraction, convs_in_fp32, ok, message, path, evaluations, seconds;
    with ``out_path=None`` nothing is written and ``model`` holds the graph.
    """
    t0 = time.perf_counter()
    graph = Fp16Graph(onnx_fp32)
    sets = _as_sets(images)
    if reference is None:
        reference = run_probs(graph.model, sets, output)
    target = float(budget) * float(margin)
    evals = [0]

    def error_with(fp16_groups) -> dict:
        keep = {n.name for g, nodes in graph.groups.items() if g not in fp16_groups for n in nodes}
        evals[0] += 1
        return max_error(run_probs(convert_fp16(graph, keep), sets, output), reference)

    def error_keep(keep_groups) -> dict:
        return error_with(set(graph.groups) - set(keep_groups))

    conv_groups = {g for g, nodes in graph.groups.items() if any(n.name in graph.convs for n in nodes)}
    # Groups with a backbone conv are split: the convs form a protected group, the rest stays a candidate.
    for g in sorted(conv_groups):
        nodes = graph.groups.pop(g)
        convs = [n for n in nodes if n.name in graph.convs]
        rest = [n for n in nodes if n.name not in graph.convs]
        graph.groups[f"{g} [conv]"] = convs
        if rest:
            graph.groups[g] = rest
    protected = {g for g in graph.groups if g.endswith(" [conv]")}
    candidates = [g for g in graph.groups if g not in protected]

    err_all = error_keep(())
    err_conv, sens = None, {}
    kept: list[str] = []
    convs_fp32: list[str] = []
    err = err_all
    if err["max"] > target:
        err_conv = error_with(protected)
        sens = {g: error_with(protected | {g})["max"] for g in candidates}
        if err_conv["max"] <= target:  # head and glue ops explain the excess: move the worst back first
            for g in sorted(candidates, key=lambda g: -sens[g]):
                kept.append(g)
                err = error_keep(kept)
                if err["max"] <= target:
                    break
        else:  # the fp16 convolutions alone are over the target: the most sensitive conv groups follow
            kept = list(candidates)
            for g in protected:
                sens[g] = error_with({g})["max"]
            for g in sorted(protected, key=lambda g: -sens[g]):
                kept.append(g)
                convs_fp32.append(g)
                err = error_keep(kept)
                if err["max"] <= target:
                    break
        if err["max"] <= target:
            # Return to fp16 what the target allows: the non-conv groups at once if it can, then group by group,
            # least sensitive first.
            rest = [g for g in kept if g in protected]
            if len(rest) < len(kept):
                e = error_keep(rest)
                if e["max"] <= target:
                    kept, err = rest, e
            for g in sorted(kept, key=lambda g: sens[g]):
                trial = [k for k in kept if k != g]
                e = error_keep(trial)
                if e["max"] <= target:
                    kept, err = trial, e
                    if g in convs_fp32:
                        convs_fp32.remove(g)
    keep_nodes = {n.name for g in kept for n in graph.groups[g]}
    final = convert_fp16(graph, keep_nodes)
    err_final = max_error(run_probs(final, sets, output), reference)
    data = final.SerializeToString()
    if out_path:
        import onnx

        from ..files import atomic_write_bytes
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        atomic_write_bytes(out_path, lambda fh: fh.write(data), publish=True)
    n_conv = len(graph.convs)
    conv_fp32 = sum(1 for c in graph.convs if c in keep_nodes)
    ok = err_final["max"] <= budget
    if ok and not kept:
        msg = f"all fp16 meets the budget: {err_final['max']:.2e} <= {budget:.3g}"
    elif ok:
        msg = f"{len(kept)} group(s) kept in fp32 bring {err_all['max']:.2e} to {err_final['max']:.2e} <= {budget:.3g}"
    else:
        msg = (f"budget {budget:.3g} unreachable: {err_final['max']:.2e} at best, with {len(kept)} of "
               f"{len(graph.groups)} groups in fp32")
    if err_conv is not None and err_conv["max"] > target:
        msg += (f"; the fp16 convolutions alone give {err_conv['max']:.2e} > target {target:.2e}, so "
                f"{conv_fp32}/{n_conv} backbone convolutions stay fp32")
    rep = {
        "method": "sensitivity search over node groups (fastmlr.deploy.fp16)",
        "budget": float(budget), "target": target, "ok": ok, "message": msg,
        "images": int(sum(len(v) for v in sets.values())), "image_sets": {k: len(v) for k, v in sets.items()},
        "error_all_fp16": err_all, "error_conv_only": err_conv, "error_final": err_final,
        "kept_fp32": [{"group": g, "error_alone": sens[g], "ops": sorted({n.op_type for n in graph.groups[g]}),
                       "measured": "the group alone in fp16" if g in protected
                       else "the group in fp16 beside the fp16 convolutions",
                       "nodes": [n.name for n in graph.groups[g]]} for g in kept],
        "forced_fp32": dict(sorted(graph.forced.items())),
        "convs_in_fp32": convs_fp32,
        "conv_fp16_fraction": (n_conv - conv_fp32) / n_conv if n_conv else 1.0,
        "path": out_path, "evaluations": evals[0], "seconds": time.perf_counter() - t0,
    }
    if compare:
        rep["compare"] = {label: max_error({k: p[k] for k in sets}, reference) for label, p in compare.items()}
    if out_path is None:
        rep["model"] = final
    return rep


def format_report(rep: dict) -> list[str]:
    """Lines for the export log: the errors before and after, what stayed fp32 and why."""
    lines = [f"  fp16 search: {rep['message']} (target {rep['target']:.2e}, {rep['images']} images, "
             f"{rep['evaluations']} evaluations, {rep['seconds']:.1f} s)",
             f"    max |p - p_fp32|: all fp16 {rep['error_all_fp16']['max']:.2e}, "
             + (f"fp16 convolutions only {rep['error_conv_only']['max']:.2e}, " if rep["error_conv_only"] else "")
             + f"final {rep['error_final']['max']:.2e}"]
    for label, e in rep.get("compare", {}).items():
        lines.append(f"    for comparison, {label}: {e['max']:.2e}")
    lines.append(f"    backbone convolutions in fp16: {100 * rep['conv_fp16_fraction']:.0f}%; always fp32: "
                 + (", ".join(f"{k} ({v})" for k, v in rep["forced_fp32"].items()) or "none"))
    for k in rep["kept_fp32"]:
        lines.append(f"    kept fp32: {k['group']} ({'/'.join(k['ops'])}, {len(k['nodes'])} node(s)): "
                     f"{k['error_alone']:.2e} with {k['measured']}")
    return lines


def sidecar_fields(rep: dict) -> dict:
    """The search's summary for the fp16 artefact's sidecar (JSON-serialisable)."""
    return {"budget": rep["budget"], "error": rep["error_final"]["max"], "error_all_fp16": rep["error_all_fp16"]["max"],
            "images": rep["images"], "conv_fp16_fraction": rep["conv_fp16_fraction"],
            "kept_fp32": [{"group": k["group"], "error_alone": k["error_alone"], "nodes": k["nodes"]}
                          for k in rep["kept_fp32"]],
            "forced_fp32": rep["forced_fp32"], "method": rep["method"]}
