"""itwinai-hpc: one workflow YAML becomes dependent SLURM jobs (or a local run)."""

__version__ = "0.1.0"
