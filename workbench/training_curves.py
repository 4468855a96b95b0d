"""The charts of a training run on the Train page, from its ``metrics.jsonl`` rows (free of Streamlit)."""

from __future__ import annotations

import polars as pl


def training_curves(rows: list[dict[str, float]]) -> dict[str, pl.DataFrame]:
    """Charted series of a run's metrics rows, by chart title, each a frame with a ``step`` column.

    - Loss: ``loss``.
    - Implicit accuracy: ``implicit_accuracy`` (DPO, SPO: share of pairs the model prefers the
      winner of more than the reference does), or ``train_accuracy`` / ``eval_accuracy`` (SPM).
    - Reference divergence: for DPO, how far the trained model's denoising errors have moved
      from the reference's, ``(|model_mse_w - ref_mse_w| + |model_mse_l - ref_mse_l|) / 2``; for
      SPO, ``clip_fraction``, the share of likelihood ratios to the sampling policy outside the
      trust region. The SPM and SFT have no reference, hence no such chart.

    Charts with no data are left out.
    """
    if not rows:
        return {}
    frame = pl.DataFrame(rows, infer_schema_length=None)
    columns = set(frame.columns)
    charts: dict[str, pl.DataFrame] = {}
    if "loss" in columns:
        charts["Loss"] = frame.select("step", "loss")
    accuracy = [c for c in ("implicit_accuracy", "train_accuracy", "eval_accuracy") if c in columns]
    if accuracy:
        charts["Implicit accuracy"] = frame.select("step", *accuracy)
    if {"model_mse_w", "model_mse_l", "ref_mse_w", "ref_mse_l"} <= columns:
        divergence = (
            (pl.col("model_mse_w") - pl.col("ref_mse_w")).abs()
            + (pl.col("model_mse_l") - pl.col("ref_mse_l")).abs()
        ) / 2
        charts["Reference divergence"] = frame.select("step", divergence.alias("reference_divergence"))
    elif "clip_fraction" in columns:
        charts["Reference divergence"] = frame.select("step", "clip_fraction")
    return charts
