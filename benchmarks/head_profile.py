"""Where SRDL's head time goes on the CPU (issue 20), as printed tables.

    python benchmarks/head_profile.py [--threads 2] [--rounds 15]
    python benchmarks/head_profile.py --perf [--runtimes aoti,onnxrt-fused] [--seconds 8] [--repeat 3] [--work DIR]
    python benchmarks/head_profile.py --onnx-nodes [--calls 20] [--work DIR]

The first table times each piece of ``SRDL.forward_head`` alone on a fixed feature map (ResNet-101 at
448 px: N=1, D=2048, 14 x 14; 80 classes), wall clock, median of interleaved rounds, with the linear layers
run two ways: ATen's ``F.linear`` (what eager PyTorch runs: MKL's sgemm in the x86 wheels) and oneDNN with
the weight packed once (``mkldnn._linear_pointwise``, what an AOTInductor CPU package compiled with
freezing runs). Multiply-add rates are given so that they can be set beside the backbone's.

``--perf`` profiles the deployed artefacts instead: the baseline's and SRDL's package or graph are exported
into ``--work`` (kept, so a rerun skips the export), each runs in its own process, and after its warm-up
Linux ``perf record`` samples that process for ``--seconds`` (``--repeat`` windows per model, the two models
alternating; medians); the table gives CPU milliseconds per image by shared object (oneDNN's and MLAS's
code, fastmlr's kernels, OpenMP's waiting, the kernel's page faults, Python), SRDL's minus the baseline's:
the head's cost as each runtime spends it. Needs ``perf``.

``--onnx-nodes`` runs the fused graphs in ONNX Runtime with its profiler (as ``fastmlr.runtime`` opens them:
spinning off, the PyOps' kernels on fastmlr's sleeping pool, then with them on OpenMP's threads) and gives
each op type's time per image, SRDL's beside the baseline's, plus the time outside the nodes (the session's
own work and the hand-offs); and, for scale, the same MatMul shapes alone in a session of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

CLASSES, SIDE, BACKBONE = 80, 448, "resnet101"
RUNTIMES = ("aoti", "onnxrt-fused")


def head_model():
    import torch

    from fastmlr.models import create_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights and embeddings: this measures time, not accuracy
        m = create_model("srdl", CLASSES, backbone=BACKBONE).eval()
    m.fold_constants()
    fmap = torch.randn(1, m.backbone.out_channels, SIDE // 32, SIDE // 32,
                       generator=torch.Generator().manual_seed(0)).relu()
    return m, fmap


def pieces(threads: int, rounds: int) -> list[tuple[str, float, float | None]]:
    """(piece, median ms, G multiply-adds per second or None), interleaved rounds."""
    import torch

    from fastmlr import ops

    torch.set_num_threads(threads)
    m, fmap = head_model()
    f = fmap.flatten(2)
    N, D, P = f.shape
    mkldnn = torch.ops.mkldnn

    def packed(lin, rows):
        return mkldnn._reorder_linear_weight(lin.weight.detach(), rows), lin.bias.detach()

    with torch.inference_mode():
        wc = m.category_embeddings()
        x_sa = f.transpose(1, 2).reshape(N * P, D).contiguous()
        u = m.f_sa(x_sa).view(N, P, D)
        sa = m.spatial_attention(f, wc)
        ca = m.channel_attention(f, wc)
        x_c = torch.tanh(m.f_ca(f.amax(2))[:, None, :] * wc[None]).reshape(-1, D)
        w_sa, b_sa = packed(m.f_sa, N * P)
        w_c, b_c = packed(m.f_c, x_c.shape[0])
        macs = {"f_sa": N * P * D * D, "f_c": x_c.shape[0] * D * D}
        calls = {
            "f_sa, F.linear (eager: MKL)": (lambda: m.f_sa(x_sa), macs["f_sa"]),
            "f_sa, oneDNN packed (AOTInductor)": (
                lambda: mkldnn._linear_pointwise(x_sa, w_sa, b_sa, "none", [], ""), macs["f_sa"]),
            "f_c, F.linear (eager: MKL)": (lambda: m.f_c(x_c), macs["f_c"]),
            "f_c, oneDNN packed (AOTInductor)": (
                lambda: mkldnn._linear_pointwise(x_c, w_c, b_c, "none", [], ""), macs["f_c"]),
            "car_spatial_attention (eq. 5)": (
                lambda: ops.car_spatial_attention(u, wc, m.f_s.weight[0], m.f_s.bias[0]), None),
            "car_pool (eq. 6 + GMP), no gradient": (lambda: ops.car_pool(f, sa, ca), None),
            "GMP, f_ca, tanh(g Wc), sigmoid": (
                lambda: torch.sigmoid(torch.tanh(m.f_ca(f.amax(2))[:, None, :] * wc[None])), None),
            "classify (eq. 2)": (lambda: m.classify(ca, m.cls_weight, m.cls_bias), None),
            "whole head (eager)": (lambda: m.forward_head(fmap), None),
        }
        times = {k: [] for k in calls}
        for fn, _ in calls.values():
            fn()
            fn()
        names = list(calls)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                calls[k][0]()
                times[k].append(time.perf_counter() - t0)
    out = []
    for k, (_, mac) in calls.items():
        med = statistics.median(times[k])
        out.append((k, 1e3 * med, mac / med / 1e9 if mac else None))
    return out


# -- --perf: the deployed artefacts under Linux perf ----------------------------------------------------------

def artefact(work: str, runtime: str, model: str) -> str:
    """Export ``model``'s artefact for ``runtime`` into ``work`` unless it is there; returns its path."""
    path = os.path.join(work, f"{model}.pt2" if runtime == "aoti" else f"{model}-fused.onnx")
    if os.path.exists(path):
        return path
    flag = ["--aoti", path] if runtime == "aoti" else ["--onnx", path, "--onnx-ops", "fused"]
    cmd = [sys.executable, "-m", "fastmlr.export", "--model", model, "--num-classes", str(CLASSES),
           "--backbone", BACKBONE, "--image-size", str(SIDE), *flag]
    print(f"head_profile: exporting {os.path.basename(path)} ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


def serve(path: str, threads: int, ready: str, seconds: float) -> None:
    """Child: load the artefact, warm up, write ``ready``, then call it for ``seconds``; prints calls made."""
    import torch

    from fastmlr import runtime

    torch.set_num_threads(threads)
    opts = {"threads": threads, "spin": False} if path.endswith(".onnx") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = runtime.load(path, **opts)
    x = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        r.run(x)
    with open(ready, "w") as fh:
        fh.write(str(os.getpid()))
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds + 1.0:  # outlives the sampling window
        r.run(x)
        calls += 1
    print(json.dumps({"calls": calls, "seconds": time.perf_counter() - t0}))


def sample(path: str, threads: int, seconds: float, tmp: str) -> dict:
    """CPU ms per image by shared object, from ``perf record -p`` over ``seconds`` of the serving child."""
    ready, data = os.path.join(tmp, "ready"), os.path.join(tmp, "perf.data")
    for p in (ready, data):
        if os.path.exists(p):
            os.remove(p)
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", path, "--threads", str(threads),
                              "--seconds", str(seconds), "--ready", ready], stdout=subprocess.PIPE, text=True)
    while not os.path.exists(ready):
        if child.poll() is not None:
            raise SystemExit(f"head_profile: the process serving {path} exited with {child.returncode}")
        time.sleep(0.1)
    with open(ready) as fh:
        pid = fh.read().strip()
    t0 = time.perf_counter()
    subprocess.run(["perf", "record", "-q", "-F", "999", "-p", pid, "-o", data, "--", "sleep", str(seconds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    window = time.perf_counter() - t0
    out, _ = child.communicate()
    served = json.loads(out.strip().splitlines()[-1])
    rate = served["calls"] / served["seconds"]  # images per second while sampled
    report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "dso", "-F", "sample,dso",
                             "-g", "none"], check=True, capture_output=True, text=True).stdout
    per_image = {}
    for line in report.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].isdigit():
            name = parts[1].strip()
            name = "oneDNN JIT code" if name.startswith("[JIT]") else name
            ms = int(parts[0]) / 999 * 1e3 / (rate * window)  # samples at 999 Hz per busy CPU -> CPU ms / image
            per_image[name] = per_image.get(name, 0.0) + ms
    return {"ms_per_image": 1e3 / rate, "cpu_ms_by_object": per_image}


