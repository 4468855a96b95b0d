"""Closed preference rounds: generate, judge, curate, train, evaluate, register, repeat.

A round starts from a parent checkpoint registered in the store and goes through these stages
(`workbench.rounds.driver` runs them), each recorded in the round's ``results`` (JSON) as soon
as it is done, so that re-running a round continues where it stopped:

1. ``generation`` (`collect`): the parent draws candidates for a seeded choice of prompts (final
   pairs and/or SPO step pools); the new pairs get the round's id.
2. ``judgments`` (`collect`): AI feedback from a scorer, human judgments, or both. A round that
   needs human judgments raises `RoundWaiting` with the number missing; judge, then resume.
3. ``dataset`` (`collect`): the round's judged pairs become an immutable dataset version.
4. ``training`` (`train`): Diffusion-DPO, SPO, or the step-aware preference model followed by SPO
   with it as the scorer, in this process, in ``runs/round-<id>-<recipe>/`` (a killed run resumes).
5. ``checkpoint`` (`train`): a LoRA result is fused into the parent and saved as a full pipeline
   folder, ``models/round-<id>/``.
6. ``evaluation`` (`evaluate`): the checkpoint against its parent and against the base model on
   held-out prompts with fixed seeds: win rate by a scorer (`workbench.evaluation`).
7. ``register`` (`train`): the checkpoint becomes a model row with parent, round and dataset
   version, so `datastore.records.model_lineage` walks back to the base.

`config` holds what a round does (`RoundConfig`), `reading` what rounds recorded. The round's
config, seeds, prompts, dataset version id and hash, run folder, recipe config and metrics are all
in the ``rounds`` row, which is what it takes to reproduce the round.
"""
