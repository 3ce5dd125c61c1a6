"""The workflow's configuration.

Plan-time checks, the models an experiment trains, one step's config slice, the SLURM site
knobs, and the generated ``config/README.md``.
"""
