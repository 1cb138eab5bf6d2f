"""Scoring whole utterances into (N, C) logits: chunked long utterances, length-sorted batches."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from metadg.engine.utterances import LoadError, Utterances

log = logging.getLogger(__name__)


def window_starts(length: int, chunk: int | None, overlap: float) -> list[int]:
    """First samples of the overlapping `chunk`-sample windows covering `length` samples (the last flush with the end)."""
    if chunk is None or length <= chunk:
        return [0]
    hop = max(1, int(round(chunk * (1.0 - overlap))))
    starts = list(range(0, length - chunk + 1, hop))
    if starts[-1] + chunk < length:
        starts.append(length - chunk)
    return starts


def segments(wave: np.ndarray, chunk: int | None, overlap: float) -> list[np.ndarray]:
    """The whole wave, or overlapping windows of `chunk` samples covering it (the last one flush with the end)."""
    if chunk is None or wave.shape[0] <= chunk:
        return [wave]
    return [wave[s : s + chunk] for s in window_starts(wave.shape[0], chunk, overlap)]


#: how the windows of a long utterance make one score: the mean of their logits (for two classes the mean
#: log-odds, so the mean LLR under an affine calibration), or the window of highest / lowest class-1 log-odds
AGGREGATES = ("mean", "max", "min")


# A batch never pads its shortest segment by more than this share of its length: padded
# samples cost as much as real ones (the conv encoder runs over them), and on CPU that
# waste outweighs what batching saves.
MAX_PADDING = 0.1


def length_batches(segs: list[tuple[int, np.ndarray]], batch_size: int) -> list[list[tuple[int, np.ndarray]]]:
    """Split length-sorted segments into batches of ≤ `batch_size` whose longest is ≤ (1 + MAX_PADDING) × shortest."""
    batches: list[list[tuple[int, np.ndarray]]] = []
    for item in segs:
        if batches and len(batches[-1]) < batch_size and item[1].shape[0] <= (1 + MAX_PADDING) * batches[-1][0][1].shape[0]:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def _batch_logits(model: nn.Module, part: list[tuple[int, np.ndarray]], device: torch.device,
                  amp: bool) -> np.ndarray:
    lengths = [seg.shape[0] for _, seg in part]
    inputs = torch.zeros(len(part), max(lengths))
    for row, (_, seg) in enumerate(part):
        inputs[row, : lengths[row]] = torch.from_numpy(seg)
    lens = None if min(lengths) == max(lengths) else torch.tensor(lengths, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        return model(inputs.to(device), lens).float().cpu().numpy()


def _unusable(utts: Utterances, index: int, message: str, reason: str) -> None:
    """Raise a LoadError naming the utterance, or (on_error: skip) count it under `reason`."""
    error = LoadError(f"{utts.name or 'utterances'}: {utts.describe(index)}: {message}", reason)
    if utts.on_error != "skip":
        raise error
    if not utts.skipped:
        log.warning("%s: skipping (on_error: skip): %s", utts.name or "utterances", error)
    utts.skipped[reason] += 1
    utts.errors[utts.ids[index]] = str(error)


@torch.no_grad()
def utterance_logits(
    model: nn.Module,
    utts: Utterances,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "scoring",
    chunk_samples: int | None = None,
    chunk_overlap: float = 0.5,
    amp: bool = False,
    aggregate: str = "mean",
    windows: dict[int, list[tuple[int, np.ndarray]]] | None = None,
) -> np.ndarray:
    """(N, C) float64 logits per utterance, in `utts` order: of whole utterances, or aggregated over overlapping chunks.

    `aggregate` (AGGREGATES) combines an utterance's chunks; `windows`, when given, receives each
    utterance's (first sample, logits) per chunk, in time order.

    An utterance is unusable when its file cannot be loaded, when the model cannot take it (e.g.
    shorter than the backbone's receptive field: the batch is retried one utterance at a time to
    find it) or when the model's output for it is not finite. Under `utts.on_error == "skip"` it
    gets a row of NaN and is counted in `utts.skipped`; otherwise a LoadError names it.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    keep = {} if aggregate != "mean" or windows is not None else None  # per-chunk logits, only when asked for
    was_training = model.training
    model.eval()
    device = torch.device(device)
    totals: np.ndarray | None = None
    counts = np.zeros(len(utts), dtype=np.int64)
    failed: set[int] = set()
    # Reading a window of utterances and sorting its segments by length keeps
    # padding small without loading the whole set first.
    window = batch_size * 8
    bar = tqdm(total=len(utts), desc=desc, disable=None if progress else True, leave=False, unit="utt")
    for start in range(0, len(utts), window):
        waves = {i: utts.try_load(i) for i in range(start, min(start + window, len(utts)))}
        segs: list[tuple[int, np.ndarray]] = []
        start_of: dict[int, int] = {}  # id of a segment (alive in segs) → its first sample
        for i, wave in waves.items():
            if wave is None:
                continue
            for start, seg in zip(window_starts(wave.shape[0], chunk_samples, chunk_overlap),
                                  segments(wave, chunk_samples, chunk_overlap)):
                segs.append((i, seg))
                start_of[id(seg)] = start
        segs.sort(key=lambda item: item[1].shape[0])
        for part in length_batches(segs, batch_size):
            try:
                results = [(part, _batch_logits(model, part, device, amp))]
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:  # one utterance the model cannot take must not lose the batch: find it
                results = []
                for item in part:
                    if item[0] in failed:
                        continue
                    try:
                        results.append(([item], _batch_logits(model, [item], device, amp)))
                    except torch.OutOfMemoryError:
                        raise
                    except RuntimeError as exc:
                        failed.add(item[0])
                        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        _unusable(utts, item[0], f"the model cannot take this audio ({item[1].shape[0]} samples): "
                                  f"{first}", "model cannot take the audio")
            for done, logits in results:
                if keep is not None:
                    for row, (i, seg) in enumerate(done):
                        keep.setdefault(i, []).append((start_of[id(seg)], logits[row]))
                owners = np.array([i for i, _ in done])
                if totals is None:
                    totals = np.zeros((len(utts), logits.shape[1]), dtype=np.float64)
                np.add.at(totals, owners, logits)
                np.add.at(counts, owners, 1)
        bar.update(min(start + window, len(utts)) - start)
    bar.close()
    model.train(was_training)
    if totals is None:  # nothing scored (every file skipped, or no files): the width is the model's
        totals = np.zeros((len(utts), int(getattr(model, "num_classes", 2))), dtype=np.float64)
    counts[list(failed)] = 0  # a chunk of a long utterance may have scored before another failed
    with np.errstate(invalid="ignore"):
        out = totals / counts[:, None]  # NaN rows mark unusable utterances under on_error: skip
    if keep is not None:
        _by_window(out, keep, counts, aggregate, windows)
    bad = np.flatnonzero((counts > 0) & ~np.isfinite(out).all(axis=1))
    if len(bad) > 1 and len(bad) == int((counts > 0).sum()):  # every file at once: the model, not the audio
        raise FloatingPointError(f"{utts.name or 'utterances'}: the model's output is NaN/Inf for every one of the "
                                 f"{len(bad)} utterances scored; its weights have diverged or are damaged")
    for i in bad:
        # A finite but extreme input (±1e30 samples) can drive the model to NaN/Inf: that file's failure.
        _unusable(utts, int(i), "the model's output is not finite (NaN/Inf logits; extreme sample values?)",
                  "non-finite model output")
        out[i] = np.nan
    return out


