"""The grid: params YAML -> cells -> papermill, run locally or on Slurm; the ``grid`` and
``summarize`` commands."""
