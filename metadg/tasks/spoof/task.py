"""The `spoof_detection` task: bona fide vs spoof, domains = attack (or any attribute)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field

from metadg.config import ConfigError, StrictModel
from metadg.engine.sampling import Partition
from metadg.engine.scoring import class_log_odds
from metadg.registry import TASKS
from metadg.tasks.audio.corpus import LabelMap
from metadg.tasks.audio.corpus_task import CorpusTask, CorpusTaskConfig
from metadg.tasks.base import Headline, Utterances
from metadg.tasks.spoof.calibration import Calibrator
from metadg.tasks.spoof.labels import CLASS_NAMES, normalize_label
from metadg.tasks.spoof.metrics import act_dcf, cllr, compute_eer, min_dcf, per_domain_eer
from metadg.tasks.spoof.rawboost import RawBoost, RawBoostConfig
from metadg.tasks.spoof.sampling import SharedBonafide, partition_by_attack
from metadg.tasks.spoof.score_files import det_png, write_scores

if TYPE_CHECKING:
    from metadg.tasks.spoof.rawboost_batched import BatchedRawBoost

log = logging.getLogger(__name__)


class AugmentConfig(StrictModel):
    """Training-time augmentation (never applied to dev or eval audio)."""

    rawboost: RawBoostConfig | int = Field(
        0, description="RawBoost algorithm 0-8 (0 off; 5 for LA, 3 for DF in SSL-AASIST), or its full settings"
    )
    device: Literal["auto", "cpu", "training_device"] = Field(
        "auto", description="where RawBoost runs: 'cpu' per clip in the loader (NumPy, in its workers), "
        "'training_device' batched in torch on the training device, 'auto' = the training device when it is a GPU, "
        "else 'cpu'. Both draw from the same distributions, seeded per sample (not the same numbers)"
    )


class SpoofDetectionConfig(CorpusTaskConfig):
    """Train on source domains (attacks) of one corpus, select on dev, evaluate on any number of sets."""

    domain_key: str = Field("attack", description="utterance attribute whose values are the DG domains")
    crop_samples: int = Field(64600, ge=400, le=16000 * 600, description="training crop length (repeat-padded when "
                              "shorter); at most 10 min of 16 kHz audio, so a typo cannot allocate gigabytes per clip")
    share_bonafide: bool = Field(True, description="bona fide is one pool shared by all domain batches")
    bonafide_fraction: float = Field(0.5, gt=0, lt=1, description="share of each domain batch that is bona fide")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="training augmentation, e.g. {rawboost: 5}")
    calibrate: bool = Field(
        True, description="fit score→LLR calibration on dev (prior P_spoof 0.05) and report actDCF and Cllr on LLRs"
    )


@TASKS.register("spoof_detection")
class SpoofDetection(CorpusTask):
    """Speech deepfake detection; EER overall and per domain (official ASVspoof procedure)."""

    Config = SpoofDetectionConfig
    headline = (Headline("eer", "EER", "eer_%", scale=100.0, unit=" %"),)
    class_names = CLASS_NAMES
    selection_metric = "eer"

    def __init__(self, cfg: SpoofDetectionConfig, *, seed: int = 0) -> None:
        super().__init__(cfg, seed=seed)
        self.cfg: SpoofDetectionConfig = cfg

    def label_map(self) -> LabelMap:
        """bonafide/bona-fide/real/genuine → 1, spoof/fake/deepfake → 0."""
        return normalize_label

    def domain_rows(self, utts: Utterances) -> np.ndarray:
        """Spoofs carry the domains; bona fide is kept whatever `task.domains` says."""
        return utts.labels == 0

    def partition(self, utts: Utterances) -> Partition:
        """Spoofs by their `domain_key` value (the attack); bona fide shared by all domains unless `share_bonafide` is off."""
        return partition_by_attack(utts, self.domain_key, self.cfg.share_bonafide)

    def sampling_policy(self) -> SharedBonafide:
        """Each domain's spoofs plus `bonafide_fraction` of bona fide per batch."""
        return SharedBonafide(self.cfg.bonafide_fraction)

    def metrics(self, logits: np.ndarray, utts: Utterances, calibration: dict[str, Any] | None = None) -> dict[str, float]:
        """EER (and threshold), minDCF, per-domain EER; actDCF and Cllr on LLRs when a calibration is given.

        Utterances skipped under on_error: skip (NaN scores) are left out and counted as `skipped`.
        """
        scores = class_log_odds(logits)
        llr = Calibrator.from_dict(calibration).transform(scores) if calibration else None
        ok = np.isfinite(scores)
        labels = utts.labels[ok]
        bona, spoof = scores[ok][labels == 1], scores[ok][labels == 0]
        if len(bona) == 0 or len(spoof) == 0:  # e.g. a spoof-only corpus: the scores are written, no EER exists
            missing = "bona fide" if len(bona) == 0 else "spoof"
            log.warning("%s: no %s utterances scored: EER, minDCF, actDCF and Cllr are n/a (NaN); the scores are "
                        "still written", utts.name or "set", missing)
            nan = float("nan")
            out = {"eer": nan, "eer_threshold": nan, "min_dcf": nan, "skipped": float((~ok).sum())}
            return out | ({"act_dcf": nan, "cllr": nan} if llr is not None else {})
        value, threshold = compute_eer(bona, spoof)
        out = {"eer": value, "eer_threshold": threshold, "min_dcf": min_dcf(bona, spoof)[0], "skipped": float((~ok).sum())}
        if llr is not None:
            out["act_dcf"] = act_dcf(llr[ok][labels == 1], llr[ok][labels == 0])
            out["cllr"] = cllr(llr[ok][labels == 1], llr[ok][labels == 0])
        if self.domain_key in utts.attrs:
            domains = [d for d, keep in zip(utts.attrs[self.domain_key], ok) if keep]
            for domain, value in per_domain_eer(scores[ok], labels, domains).items():
                out[f"eer/{domain}"] = value
        return out

    def fit_calibration(self, logits: np.ndarray, utts: Utterances) -> dict[str, Any] | None:
        """Score → LLR map fitted on `utts` (the dev set), when `calibrate` is on."""
        if not self.cfg.calibrate:
            return None
        scores = class_log_odds(logits)
        ok = np.isfinite(scores)
        return Calibrator(p_spoof=0.05).fit(scores[ok], utts.labels[ok]).to_dict()

    def write_set(self, directory: Path, name: str, utts: Utterances, logits: np.ndarray,
                  calibration: dict[str, Any] | None = None) -> list[Path]:
        """`utt score` (ASVspoof 2019/2021 layout), the analysis CSV, and the ASVspoof 5 TSV for that corpus."""
        scores = class_log_odds(logits)
        llr = Calibrator.from_dict(calibration).transform(scores) if calibration else None
        return write_scores(directory, name, utts, scores, llr)

    def write_summary(self, directory: Path, scored: dict[str, tuple[Utterances, np.ndarray]]) -> list[Path]:
        """det.png: one DET curve per set with both classes."""
        det = det_png(directory / "det.png", {n: (u, class_log_odds(x)) for n, (u, x) in scored.items()}) if scored else None
        return [det] if det is not None else []

    def decision_rule(self, meta: dict[str, Any], requested: dict[str, float] | None = None) -> tuple[str, float, str]:
        """(what is thresholded: 'score' or 'llr', the threshold, the rule in words) for `requested` or the default.

        Default: the raw score at the dev EER threshold. {threshold: t}: the raw score at t. {prior: P_spoof,
        c_miss, c_fa}: the Bayes decision on calibrated LLRs, bona fide when LLR > ln(P_spoof·C_fa / ((1 − P_spoof)·C_miss)),
        C_miss the cost of rejecting bona fide speech, C_fa of accepting a spoof.
        """
        requested = requested or {}
        if "threshold" in requested:
            t = float(requested["threshold"])
            return "score", t, f"score > {t:g} (given threshold)"
        if "prior" in requested:
            if not meta.get("calibration"):
                raise ConfigError("--prior: this run has no score calibration (task.calibrate was off), so its scores "
                                  "are not LLRs; give --threshold instead")
            p, c_miss, c_fa = float(requested["prior"]), float(requested.get("c_miss", 1.0)), float(requested.get("c_fa", 1.0))
            if not 0 < p < 1 or c_miss <= 0 or c_fa <= 0:
                raise ConfigError(f"--prior {p} must lie strictly between 0 and 1, and the costs must be > 0")
            t = math.log(p * c_fa / ((1 - p) * c_miss))
            return "llr", t, (f"calibrated LLR > {t:.4f}: the Bayes threshold at P_spoof {p:g}, C_miss {c_miss:g}, "
                              f"C_fa {c_fa:g}")
        t = float(meta.get("dev", {}).get("eer_threshold", 0.0))
        return "score", t, f"score > {t:.6f} (the dev set's EER threshold)"

    def operating_point(self, meta: dict[str, Any], requested: dict[str, float] | None = None) -> str:
        """The decision rule in words (see `decision_rule`)."""
        return self.decision_rule(meta, requested)[2]

    def score_table(self, logits: np.ndarray, meta: dict[str, Any],
                    operating_point: dict[str, float] | None = None) -> tuple[list[str], list[list[str]]]:
        """score (bona fide log-odds), calibrated LLR if the checkpoint has a calibration, decision at the operating point."""
        scores = class_log_odds(np.asarray(logits))
        on, threshold, _ = self.decision_rule(meta, operating_point)
        llrs = Calibrator.from_dict(meta["calibration"]).transform(scores) if meta.get("calibration") else None
        decided = scores if on == "score" else llrs
        rows = [[f"{s:.6f}", "" if llrs is None else f"{llrs[i]:.6f}", "bonafide" if decided[i] > threshold else "spoof"]
                for i, s in enumerate(scores)]
        return ["score", "llr", "decision"], rows

    def _rawboost(self) -> RawBoostConfig:
        rb = self.cfg.augment.rawboost
        return rb if isinstance(rb, RawBoostConfig) else RawBoostConfig(algo=rb)

    def augmentation(self) -> RawBoost | None:
        """RawBoost per training crop, in the loader, when configured (and not batched on the device)."""
        cfg = self._rawboost()
        return RawBoost.from_config(cfg) if cfg.algo else None

    def batch_augmentation(self, device: torch.device) -> BatchedRawBoost | None:
        """RawBoost on each step's crops on `device`, when `augment.device` puts it there."""
        where = self.cfg.augment.device
        cfg = self._rawboost()
        if not cfg.algo or where == "cpu" or (where == "auto" and device.type == "cpu"):
            return None
        from metadg.tasks.spoof.rawboost_batched import BatchedRawBoost

        return BatchedRawBoost(cfg)
