"""Where judgments come from: Label Studio, AI feedback, the annotation queue."""
