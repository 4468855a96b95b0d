"""Training recipes: Diffusion-DPO, SPO and the step-aware preference model. Reads dataset snapshots, never the DuckDB file."""
