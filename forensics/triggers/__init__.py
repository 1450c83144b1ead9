"""Trigger forensics: what the trigger is, confirmed on the model.

- :func:`text_trigger_candidates`: n-grams over-represented among suspicious texts and tied to one predicted
  class, with redundant sub- and super-n-grams pruned.
- :func:`image_trigger_candidate`: the pattern a group of images shares and its label peers lack: a fixed
  patch (box and reconstructed pattern), a moving patch (``moves=True``, with its place in each image), or
  no local pattern (``local=False``, with the mean difference to the images the group looks like);
  :func:`fine_detail_groups`: per class, the images its fine detail (image minus its blur) sets apart, a group
  for a pattern blended into them.
- :func:`confirm_text_candidates`, :func:`confirm_image_candidates`: remove the candidate from its carriers
  and add it to clean samples of other classes, beside random controls of the same size, and give a verdict.
- :func:`search_text`, :func:`search_image`, :func:`carries_difference`, :func:`trigger_scores`: find every sample
  that carries a trigger;
  :func:`trigger_evidence`: the confirmed triggers' carriers scored by the strength of the confirmation
  (:func:`confirmation_log10_p`), the ``trigger`` signal of an investigation.
- :func:`triggers_table`, :func:`trigger_patterns`, :func:`trigger_arrays` (:mod:`.findings`): the findings, one
  row per candidate, and what each image candidate adds to an image.
- :func:`find_triggers` (:mod:`.discover`): all of the above over an investigation.
- :func:`reconstruct_warps` (:mod:`.warp`): per class, the smooth warp (WaNet) that turns the most images of the other
  classes into it, optimized on the model, and how far that class stands out among the classes; :func:`find_warp`:
  the one that stands out, confirmed by its add test, with its carriers (:class:`WarpTriggerCandidate`);
  :func:`probe_carriers`: the images of a class that look, in the model's features, like held-out images a trigger
  turns (a warp's carriers, and an image-wide difference's beside their pixels).

Nothing here imports torch on import: the model is reached through a ``predict_proba`` callable (payload batch ->
probabilities), e.g. ``functools.partial(forensics.models.predict_proba, model)``; :func:`reconstruct_warps`, which
needs the model's gradients, takes the module itself and imports torch when called.
"""

from .confirm import (
    VERDICT_RULE,
    Confirmation,
    Holdout,
    confirm_image_candidates,
    confirm_image_trigger,
    confirm_text_candidates,
    confirm_text_trigger,
    holdout_set,
    verdict,
)
from .findings import (
    carrier_evidence,
    confirmation_log10_p,
    confirmed_carriers,
    display_pattern,
    is_flow,
    trigger_arrays,
    trigger_evidence,
    trigger_patterns,
    trigger_scores,
    triggers_table,
)
from .image import (
    ImageTriggerCandidate,
    carries_difference,
    fine_detail_groups,
    image_trigger_candidate,
    label_peers,
    locate_pattern,
    search_image,
)
from .text import remove_ngram, search_text, suspicious_set, text_trigger_candidates, tokenize
from .warp import WARP_ANOMALY, WARP_COLUMNS, WarpTriggerCandidate, find_warp, probe_carriers, reconstruct_warps

__all__ = [
    "VERDICT_RULE",
    "WARP_ANOMALY",
    "WARP_COLUMNS",
    "Confirmation",
    "Holdout",
    "ImageTriggerCandidate",
    "WarpTriggerCandidate",
    "carrier_evidence",
    "carries_difference",
    "fine_detail_groups",
    "find_warp",
    "confirm_image_candidates",
    "confirm_image_trigger",
    "confirm_text_candidates",
    "confirm_text_trigger",
    "confirmation_log10_p",
    "confirmed_carriers",
    "display_pattern",
    "is_flow",
    "holdout_set",
    "image_trigger_candidate",
    "label_peers",
    "locate_pattern",
    "probe_carriers",
    "reconstruct_warps",
    "remove_ngram",
    "search_image",
    "search_text",
    "suspicious_set",
    "text_trigger_candidates",
    "tokenize",
    "trigger_evidence",
    "trigger_arrays",
    "trigger_patterns",
    "trigger_scores",
    "triggers_table",
    "verdict",
]
