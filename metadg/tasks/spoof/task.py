"""The `spoof_detection` task: bona fide vs spoof, domains = attack (or any attribute)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from metadg.config import ConfigError, StrictModel, validate_plugin
from metadg.calibration import Calibrator
from metadg.metrics import act_dcf, cllr, compute_eer, min_dcf, per_domain_eer
from metadg.registry import TASKS, unknown_name_message
from metadg.tasks.base import Task, Utterances
from metadg.tasks.spoof.corpora import CORPORA
from metadg.tasks.spoof.rawboost import RawBoost, RawBoostConfig

CLASS_NAMES = ("spoof", "bonafide")  # index = label: 1 = bona fide, 0 = spoof


def _corpus_spec(value: Any, where: str) -> dict[str, Any]:
    # ConfigError is a ValueError: pydantic wraps it and the formatter keeps its path.
    return validate_plugin(CORPORA, value, where).as_dict()


class AugmentConfig(StrictModel):
    """Training-time augmentation (never applied to dev or eval audio)."""

    rawboost: RawBoostConfig | int = Field(
        0, description="RawBoost algorithm 0-8 (0 off; 5 for LA, 3 for DF in SSL-AASIST), or its full settings"
    )


class SpoofDetectionConfig(StrictModel):
    """Train on source domains of one corpus, select on dev, evaluate on any number of sets."""

    train: dict[str, Any] = Field(description="corpus spec {name: ..., split: ..., filters: ...} of the source domains")
    dev: dict[str, Any] = Field(description="corpus spec for model selection (source domains, held-out utterances)")
    eval: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named corpus specs to evaluate on")
    domain_key: str = Field("attack", description="utterance attribute whose values are the DG domains")
    domains: list[str] | None = Field(None, description="source domains to train on; default: all in train")
    share_bonafide: bool = Field(True, description="bona fide is one pool shared by all domain batches")
    crop_samples: int = Field(64600, ge=400, description="training crop length (repeat-padded when shorter)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="training augmentation, e.g. {rawboost: 5}")
    calibrate: bool = Field(
        True, description="fit score→LLR calibration on dev (prior P_spoof 0.05) and report actDCF and Cllr on LLRs"
    )

    @field_validator("train", "dev", mode="before")
    @classmethod
    def _check_corpus(cls, value: Any, info: Any) -> dict[str, Any]:
        return _corpus_spec(value, info.field_name)

    @field_validator("eval", mode="before")
    @classmethod
    def _check_eval(cls, value: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of set name → corpus spec")
        return {str(k): _corpus_spec(v, f"eval.{k}") for k, v in value.items()}


@TASKS.register("spoof_detection")
class SpoofDetection(Task):
    """Speech deepfake detection; EER overall and per domain (official ASVspoof procedure)."""

    Config = SpoofDetectionConfig
    selection_metric = "eer"

    def __init__(self, cfg: SpoofDetectionConfig, *, seed: int = 0) -> None:
        super().__init__(cfg, seed=seed)
        self.cfg: SpoofDetectionConfig = cfg

    @property
    def domain_key(self) -> str:
        """Attribute whose values are the domains."""
        return self.cfg.domain_key

    @property
    def crop_samples(self) -> int:
        """Training crop length in samples."""
        return self.cfg.crop_samples

    @staticmethod
    def _read(spec: dict[str, Any], where: str) -> Utterances:
        plugin = validate_plugin(CORPORA, spec, where)
        try:
            return plugin.build().utterances()
        except ConfigError as exc:  # e.g. a filter on an attribute the corpus lacks
            raise ConfigError(f"{where}.{exc}") from None

    @cached_property
    def _train(self) -> Utterances:
        utts = self._read(self.cfg.train, "task.train")
        if self.domain_key not in utts.attrs:
            raise ConfigError(f"task.domain_key: {unknown_name_message('attribute', self.domain_key, sorted(utts.attrs))}")
        if self.cfg.domains is not None:
            values = utts.attr(self.domain_key)
            present = sorted({v for v, y in zip(values, utts.labels) if y == 0})
            missing = sorted(set(self.cfg.domains) - set(present))
            if missing:
                raise ConfigError(f"task.domains: {missing} not in the training data (present: {', '.join(present)})")
            wanted = set(self.cfg.domains)
            keep = [i for i, (v, y) in enumerate(zip(values, utts.labels)) if y == 1 or v in wanted]
            utts = utts.subset(keep)
        return utts

    def train_set(self) -> Utterances:
        """Training utterances (restricted to `domains` when given)."""
        return self._train

    def dev_set(self) -> Utterances:
        """Model-selection utterances."""
        return self._read(self.cfg.dev, "task.dev")

    def eval_sets(self) -> dict[str, Utterances]:
        """Named evaluation sets, read in config order."""
        return {name: self._read(spec, f"task.eval.{name}") for name, spec in self.cfg.eval.items()}

    def metrics(self, scores: np.ndarray, utts: Utterances, llr: np.ndarray | None = None) -> dict[str, float]:
        """EER (and threshold), minDCF, per-domain EER; actDCF and Cllr when calibrated `llr` are given.

        Utterances skipped under on_error: skip (NaN scores) are left out and counted as `skipped`.
        """
        ok = np.isfinite(scores)
        labels = utts.labels[ok]
        bona, spoof = scores[ok][labels == 1], scores[ok][labels == 0]
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

    def fit_calibration(self, scores: np.ndarray, utts: Utterances) -> Calibrator | None:
        """Score → LLR map fitted on `utts` (the dev set), when `calibrate` is on."""
        if not self.cfg.calibrate:
            return None
        ok = np.isfinite(scores)
        return Calibrator(p_spoof=0.05).fit(scores[ok], utts.labels[ok])

    def augmentation(self) -> RawBoost | None:
        """RawBoost on training crops, when configured."""
        rb = self.cfg.augment.rawboost
        cfg = rb if isinstance(rb, RawBoostConfig) else RawBoostConfig(algo=rb)
        return RawBoost.from_config(cfg) if cfg.algo else None

    def class_index(self, name: str) -> int:
        """'bonafide' → 1, 'spoof' → 0."""
        if name not in CLASS_NAMES:
            raise ConfigError(f"train.class_weights: unknown class {name!r} (valid: {', '.join(CLASS_NAMES)})")
        return CLASS_NAMES.index(name)
