"""The version of itwinai-hpc (read by the build from this file)."""

__version__ = "0.1.0"
