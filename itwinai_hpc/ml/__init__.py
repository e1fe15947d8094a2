"""The ML steps: `train` (DDP over HDF5 shards, MLflow tracking, the registry's champion) and
`predict` (registry model -> predictions), their configs, and `mlflow-ui`. See README.md here.

Reads only its environment (RANK/WORLD_SIZE/LOCAL_RANK, SLURM_*, ITWINAI_HPC_*); never imports
itwinai_hpc.backends or the orchestration modules.
"""
