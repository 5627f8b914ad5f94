"""Ray Data jobs: corpus schema, sources, build, read, manifest, report."""
