"""Apache TVM (Relax) backend: import, per-target pipelines, build, export."""
