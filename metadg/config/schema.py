"""Config sections: ConfigError, the strict pydantic base and the train, selection and tracking sections."""

from __future__ import annotations

import math
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator

from metadg.registry import SCHEDULES, SELECTIONS, Registry, unknown_name_message


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the dotted key."""


def _wants_number(annotation: Any) -> bool:
    """Is `annotation` int or float (optionally with None), so that a boolean is a mistake there?"""
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    # Annotated[int, Field(ge=0)] is an int; Literal["auto"] beside a number is a keyword, not a boolean's place.
    plain = {get_args(a)[0] if get_origin(a) is Annotated else a for a in args}
    keywords = {a for a in plain if get_origin(a) is Literal and not any(isinstance(v, bool) for v in get_args(a))}
    return bool(plain & {int, float}) and plain - keywords <= {int, float, type(None)}


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignment is validated, numbers are not booleans."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: Any) -> Any:
        # pydantic takes `steps: true` as 1; a boolean where a count or rate belongs is a typo.
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if isinstance(value, bool) and field is not None and _wants_number(field.annotation):
            raise ValueError(f"expected a number, got the boolean {value}")
        return value


def registered(registry: Registry[Any], value: Any) -> Any:
    """A pydantic check that `value` names a plugin of `registry` (did-you-mean error otherwise)."""
    if not isinstance(value, str) or value not in registry:
        raise ValueError(unknown_name_message(registry.kind, value, registry.names()))
    return value


class SelectionConfig(StrictModel):
    """How the checkpoint that gets evaluated is chosen (Gulrajani & Lopez-Paz's three protocols)."""

    method: str = Field(
        "training_domain", description="a selection method by name (`metadg list` describes each one)"
    )
    domain: str | None = Field(None, description="leave_one_domain_out: the held-out domain (default: the last, sorted)")
    eval_set: str | None = Field(None, description="oracle: the evaluation set that validates (default: the first)")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        return registered(SELECTIONS, value)


class TrainConfig(StrictModel):
    """Optimisation and evaluation schedule, owned by the Trainer."""

    steps: int = Field(1000, ge=1, description="number of optimizer steps")
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")
    schedule: str = Field("constant", description="learning-rate schedule after warm-up, by name (`metadg list`)")
    batch_per_domain: int = Field(8, ge=2, le=4096, description="utterances per source domain per step (≤ 4096: "
                                  "a typo must not allocate a batch no device holds)")
    class_weights: dict[str, float] | None = Field(
        None, description="cross-entropy weight per class name, e.g. {bonafide: 0.9, spoof: 0.1}"
    )
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False,
                                    description="max global grad norm; null disables clipping")
    max_bad_steps: int = Field(
        10, ge=1, description="steps with NaN/Inf loss, gradients or updated weights are undone and skipped; stop "
        "after this many in a row"
    )
    eval_every: int = Field(100, ge=1, description="evaluate on the dev split every N steps")
    patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without dev improvement; null never stops early"
    )
    checkpoint_every: int | None = Field(
        250, ge=1, description="save the full training state (resumable) every N steps; null = only at a signal stop"
    )
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        0, description="data-loader worker processes for training audio; 0 = load in-process; 'auto' = time "
        "in-process loading against the model step for a few steps, then start as many as keep up (never changes results)"
    )
    grad_accum: int = Field(1, ge=1, description="domain-batch draws whose gradients add up to one optimizer step")
    amp: bool = Field(False, description="bfloat16 autocast for training and scoring (mixed precision)")
    eval_batch_size: int = Field(32, ge=1, le=4096, description="utterances (or chunks) per batch when scoring (≤ 4096)")
    eval_chunk_samples: int | None = Field(
        None, ge=400, description="score long utterances as overlapping chunks of this many samples, averaged; null = whole"
    )
    eval_chunk_overlap: float = Field(0.5, ge=0, lt=1, description="overlap between evaluation chunks")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    progress: bool = Field(True, description="show progress bars")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="model-selection method")

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, weight in (value or {}).items():
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"class {name!r}: weight {weight!r} must be a finite number > 0 "
                                 "(0 would drop the class from the loss; leave it out of class_weights for 1.0)")
        return value

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        return registered(SCHEDULES, value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value == "auto":
            return value
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(f"{value!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:1', 'mps', ...") from None
        return value


#: MLflow tracking-store schemes (sqlalchemy databases may name a driver: postgresql+psycopg2://)
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


class TrackingConfig(StrictModel):
    """Where MLflow records the run."""

    enabled: bool = Field(True, description="log to MLflow")
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (file, sqlite:///..., http://...)")

    @field_validator("uri")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = value.partition("://")[0].split("+")[0].lower() if "://" in value else ""
        if scheme and scheme not in TRACKING_SCHEMES:
            raise ValueError(f"unknown tracking URI scheme {scheme!r} in {value!r} (known: {', '.join(TRACKING_SCHEMES)}; "
                             "or a local folder path)")
        return value

    experiment: str = Field("metadg", description="MLflow experiment name")
    log_model: bool = Field(True, description="log each finished run's detector as an MLflow pyfunc model (with its "
                            "model card) for `metadg register` and `mlflow models serve`")
    artifact_location: str | None = Field(
        None, description="artifact root for a new experiment; default ./mlartifacts beside a sqlite store"
    )
    http_timeout_s: int = Field(
        10, ge=1, description="seconds an MLflow HTTP request may wait for the server (MLflow's default: 120)"
    )
    http_retries: int = Field(
        1, ge=0, le=10,
        description="retries of a failed MLflow HTTP request (MLflow's default: 7 with back-off, minutes on a dead "
        "server); after that the run goes on offline, journaled for `metadg upload`",
    )
