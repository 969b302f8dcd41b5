"""What a deployment artefact is: shared by the builders (fastmlr.deploy) and the runners (fastmlr.runtime).

- :mod:`~fastmlr.artifact.contract`: the artefact contract (sidecar format, I/O
  names, writing, reading and checking sidecars);
- :mod:`~fastmlr.artifact.probe`: the GPU / TensorRT probe.

Both packages import this one and neither imports the other's modules for it:
``fastmlr.runtime`` never imports ``fastmlr.deploy``.
"""
