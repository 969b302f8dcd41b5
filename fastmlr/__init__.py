"""fastmlr: a training-to-deployment runtime for multi-label image recognition."""

__version__ = "0.1.0"
