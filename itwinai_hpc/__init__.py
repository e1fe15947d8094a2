"""itwinai-hpc: one workflow YAML becomes dependent SLURM jobs (or a local run)."""

from itwinai_hpc.core.version import __version__

__all__ = ["__version__", "job"]


def __getattr__(name: str):
    """`from itwinai_hpc import job`: the API for a training script of your own (ml/job.py),
    imported only when asked for."""
    if name == "job":
        from itwinai_hpc.ml import job
        return job
    raise AttributeError(f"module 'itwinai_hpc' has no attribute {name!r}")
