"""Loading Stable-Diffusion-family pipelines from a local folder, a hub id or the store's models.

One code path serves SD1.5, SDXL and the shipped toy model: ``from_pretrained`` on whatever
``model`` names. Only the pipeline classes the sampler knows are accepted, checked from
``model_index.json`` before any weight is read. A registered LoRA model is loaded as its
ancestor with the LoRA fused in (`load_model`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from datastore.atomic import replace_folder
from datastore.errors import NotFoundError
from datastore.records import model_lineage
from datastore.sql import first_row
from datastore.store import Store
from training.parts import ModelLoadError

SDPipeline = StableDiffusionPipeline | StableDiffusionXLPipeline
"""The pipeline families generation supports."""

SUPPORTED_PIPELINES: dict[str, type[StableDiffusionPipeline] | type[StableDiffusionXLPipeline]] = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA (the precision SD1.5 and SDXL weights are published in), float32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


def load_pipeline(
    model: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> SDPipeline:
    """Loads a Stable Diffusion 1.x/2.x or SDXL pipeline for generation.

    The safety checker is not loaded: generated candidates are data for judging and training,
    as in the Diffusion-DPO and SPO code. With float16 weights a VAE that asks for it
    (``force_upcast``, SDXL's) is kept in float32, where its decoder does not overflow.

    Args:
        model: A folder written by ``save_pretrained`` or a Hugging Face Hub id.
        device: Where to put the pipeline; default CUDA when present, else the CPU.
        dtype: Weight precision; default float16 on CUDA, float32 on the CPU.

    Returns:
        The pipeline on ``device``, progress bars off (callers show their own).

    Raises:
        ModelLoadError: ``model`` names a missing folder, a folder that is not a pipeline, a hub id
            that cannot be reached, or a pipeline class other than SD / SDXL.
    """
    name = str(model)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    local = Path(name).expanduser()
    is_local = local.exists()
    if not is_local and not _HUB_ID.fullmatch(name):
        raise ModelLoadError(f"model folder {name} does not exist")
    if is_local and not (local / "model_index.json").is_file():
        raise ModelLoadError(f"{name} is not a diffusers pipeline folder: it has no model_index.json")
    source = str(local) if is_local else name
    try:
        index = DiffusionPipeline.load_config(source)
    except OSError as e:
        if is_local:
            raise ModelLoadError(f"cannot read {local / 'model_index.json'}: {e}") from e
        raise ModelLoadError(
            f"{name!r} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"(offline or unreachable): the weights must be in a local folder or reachable ({e})"
        ) from e
    class_name = index["_class_name"]
    if class_name not in SUPPORTED_PIPELINES:
        raise ModelLoadError(
            f"{name} is a {class_name}; generation supports {', '.join(SUPPORTED_PIPELINES)} (and their "
            "checkpoints) only"
        )
    pipeline_class = SUPPORTED_PIPELINES[class_name]
    extra = (
        {"safety_checker": None, "requires_safety_checker": False}
        if pipeline_class is StableDiffusionPipeline
        else {}
    )
    try:
        pipe = pipeline_class.from_pretrained(source, dtype=dtype, **extra)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the {class_name} at {name}: {e}") from e
    pipe.to(device)
    if dtype == torch.float16 and pipe.vae.config.force_upcast:
        pipe.vae.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fuse_lora(pipe: SDPipeline, lora: str | Path) -> SDPipeline:
    """Applies the LoRA weights in ``lora`` to the pipeline and fuses them into its weights.

    The adapter is unloaded afterwards, so the pipeline is a plain one that ``save_pretrained``
    writes as a full checkpoint and that takes a fresh LoRA.
    """
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return pipe


def load_model(store: Store, model_id: int, device: str | torch.device | None = None) -> SDPipeline:
    """A model registered in the store as a float32 pipeline; a ``lora`` model is its nearest
    non-LoRA ancestor with every LoRA on the way fused in, oldest first.

    Raises:
        ModelLoadError: a LoRA model with no full or base ancestor to apply it to.
    """
    with store.read() as con:
        chain = model_lineage(con, model_id)
    loras = []
    for model in chain:
        if model["kind"] != "lora":
            break
        loras.append(model)
    else:
        raise ModelLoadError(f"model {model_id} is a LoRA with no full or base ancestor to apply it to")
    pipe = load_pipeline(chain[len(loras)]["path"], device=device, dtype=torch.float32)
    for lora in reversed(loras):
        fuse_lora(pipe, lora["path"])
    return pipe


def checkpoint_folder(store: Store, model_id: int) -> str:
    """A ``from_pretrained`` folder (or hub id) of a registered model; a LoRA model is fused into
    its ancestors once and kept as ``models/fused-<id>/``.

    Raises:
        NotFoundError: no such model.
    """
    with store.read() as con:
        row = first_row(con, "SELECT path, kind FROM models WHERE id = ?", [model_id])
    if row is None:
        raise NotFoundError(f"model {model_id} does not exist")
    path, kind = row
    if kind != "lora":
        return path
    folder = store.models_dir / f"fused-{model_id}"
    if not folder.exists():
        pipe = load_model(store, model_id, device="cpu")
        replace_folder(pipe.save_pretrained, folder)
    return str(folder)
