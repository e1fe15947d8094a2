"""The ML steps `train` and `predict`: DDP training over HDF5 shards, MLflow tracking and registry.

Reads only its environment (RANK/WORLD_SIZE/LOCAL_RANK, SLURM_*, ITWINAI_HPC_RUN_DIR); never
imports itwinai_hpc.backends or the orchestration modules.
"""
