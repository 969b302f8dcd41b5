"""python -m fastmlr.bench: the SRDL paper's inference-time table (table 3), measured here on every runtime.

Rows are models (every registered model unless ``--models``), columns are
runtimes (PyTorch eager, torch.compile, fp16 autocast, ONNX Runtime,
AOTInductor, TensorRT; ``--runtimes``); defaults follow the paper (ResNet-101,
448 x 448, batch 1, 80 classes). A runtime that cannot run here says why in its
cell. "Backend" keeps its one meaning: the :mod:`fastmlr.ops` implementation
inside a model (``--ops-backend``).

How a figure is made. The models of one runtime are prepared in one process
and timed interleaved: each round calls every model once, in an order rotated
each round, so load from other processes falls on all of them alike. Rounds
go on until every overhead over ``baseline`` has a narrow bootstrap interval,
or a time cap (``--min-iters``, ``--max-iters``, ``--max-time``,
``--target-spread``; ``--iters N`` fixes the count). Each cell reports the
median with its p25-p75 (and p10/p90 in bench.json), images/s, peak memory
(per cell in a fresh process unless ``--quick``), and the overhead over
``baseline`` with its 90% interval; an overhead whose interval reaches zero is
flagged in bench.json and warned about in the table. The paper's figures (RTX
3070, PyTorch eager) are a separate table and a separate chart panel; only
overheads, each against its own baseline, are set side by side.

What is timed, for every runtime: one inference call on an input tensor that
was prepared beforehand (random normal images, never zeros), from the call to
its outputs (logits and sigmoid probabilities) being ready. Model building,
export, compilation and engine building are reported separately as
``prepare_s``. Exported graphs fold image-independent constants; eager and
compiled PyTorch recompute them each call. ONNX Runtime runners take CPU
tensors, so on a GPU their time includes the copies.

Weights are random (timings do not depend on them). ``--train`` adds a
forward+backward table per model with the ``reference`` ops and with the
fastest fused backend of :mod:`fastmlr.ops`.

Writes ``OUT/bench.json`` (every figure), ``OUT/bench.md`` and ``OUT/bench.png``.

Modules: :mod:`.measure` (timers, interleaving, statistics, memory),
:mod:`.runtimes` (the columns), :mod:`.cells` (one model on one runtime, groups,
child processes), :mod:`.report` (markdown, chart), :mod:`.cli` (the command).
"""

from __future__ import annotations

from .cells import fused_backend, run_cell, run_cell_isolated, run_group, run_train_cell
from .cli import build_parser, main, resolve_config, run
from ..measure import (
    CallTimer,
    MemoryMeter,
    interleaved_times,
    overhead,
    overhead_interval,
    overhead_stats,
    percentile,
    summarize,
    time_calls,
)
from .report import PAPER_MS, PAPER_ONLY_MS, add_overheads, chart_panels, format_markdown, plot
from .runtimes import RUNTIMES, Runtime, SkipCell

__all__ = [
    "RUNTIMES", "Runtime", "SkipCell", "CallTimer", "MemoryMeter", "interleaved_times", "overhead",
    "overhead_interval", "overhead_stats", "percentile", "summarize", "time_calls", "run_cell",
    "run_cell_isolated", "run_group", "run_train_cell", "fused_backend", "add_overheads", "chart_panels",
    "format_markdown", "plot", "PAPER_MS", "PAPER_ONLY_MS", "build_parser", "main", "resolve_config", "run",
]
