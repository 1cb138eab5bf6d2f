"""`metadg score`: audio files and folders scored by a trained model into a CSV with the task's columns."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from metadg.engine.build import load_trained
from metadg.engine.scoring import scoring_options, utterance_logits
from metadg.engine.utterances import Utterances
from metadg.tasks.audio.loading import AudioError, load_audio

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au"}


def collect_audio(paths: list[str | Path]) -> list[Path]:
    """Audio files named directly or found (recursively, sorted) in the named folders."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            # A dangling symlink is kept so that it gets its own error row instead of vanishing.
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and (p.is_file() or p.is_symlink()))
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return found


#: files loaded and scored at once: memory stays bounded whatever the folder holds, and a kill loses at most one batch
FILES_PER_BATCH = 64


def _resume(out_csv: Path, columns: list[str]) -> dict[str, list[str]]:
    """Scored rows of an earlier run of the same command (path → row), so a rerun continues.

    The file is rewritten with just those rows: error rows are retried, and a row cut short
    by a kill (the last line without its newline) is dropped. {} when there is no earlier file.
    """
    if not out_csv.is_file():
        return {}
    text = out_csv.read_text(encoding="utf-8")
    rows = list(csv.reader(text[: text.rfind("\n") + 1].splitlines()))
    if not rows or rows[0] != columns:
        raise FileExistsError(f"{out_csv}: exists with other columns ({rows[0] if rows else 'empty'}); "
                              "choose another --out or remove it")
    done = {row[0]: row for row in rows[1:] if len(row) == len(columns) and not row[-1]}
    tmp = out_csv.with_name(out_csv.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([columns, *done.values()])
    tmp.replace(out_csv)
    return done


def score_files(checkpoint: str | Path, paths: list[str | Path], out_csv: str | Path, device: str = "cpu",
                files_per_batch: int = FILES_PER_BATCH) -> tuple[int, int]:
    """Score audio files/folders into a CSV (the task's columns), `files_per_batch` at a time; (scored, failed).

    Rows are written as their batch is scored, so memory stays bounded and a kill loses at most
    one batch; a rerun with the same `out_csv` keeps the scored rows and scores the rest. A file
    that cannot be read, that the model cannot take (too short) or whose output is not finite
    gets an error row; the others still score.
    """
    exp, model, _, meta = load_trained(checkpoint, device)
    task = exp.task.build(seed=exp.seed)
    files = list(dict.fromkeys(collect_audio(paths)))  # a file named twice is scored once
    header, _ = task.score_table(np.zeros((0, task.num_classes)), meta)
    columns = ["path", *header, "error"]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(out_csv, columns)
    todo = [p for p in files if str(p) not in done]
    with out_csv.open("a" if done or out_csv.is_file() else "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if not done and fh.tell() == 0:
            writer.writerow(columns)
        bar = tqdm(total=len(todo), desc="score", unit="file", disable=None if exp.train.progress else True)
        for start in range(0, len(todo), files_per_batch):
            batch = todo[start:start + files_per_batch]
            for path, row in zip(batch, _score_batch(model, task, meta, exp, batch, header, device)):
                writer.writerow(row)
                done[str(path)] = row
            fh.flush()
            bar.update(len(batch))
        bar.close()
    failed = sum(1 for p in files if done[str(p)][-1])
    return len(files) - failed, failed


def _score_batch(model: Any, task: Any, meta: dict[str, Any], exp: Any, files: list[Path], header: list[str],
                 device: str) -> list[list[str]]:
    """One CSV row per file, in order: the task's columns, or empty columns and the error."""
    waves: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    for path in files:
        try:
            waves[str(path)] = load_audio(path)
        except AudioError as exc:  # one bad file must not lose the others' scores
            errors[str(path)] = str(exc)
    ids = list(waves)
    utts = Utterances(ids, np.zeros(len(ids), dtype=np.int64), {}, lambda j: waves[ids[j]], name="score",
                      on_error="skip")
    try:
        logits = utterance_logits(model, utts, device=device, progress=False, **scoring_options(exp.train))
    except FloatingPointError as exc:  # NaN for every file of this batch: each file's row says so
        logits = np.full((len(ids), task.num_classes), np.nan)
        utts.errors.update({key: str(exc) for key in ids if key not in utts.errors})
    errors.update(utts.errors)  # too short for the model, or a non-finite output
    scored = [j for j, key in enumerate(ids) if key not in utts.errors]
    _, table = task.score_table(logits[scored], meta) if scored else (header, [])
    rows = {ids[j]: row for j, row in zip(scored, table)}
    return [[str(p), *rows[str(p)], ""] if str(p) in rows else [str(p), *[""] * len(header), errors[str(p)]]
            for p in files]