def _by_window(out: np.ndarray, keep: dict[int, list[tuple[int, np.ndarray]]], counts: np.ndarray, aggregate: str,
               windows: dict[int, list[tuple[int, np.ndarray]]] | None) -> None:
    """Hand out each usable utterance's windows in time order; under max/min, its row becomes that window's logits."""
    if aggregate != "mean" and out.shape[1] != 2:
        raise ValueError(f"aggregate: {aggregate} picks the window of highest/lowest class-1 log-odds, which needs "
                         f"two classes (this model has {out.shape[1]}); use mean")
    for i, chunks in keep.items():
        if counts[i] == 0:  # unusable: stays NaN
            continue
        chunks.sort(key=lambda item: item[0])
        if windows is not None:
            windows[i] = [(start, row.astype(np.float64)) for start, row in chunks]
        if aggregate != "mean":
            odds = [class_log_odds(row[None])[0] for _, row in chunks]
            pick = int(np.argmax(odds) if aggregate == "max" else np.argmin(odds))
            out[i] = chunks[pick][1].astype(np.float64)


def class_log_odds(logits: np.ndarray) -> np.ndarray:
    """Class-1 minus class-0 logit of two-class (N, 2) logits, in float32 arithmetic; a 1-D array is already that."""
    logits = np.asarray(logits)
    if logits.ndim == 1:
        return logits.astype(np.float64)
    # float32 as the model computed it: the same bits as subtracting on the model's output.
    return (logits[:, 1].astype(np.float32) - logits[:, 0].astype(np.float32)).astype(np.float64)


def score_utterances(model: nn.Module, utts: Utterances, **options: object) -> np.ndarray:
    """Class-1 log-odds per utterance of a two-class model (kept for callers from before (N, C) logits)."""
    return class_log_odds(utterance_logits(model, utts, **options))  # type: ignore[arg-type]


def scoring_options(train_cfg: object) -> dict[str, object]:
    """utterance_logits keyword arguments from an experiment's train section."""
    return {
        "batch_size": train_cfg.eval_batch_size,
        "chunk_samples": train_cfg.eval_chunk_samples,
        "chunk_overlap": train_cfg.eval_chunk_overlap,
        "amp": train_cfg.amp,
    }
