"""The workflow's configuration: plan-time checks, the models an experiment trains, one step's config slice, site knobs, the generated doc."""
