"""tops: hot-path LLM kernels as Pallas TPU (``tops.ops``), Triton GPU (``tops.gpu``) and
float64 reference (``tops.cpu``) implementations, held to one precision contract."""

__version__ = "0.1.0"
