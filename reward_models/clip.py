"""CLIP-based scorers: CLIP score, PickScore and the LAION aesthetic predictor.

PickScore (Kirstain et al. 2023) is a CLIP ViT-H/14 fine-tuned on Pick-a-Pic; its score is the
same ``exp(logit_scale) * cos(image_emb, text_emb)`` as CLIP's, so one class serves both and
only the weights, name and version differ.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import CLIPModel, CLIPProcessor

from reward_models.base import Scorer, ScorerError


def _looks_like_hub_id(text: str) -> bool:
    """``name`` or ``namespace/name``: what the hub could resolve, as opposed to a missing local path."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) is not None and not text.startswith(".")


def load_clip(
    path_or_hub_id: str | Path,
    processor_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[CLIPModel, CLIPProcessor]:
    """Loads a CLIPModel and its processor in eval mode without gradients.

    Args:
        path_or_hub_id: Local folder or hub id of the model.
        processor_path: Folder or hub id of the processor when the model's own has none
            (PickScore_v1 uses ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``); defaults to the model's.
        device: Where the model runs.
        dtype: Weight dtype.

    Returns:
        The model and the processor.

    Raises:
        ScorerError: Naming the path when either cannot be loaded.
    """
    processor_path = path_or_hub_id if processor_path is None else processor_path
    for source in (path_or_hub_id, processor_path):
        if not Path(source).exists() and not _looks_like_hub_id(str(source)):
            raise ScorerError(f"cannot load a CLIP model from {str(source)!r}: no such folder, and not a hub id")
    try:
        model = CLIPModel.from_pretrained(path_or_hub_id, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ScorerError(f"cannot load a CLIP model from {str(path_or_hub_id)!r}: {e}") from e
    try:
        processor = CLIPProcessor.from_pretrained(processor_path)
    except (OSError, ValueError) as e:
        raise ScorerError(f"cannot load a CLIP processor from {str(processor_path)!r}: {e}") from e
    model.requires_grad_(False)
    return model.to(device).eval(), processor


def clip_inputs(
    processor: CLIPProcessor, images: Sequence[Image.Image], prompts: Sequence[str], device: torch.device
) -> dict[str, Tensor]:
    """Turns images and prompts into CLIP model inputs.

    Args:
        processor: The model's processor.
        images: N images (converted to RGB).
        prompts: N prompts, truncated to the text tower's length.

    Returns:
        ``pixel_values`` (N, 3, S, S) float32, ``input_ids`` and ``attention_mask`` (N, L), on `device`.
    """
    batch = processor(
        images=[image.convert("RGB") for image in images],
        text=list(prompts),
        return_tensors="pt",
        padding=True,
        truncation=True,
    )
    return {key: value.to(device) for key, value in batch.items()}


def clip_scores(model: CLIPModel, inputs: dict[str, Tensor]) -> Tensor:
    """Row-wise CLIP score ``exp(logit_scale) * cos(image_emb_i, text_emb_i)``.

    Args:
        model: A CLIPModel.
        inputs: Output of `clip_inputs` for N image-prompt pairs.

    Returns:
        Shape (N,).
    """
    image = model.get_image_features(pixel_values=inputs["pixel_values"].to(model.dtype)).pooler_output
    text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
    return model.logit_scale.exp() * F.cosine_similarity(image, text, dim=-1)


class ClipScorer(Scorer):
    """CLIP score or PickScore: ``exp(logit_scale) * cos(image_emb, text_emb)``.

    With OpenAI CLIP weights ``exp(logit_scale)`` is 100, so this is the usual CLIP score
    without the clamp at 0; with PickScore weights it is PickScore.
    """

    def __init__(
        self, model: CLIPModel, processor: CLIPProcessor, name: str, version: str, batch_size: int = 32
    ) -> None:
        """Wraps a loaded model; most callers use `from_pretrained`.

        Args:
            model: A CLIPModel in eval mode.
            processor: Its processor.
            name: Annotator model name, e.g. ``"clip"`` or ``"pickscore"``.
            version: Identifies the weights.
            batch_size: Images per forward pass.
        """
        self.model = model
        self.processor = processor
        self.name = name
        self.version = version
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        name: str = "clip",
        processor_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ) -> ClipScorer:
        """Loads a CLIP or PickScore model.

        Args:
            path_or_hub_id: Local folder or hub id (e.g. ``openai/clip-vit-large-patch14`` or
                ``yuvalkirstain/PickScore_v1``).
            name: ``"clip"``, ``"pickscore"`` or another label for the annotator record.
            processor_path: See `load_clip`.
            device: Where the model runs.
            dtype: Weight dtype.
            batch_size: Images per forward pass.

        Raises:
            ScorerError: Naming the path when it cannot be loaded.
        """
        model, processor = load_clip(path_or_hub_id, processor_path, device, dtype)
        return cls(model, processor, name, str(path_or_hub_id), batch_size)

    @torch.no_grad()
    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        timesteps: Sequence[int] | None = None,
    ) -> np.ndarray:
        """See `Scorer.score`; `timesteps` is ignored."""
        self._check_lengths(images, prompts, timesteps)
        scores = [
            clip_scores(
                self.model,
                clip_inputs(
                    self.processor,
                    images[i : i + self.batch_size],
                    prompts[i : i + self.batch_size],
                    self.model.device,
                ),
            )
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.cat(scores).double().cpu().numpy() if scores else np.zeros(0)


class AestheticHead(nn.Module):
    """The LAION aesthetic predictor v2 MLP on L2-normalised CLIP image embeddings.

    Layer indices match the released ``sac+logos+ava1-l14-linearMSE.pth`` (keys ``layers.0``,
    ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``), so that file loads as is.
    """

    def __init__(self, embed_dim: int = 768) -> None:
        """Args:
        embed_dim: CLIP projection size (768 for ViT-L/14).
        """
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: Tensor) -> Tensor:
        """Args:
            embeds: L2-normalised image embeddings, shape (N, embed_dim).

        Returns:
            Aesthetic scores (about 1..10 for the released head), shape (N,).
        """
        return self.layers(embeds).squeeze(-1)


