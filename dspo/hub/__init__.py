"""Hub artefacts: the download step with its manifest, and released models named by a method entry."""
