"""The SLURM backend: sbatch an afterok chain, ask sacct/scontrol what became of the jobs."""