def median_sample(samples: list[dict]) -> dict:
    """Per-object medians (and the median wall time) of repeated samples of one model."""
    names = {n for smp in samples for n in smp["cpu_ms_by_object"]}
    return {"ms_per_image": statistics.median(smp["ms_per_image"] for smp in samples),
            "cpu_ms_by_object": {n: statistics.median(smp["cpu_ms_by_object"].get(n, 0.0) for smp in samples)
                                 for n in names}}


def perf_table(runtimes: list[str], threads: int, seconds: float, work: str, repeat: int) -> None:
    if shutil.which("perf") is None:
        raise SystemExit("head_profile --perf needs Linux perf on PATH (linux-tools / linux-perf)")
    os.makedirs(work, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fastmlr-headprof-") as tmp:
        for rt in runtimes:
            paths = {m: artefact(work, rt, m) for m in ("baseline", "srdl")}
            runs = {m: [] for m in paths}
            for r in range(repeat):  # windows alternate, so a spell of load falls on both models
                for m in (("baseline", "srdl") if r % 2 == 0 else ("srdl", "baseline")):
                    runs[m].append(sample(paths[m], threads, seconds, tmp))
            base, srdl = median_sample(runs["baseline"]), median_sample(runs["srdl"])
            print(f"\n{rt}, {threads} threads, median of {repeat} alternating {seconds:g}-s windows per model: "
                  f"baseline {base['ms_per_image']:.1f} ms/image, SRDL {srdl['ms_per_image']:.1f} ms/image (wall)")
            print("| shared object | baseline CPU ms/image | SRDL CPU ms/image | SRDL - baseline |")
            print("|---|---:|---:|---:|")
            names = set(base["cpu_ms_by_object"]) | set(srdl["cpu_ms_by_object"])
            rows = [(n, base["cpu_ms_by_object"].get(n, 0.0), srdl["cpu_ms_by_object"].get(n, 0.0)) for n in names]
            rows.sort(key=lambda r: -abs(r[2] - r[1]))
            for name, b, s in rows:
                if abs(s - b) >= 0.05 or max(b, s) >= 1.0:
                    print(f"| {name} | {b:.2f} | {s:.2f} | {s - b:+.2f} |")
            tb, ts = sum(base["cpu_ms_by_object"].values()), sum(srdl["cpu_ms_by_object"].values())
            print(f"| all | {tb:.2f} | {ts:.2f} | {ts - tb:+.2f} |")


# -- --onnx-nodes: ONNX Runtime's own profiler on the fused graphs --------------------------------------------

def _node_ms(path: str, threads: int, calls: int, tmp: str) -> tuple[float, dict]:
    """(wall ms per call, {op type: ms per call}) of ``calls`` profiled calls after three warm-up calls."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from fastmlr.runtime.onnx import SPIN_KEY
    from fastmlr.runtime.onnx_fused import fused_node_types, fused_session_input

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry(SPIN_KEY, "0")
    model = onnx.load(path)
    source = fused_session_input(path, model, opts) if fused_node_types(model) else path
    x = np.random.RandomState(0).randn(1, 3, SIDE, SIDE).astype(np.float32)
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tmp, "ort")
    sess = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, {"images": x})
    t0 = time.perf_counter()
    for _ in range(calls):
        sess.run(None, {"images": x})
    wall = 1e3 * (time.perf_counter() - t0) / calls
    with open(sess.end_profiling()) as fh:
        events = json.load(fh)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[-calls]["ts"] if len(runs) >= calls else 0
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"].get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / calls
    return wall, per_op


def _matmul_alone(rows: int, threads: int, calls: int) -> float:
    """ms per call of a [1, rows, 2048] x [2048, 2048] MatMul alone in a session (weights in cache)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from fastmlr.runtime.onnx import SPIN_KEY

    w = np.random.RandomState(1).randn(2048, 2048).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, 2048])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry(SPIN_KEY, "0")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.RandomState(2).randn(1, rows, 2048).astype(np.float32)
    times = []
    for i in range(calls + 3):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def onnx_nodes_table(threads: int, calls: int, work: str) -> None:
    import torch

    from fastmlr.runtime import onnx_fused

    torch.set_num_threads(threads)
    os.makedirs(work, exist_ok=True)
    paths = {m: artefact(work, "onnxrt-fused", m) for m in ("baseline", "srdl")}
    # The MatMuls alone first: after a phase with the kernels on OpenMP's threads, those threads may still spin.
    alone = {rows: _matmul_alone(rows, threads, calls) for rows in (196, CLASSES)}
    cols = {}
    with tempfile.TemporaryDirectory(prefix="fastmlr-ortprof-") as tmp:
        try:
            for sleeping in (True, False):
                onnx_fused.SLEEPING_POOL = sleeping
                for m in paths if sleeping else ("srdl",):
                    cols[(m, sleeping)] = _node_ms(paths[m], threads, calls, tmp)
        finally:
            onnx_fused.SLEEPING_POOL = True
    names = {"baseline": "baseline", "srdl": "SRDL"}
    heads = [f"{names[m]}{'' if s else ', kernels on OpenMP threads'}" for m, s in cols]
    print(f"ONNX Runtime's profiler, fused graphs, {threads} threads, spinning off, mean of {calls} calls, ms per image")
    print("| op type | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(cols))
    ops_ = sorted({op for _, per in cols.values() for op in per}, key=lambda o: -cols[("srdl", True)][1].get(o, 0))
    for op in ops_:
        vals = [per.get(op, 0.0) for _, per in cols.values()]
        if max(vals) >= 0.02:
            print(f"| {op} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    print("| outside the nodes (session, hand-offs) | "
          + " | ".join(f"{wall - sum(per.values()):.2f}" for wall, per in cols.values()) + " |")
    print("| wall | " + " | ".join(f"{wall:.2f}" for wall, _ in cols.values()) + " |")
    print(f"MatMul alone, [1, M, 2048] x [2048, 2048], {threads} threads: "
          + ", ".join(f"M = {rows}: {ms:.2f} ms" for rows, ms in alone.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the pieces (median taken)")
    p.add_argument("--perf", action="store_true", help="profile the deployed artefacts with Linux perf instead")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"with --perf: from {', '.join(RUNTIMES)}")
    p.add_argument("--seconds", type=float, default=8.0, help="with --perf: sampling window per model")
    p.add_argument("--repeat", type=int, default=3, help="with --perf: windows per model, alternating (median)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "fastmlr-head-profile"),
                   help="with --perf or --onnx-nodes: where the artefacts are exported (kept for reruns)")
    p.add_argument("--onnx-nodes", action="store_true",
                   help="ONNX Runtime's profiler on the fused graphs: time per op type, SRDL beside the baseline")
    p.add_argument("--calls", type=int, default=20, help="with --onnx-nodes: profiled calls per graph")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--ready", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.serve:
        serve(args.serve, args.threads, args.ready, args.seconds)
        return 0
    if args.onnx_nodes:
        onnx_nodes_table(args.threads, args.calls, args.work)
        return 0
    if args.perf:
        runtimes = [r for r in args.runtimes.split(",") if r]
        bad = [r for r in runtimes if r not in RUNTIMES]
        if bad:
            p.error(f"--runtimes: unknown {', '.join(bad)}; expected some of {', '.join(RUNTIMES)}")
        perf_table(runtimes, args.threads, args.seconds, args.work, args.repeat)
        return 0
    from kernel_bound import machine  # this folder's own script

    rows = pieces(args.threads, args.rounds)
    print(f"{machine()}, load average {os.getloadavg()[0]:.1f}; SRDL head, "
          f"ResNet-101 448 px, batch 1, {CLASSES} classes; {args.threads} threads, wall clock, median of "
          f"{args.rounds} interleaved rounds")
    print("| piece | ms | G multiply-adds/s |")
    print("|---|---:|---:|")
    for name, ms, rate in rows:
        print(f"| {name} | {ms:.2f} | {'' if rate is None else f'{rate:.0f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
