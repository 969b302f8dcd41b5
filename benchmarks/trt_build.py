"""TensorRT-RTX engine builds of the paper's deployment size: build time and engine size per graph.

    python benchmarks/trt_build.py --out runs/trt-build                     # ResNet-101, 448 px, 80 classes
    python benchmarks/trt_build.py --out runs/trt-build --targets 8.6       # one target instead of RTX's default four

For baseline and SRDL, each graph ``python -m fastmlr.export --onnx`` writes (fp32 and fp16 in the
standard op set, fp32 in the fused one; ``--fp16`` is standard only; fp16 here is all fp16 but the
final sigmoid, where export's mixed-precision search ends for these random models: ``--fp16-search``
runs the search itself: its fp16 forwards on the CPU are slow) is exported once into ``--out`` (kept for reruns) and built
with TensorRT-RTX (``fastmlr.deploy.trt.build_trt_engine(flavour="rtx")``, batch profile
1/1/8, no GPU needed). Prints a markdown table: the build time (parse + build, as the sidecar
records it; the median of ``--repeat`` builds), the engine size, or why a graph does not build. A fused graph is built without a
standard fallback, so the table says what TensorRT-RTX does with fastmlr's nodes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings


def export_graph(model_name: str, backbone: str, classes: int, size: int, path: str, fp16: bool, ops: str,
                 search: bool = False) -> None:
    import torch

    from fastmlr.artifact.contract import make_sidecar
    from fastmlr.deploy.onnx import export_onnx, export_onnx_fp16
    from fastmlr.models import create_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights and embeddings: build cost does not depend on them
        model = create_model(model_name, classes, backbone=backbone, weights="none").eval()
    kw = dict(min_batch=1, opt_batch=1, max_batch=8, onnx_ops=ops, sidecar=make_sidecar(model, size, threshold=0.5))
    if fp16 and search:  # what export --fp16 writes: the mixed-precision search's graph (fp16 forwards on the CPU: slow)
        export_onnx_fp16(model, path, size, **kw)
    else:  # all fp16 but the final sigmoid: where the search ends for these random models
        export_onnx(model, path, size, fp16=fp16, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the graphs and engines")
    p.add_argument("--models", default="baseline,srdl")
    p.add_argument("--backbone", default="resnet101")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--targets", default=None, help="compute capabilities (default: TensorRT-RTX's default four)")
    p.add_argument("--ops", default="standard,fused")
    p.add_argument("--repeat", type=int, default=3, help="builds per graph (median, min and max reported)")
    p.add_argument("--fp16-search", action="store_true",
                   help="fp16 graphs through export --fp16's mixed-precision search (default: all fp16, which is "
                        "where the search ends for random models, without its fp16 CPU forwards)")
    args = p.parse_args(argv)

    from fastmlr.artifact import probe
    from fastmlr.deploy.trt import RTX_DEFAULT_TARGETS, build_trt_engine, parse_targets
    from fastmlr.artifact.contract import read_sidecar

    targets = parse_targets(args.targets) or RTX_DEFAULT_TARGETS
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        for ops in args.ops.split(","):
            for fp16 in (False, True):
                if fp16 and ops == "fused":
                    rows.append((name, "fp16", ops, "not written", "export --fp16 writes the standard op set only"))
                    continue
                stem = os.path.join(args.out, f"{name}-{args.backbone}-{args.image_size}-{ops}-{'fp16' if fp16 else 'fp32'}")
                if not os.path.exists(stem + ".onnx"):
                    export_graph(name, args.backbone, args.num_classes, args.image_size, stem + ".onnx", fp16, ops,
                                 args.fp16_search)
                tag = "-".join(t.replace(".", "") for t in targets)
                engine = f"{stem}-sm{tag}.plan"
                seconds = []
                try:
                    for _ in range(args.repeat):
                        build_trt_engine(stem + ".onnx", engine, min_batch=1, opt_batch=1, max_batch=8,
                                         flavour="rtx", targets=targets)
                        seconds.append(read_sidecar(engine)["tensorrt"]["build_seconds"])
                except (probe.TRTUnavailable, RuntimeError) as e:
                    rows.append((name, "fp16" if fp16 else "fp32", ops, "does not build", str(e).splitlines()[0]))
                    continue
                trt = read_sidecar(engine)["tensorrt"]
                spread = f" (min {min(seconds):.1f}, max {max(seconds):.1f})" if len(seconds) > 1 else ""
                rows.append((name, "fp16" if fp16 else "fp32", ops, f"{statistics.median(seconds):.1f} s{spread}",
                             f"{trt['engine_bytes'] / 1e6:.1f} MB"))
    print(f"\nTensorRT-RTX {probe.tensorrt_version('rtx')}, targets {', '.join(targets)}, {args.backbone} "
          f"{args.image_size} px, {args.num_classes} classes, batch 1/1/8")
    print("| model | precision | op set | build | engine |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
