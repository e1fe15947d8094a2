"""The foundation every other folder may use: errors, atomic writes, file locks, located YAML,
validation of parsed YAML against a model, --set overrides, SLURM's time/array/memory grammar,
sweep markers. It imports nothing else of the package.
"""
