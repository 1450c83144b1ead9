"""Red-team poison generators with ground truth.

Each attack takes a :class:`~forensics.data.Dataset` and returns a :class:`Poisoning`
``(dataset, truth, trigger)``:

- ``dataset``: the poisoned dataset, same class names. Modified samples keep their ids; new samples (sybils) get
  new ids such as ``"sybil-03-0007"`` and are appended at the end.
- ``truth``: a DataFrame indexed by ``sample_id`` with one row per sample of the poisoned dataset, in its order:
  ``poison_kind`` ("clean" or the attack's kind), ``is_poison``, ``original_label`` (before the attack),
  ``label`` (now) and ``source`` (now, or None), plus columns some attacks add (``patch_row``, ``patch_col``,
  ``trigger_start``, ``base_id``).
- ``trigger``: None for label attacks, else a :class:`PatchTrigger`, :class:`BlendTrigger`,
  :class:`AdditiveTrigger` (sinusoid, faint overlay), :class:`WarpTrigger` or :class:`TextTrigger` whose
  ``apply`` builds triggered inputs, e.g. to measure attack success on a test split.

Everything is deterministic given ``random_state`` (an int). Victims are chosen by a stream derived from it, and
trigger placement (random patch positions, phrase insertion points) uses ``random_state`` itself, so for the
backdoor attacks ``trigger.apply(<the victims' original payloads in dataset order>, random_state=random_state)``
reproduces the poisoned payloads exactly.

Attacks compose: each takes ``exclude`` (sample ids it must not touch, e.g. :func:`poisoned_ids` of an earlier
truth table) and :func:`merge_truth` combines the truth tables of a chain into one.

Examples
--------
>>> p1 = patch_backdoor(ds, target=0, rate=0.05, random_state=1)
>>> p2 = random_label_flips(p1.dataset, rate=0.02, exclude=poisoned_ids(p1.truth), random_state=2)
>>> truth = merge_truth(p1.truth, p2.truth)
"""

from ._common import TRUTH_COLUMNS, Poisoning, merge_truth, poisoned_ids
from .image import (
    blend_backdoor,
    clean_label_patch,
    overlay_backdoor,
    patch_backdoor,
    sinusoid_backdoor,
    text_mask,
    warp_backdoor,
    warp_field,
)
from .label import bot_source, pair_flips, random_label_flips
from .sources import sybil_sources
from .text import text_trigger
from .triggers import (
    AdditiveTrigger,
    BlendTrigger,
    PatchTrigger,
    TextTrigger,
    Trigger,
    WarpTrigger,
    apply_trigger,
    trigger_from_dict,
    triggered_test_set,
)

__all__ = [
    "AdditiveTrigger",
    "BlendTrigger",
    "PatchTrigger",
    "Poisoning",
    "TRUTH_COLUMNS",
    "TextTrigger",
    "Trigger",
    "WarpTrigger",
    "apply_trigger",
    "blend_backdoor",
    "bot_source",
    "clean_label_patch",
    "merge_truth",
    "overlay_backdoor",
    "pair_flips",
    "patch_backdoor",
    "poisoned_ids",
    "random_label_flips",
    "sinusoid_backdoor",
    "sybil_sources",
    "text_mask",
    "text_trigger",
    "trigger_from_dict",
    "triggered_test_set",
    "warp_backdoor",
    "warp_field",
]
