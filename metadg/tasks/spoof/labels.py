"""The spoof task's label map: the label strings seen in the wild → 1 (bona fide) or 0 (spoof)."""

from __future__ import annotations

from metadg.tasks.audio.file_corpus import CorpusError

BONAFIDE_LABELS = {"bonafide", "real", "genuine", "bona"}
SPOOF_LABELS = {"spoof", "fake", "deepfake", "spoofed"}
CLASS_NAMES = ("spoof", "bonafide")  # index = label: 1 = bona fide, 0 = spoof


def normalize_label(text: str | int) -> int:
    """'bona-fide', 'Bona fide', 'real', 'genuine' → 1; 'spoof', 'fake', 'deepfake' → 0; 0 and 1 pass."""
    if isinstance(text, int) and text in (0, 1):
        return text
    key = str(text).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key in BONAFIDE_LABELS:
        return 1
    if key in SPOOF_LABELS:
        return 0
    raise CorpusError(f"unknown label {text!r} (bona fide: bonafide/bona-fide/real/genuine; spoof: spoof/fake/deepfake)")
