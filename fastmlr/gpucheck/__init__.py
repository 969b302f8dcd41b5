"""`make gpu-check`: what fastmlr does on a GPU, in one command, within a fixed time budget.

Meant for a GPU host that brings its own python3, torch and Triton and has no network: nothing is
installed or downloaded, no virtualenv is used. The parts, by what they are:

- :mod:`.cli`: the GPU probe (without a usable CUDA GPU: one line, exit 2, nothing built or written),
  the run of the plan, the command line (``python3 tools/gpu_check.py``);
- :mod:`.plan`: the steps, their commands and environments, and how their figures are read;
- :mod:`.runner`: each step a process group under its limit (LIMITS, expected times, the budget);
- :mod:`.opsbench`: the ops step (every declared op x dtype x backend at the paper's shapes);
- :mod:`.report`: OUT/report.json and OUT/report.md;
- :mod:`.synthetic`: Fashion-MNIST-format photos for hosts without the real ones.

Importing this package imports neither torch nor the rest of fastmlr.
"""