class AestheticScorer(Scorer):
    """LAION-style aesthetic score: an MLP head on the CLIP image embedding; prompts are ignored."""

    def __init__(
        self,
        model: CLIPModel,
        processor: CLIPProcessor,
        head: AestheticHead,
        version: str,
        batch_size: int = 32,
    ) -> None:
        """Wraps loaded parts; most callers use `from_pretrained`.

        Args:
            model: The CLIPModel whose image embeddings the head was trained on, in eval mode.
            processor: Its processor.
            head: The MLP head, on the model's device, in eval mode.
            version: Identifies the CLIP weights and the head.
            batch_size: Images per forward pass.
        """
        self.model = model
        self.processor = processor
        self.head = head
        self.name = "aesthetic"
        self.version = version
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        clip_path_or_hub_id: str | Path,
        head_path: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> AestheticScorer:
        """Loads the CLIP model and the head weights.

        Args:
            clip_path_or_hub_id: CLIP folder or hub id (LAION's head: ``openai/clip-vit-large-patch14``).
            head_path: Head state dict, ``.safetensors`` or a torch ``.pth`` / ``.pt`` file.
            device: Where both run.
            batch_size: Images per forward pass.

        Raises:
            ScorerError: Naming the file that is missing or does not fit the model.
        """
        model, processor = load_clip(clip_path_or_hub_id, device=device)
        head_path = Path(head_path)
        if not head_path.is_file():
            raise ScorerError(f"aesthetic head weights not found: {str(head_path)!r}")
        if head_path.suffix == ".safetensors":
            state = load_file(head_path)
        else:
            state = torch.load(head_path, map_location="cpu", weights_only=True)
        head = AestheticHead(model.config.projection_dim)
        try:
            head.load_state_dict(state)
        except RuntimeError as e:
            raise ScorerError(
                f"aesthetic head {str(head_path)!r} does not fit a CLIP projection of "
                f"{model.config.projection_dim}: {e}"
            ) from e
        head.requires_grad_(False)
        version = f"{clip_path_or_hub_id}+{head_path.name}"
        return cls(model, processor, head.to(device).eval(), version, batch_size)

    @torch.no_grad()
    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        timesteps: Sequence[int] | None = None,
    ) -> np.ndarray:
        """See `Scorer.score`; `prompts` and `timesteps` are ignored."""
        self._check_lengths(images, prompts, timesteps)
        scores = []
        for i in range(0, len(images), self.batch_size):
            batch = self.processor(
                images=[image.convert("RGB") for image in images[i : i + self.batch_size]], return_tensors="pt"
            )
            pixels = batch["pixel_values"].to(self.model.device, self.model.dtype)
            embeds = self.model.get_image_features(pixel_values=pixels).pooler_output
            scores.append(self.head(F.normalize(embeds.float(), dim=-1)))
        return torch.cat(scores).double().cpu().numpy() if scores else np.zeros(0)
