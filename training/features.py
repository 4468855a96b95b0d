"""What the frozen encoders make of a batch: VAE latents of the pair images and text embeddings
of the prompts, computed per batch (`Features`), once per snapshot and looked up (`CachedFeatures`),
or once per image file and prompt as a run meets them (`EncodedOnce`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import CLIPTokenizer

from datastore.atomic import writing
from training.config import DPOConfig
from training.data import PreferencePair, load_image, snapshot_hash
from training.parts import Parts
from training.sampling import encode, unet_scale


class Features:
    """Turns pairs into VAE latents and prompts into text embeddings with the frozen encoders."""

    def __init__(self, parts: Parts, resolution: int, device: torch.device):
        self.parts, self.resolution, self.device = parts, resolution, device

    @torch.no_grad()
    def images(
        self, pairs: list[PreferencePair], flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encodes winners and losers into the VAE posterior.

        Args:
            pairs: B pairs.
            flips: Whether to mirror each image, bool, shape (2, B): winners, losers.

        Returns:
            The posterior's mean and std in the UNet's latent scale (`training.sampling.unet_scale`), each
            shape (2, B, C, h, w), winners first;
            and the SDXL time ids (original h, w, crop top, left, target h, w), shape (2, B, 6).
        """
        pixels, time_ids = [], []
        for path in [p.winner for p in pairs] + [p.loser for p in pairs]:
            image, original, crop = load_image(path, self.resolution)
            pixels.append(image)
            time_ids.append([*original, *crop, self.resolution, self.resolution])
        pixels = torch.stack(pixels)
        pixels = torch.where(flips.flatten()[:, None, None, None], pixels.flip(-1), pixels)
        vae = self.parts.vae
        posterior = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        shift, scale = unet_scale(vae, posterior.mean)
        return (
            ((posterior.mean - shift) * scale).unflatten(0, (2, len(pairs))),
            (posterior.std * scale).unflatten(0, (2, len(pairs))),
            torch.tensor(time_ids, dtype=torch.float32).unflatten(0, (2, len(pairs))),
        )

    @torch.no_grad()
    def prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodes prompts as the pipelines do.

        Args:
            prompts: B prompts.

        Returns:
            Hidden states, shape (B, L, D) (SDXL: both encoders' penultimate layers concatenated),
            and SDXL's pooled embedding of the second encoder, shape (B, P), else None.
        """
        parts = self.parts
        ids = self._tokens(parts.tokenizer, prompts)
        if not parts.is_sdxl:
            return parts.text_encoder(ids)[0], None
        hidden_1 = parts.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        out_2 = parts.text_encoder_2(self._tokens(parts.tokenizer_2, prompts), output_hidden_states=True)
        return torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1), out_2.text_embeds

    def latents(self, paths: list[Path]) -> torch.Tensor:
        """Image files as the UNet sees them (`training.sampling.encode`), shape (N, C, h, w)."""
        pixels = torch.stack([load_image(path, self.resolution)[0] for path in paths])
        return encode(self.parts.vae, pixels)

    def _tokens(self, tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)


class EncodedOnce:
    """`Features.latents` and `Features.prompts` that encode each image file and prompt once and keep
    the result in memory for the rest of the run (encoding is deterministic: the posterior mean)."""

    def __init__(self, features: Features):
        self.features = features
        self._latents: dict[Path, torch.Tensor] = {}
        self._prompts: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def latents(self, paths: list[Path]) -> torch.Tensor:
        """Same as `Features.latents`; only files not met before are read and encoded."""
        missing = [path for path in dict.fromkeys(paths) if path not in self._latents]
        if missing:
            self._latents.update(zip(missing, self.features.latents(missing), strict=True))
        return torch.stack([self._latents[path] for path in paths])

    def prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same as `Features.prompts`; only prompts not met before are encoded."""
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._prompts]
        if missing:
            hidden, pooled = self.features.prompts(missing)
            for i, prompt in enumerate(missing):
                self._prompts[prompt] = (hidden[i], None if pooled is None else pooled[i])
        rows = [self._prompts[prompt] for prompt in prompts]
        pooled = None if rows[0][1] is None else torch.stack([p for _, p in rows])
        return torch.stack([h for h, _ in rows]), pooled


