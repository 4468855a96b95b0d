"""Label Studio for larger teams: a local server, a small client, and the push / pull sync with the store.

- :mod:`labeling.labelstudio.server`: starting and stopping a local server, its admin credentials.
- :mod:`labeling.labelstudio.client`: the few Label Studio calls we use, and :class:`LabelStudioError`.
- :mod:`labeling.labelstudio.mapping`: pure functions between store rows and Label Studio JSON,
  and the labeling interface.
- :mod:`labeling.labelstudio.sync`: :func:`push` pairs as tasks, :func:`pull` annotations as judgments.
"""
