"""Hub artefacts.

The download step with its manifest, and released models that a method entry names.
"""