class CachedFeatures:
    """Latents and text embeddings computed once per snapshot and looked up by pair and prompt."""

    def __init__(self, cache: dict, pairs: list[PreferencePair]):
        self.cache = cache
        self.row = {pair.pair_id: i for i, pair in enumerate(pairs)}
        self.prompt_row = {prompt: i for i, prompt in enumerate(cache["prompts"])}

    def images(
        self, pairs: list[PreferencePair], flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Same as `Features.images`, from the cache; the std is None unless the cache holds it."""
        rows = torch.tensor([self.row[p.pair_id] for p in pairs])
        index = (rows[None, :], torch.arange(2)[:, None], flips.long())
        std = self.cache["std"]
        return (
            self.cache["latents"][index],
            None if std is None else std[index],
            self.cache["time_ids"][rows].transpose(0, 1),
        )

    def prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same as `Features.prompts`, from the cache."""
        rows = torch.tensor([self.prompt_row[p] for p in prompts])
        pooled = self.cache["pooled"]
        return self.cache["hidden"][rows], None if pooled is None else pooled[rows]


def cached_features(
    features: Features, pairs: list[PreferencePair], cfg: DPOConfig, accelerator: Accelerator
) -> CachedFeatures:
    """Loads the snapshot's feature cache, computing it on the main process the first time.

    The cache file's name is a hash of what its content depends on: the snapshot's content hash,
    the model, the resolution, whether mirrored images are needed, the text encoders' precision and
    whether the posterior's std is kept (``vae_latents``).
    """
    key = json.dumps(
        [
            snapshot_hash(cfg.dataset),
            cfg.pretrained_model,
            cfg.resolution,
            cfg.random_flip,
            cfg.mixed_precision,
            cfg.vae_latents,
        ]
    )
    cache_dir = cfg.cache_dir or cfg.output_dir / "cache"
    path = cache_dir / f"features-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if accelerator.is_main_process and not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        prompts = sorted({p.prompt for p in pairs} | {""})
        latents, stds, time_ids, hidden, pooled = [], [], [], [], []
        for start in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[start : start + cfg.batch_size]
            views = [
                features.images(chunk, torch.full((2, len(chunk)), flip))
                for flip in ([False, True] if cfg.random_flip else [False])
            ]
            latents.append(torch.stack([mean for mean, _, _ in views], dim=2).transpose(0, 1).cpu())
            stds.append(torch.stack([std for _, std, _ in views], dim=2).transpose(0, 1).cpu())
            time_ids.append(views[0][2].transpose(0, 1))
        for start in range(0, len(prompts), cfg.batch_size):
            h, p = features.prompts(prompts[start : start + cfg.batch_size])
            hidden.append(h.cpu())
            pooled.append(None if p is None else p.cpu())
        cache = {
            "latents": torch.cat(latents),  # (N, 2, flips, C, h, w)
            "std": torch.cat(stds) if cfg.vae_latents == "sample" else None,  # as latents
            "time_ids": torch.cat(time_ids),  # (N, 2, 6)
            "prompts": prompts,
            "hidden": torch.cat(hidden),
            "pooled": None if pooled[0] is None else torch.cat(pooled),
        }
        with writing(path) as tmp:
            torch.save(cache, tmp)
    accelerator.wait_for_everyone()
    # Loaded to the CPU first: torch.load cannot map to an indexed CPU device such as cpu:0.
    cache = torch.load(path, map_location="cpu")
    cache = {k: v.to(features.device) if isinstance(v, torch.Tensor) else v for k, v in cache.items()}
    return CachedFeatures(cache, pairs)
