"""`metadg score`: audio files and folders scored by a trained model into a CSV with the task's columns."""

from __future__ import annotations

import csv
from pathlib import Path
import numpy as np
from tqdm.auto import tqdm

from metadg.deploy.detector import Detector, Windows
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
                files_per_batch: int = FILES_PER_BATCH, *, windows: Windows = Windows(),
                operating_point: dict[str, float] | None = None, per_window_csv: str | Path | None = None,
                detector: Detector | None = None) -> tuple[int, int]:
    """Score audio files/folders into a CSV (the task's columns), `files_per_batch` at a time; (scored, failed).

    The model scores with LoRA merged into its weights. Long files are cut into `windows` and
    aggregated per file; `per_window_csv` also gets one row per window. Rows are written as their
    batch is scored, so memory stays bounded and a kill loses at most one batch; a rerun with the
    same `out_csv` keeps the scored rows and scores the rest. A file that cannot be read, that the
    model cannot take (too short) or whose output is not finite gets an error row; the others still score.
    """
    det = detector or Detector(checkpoint, device)
    files = list(dict.fromkeys(collect_audio(paths)))  # a file named twice is scored once
    header, _ = det.table(np.zeros((0, det.task.num_classes)), operating_point)
    columns = ["path", *header, "error"]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(out_csv, columns)
    todo = [p for p in files if str(p) not in done]
    per_window = _WindowRows(per_window_csv, ["path", "start_s", "end_s", *header]) if per_window_csv else None
    with out_csv.open("a" if done or out_csv.is_file() else "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if not done and fh.tell() == 0:
            writer.writerow(columns)
        bar = tqdm(total=len(todo), desc="score", unit="file", disable=None if det.exp.train.progress else True)
        for start in range(0, len(todo), files_per_batch):
            batch = todo[start:start + files_per_batch]
            for path, row in zip(batch, _score_batch(det, batch, header, windows, operating_point, per_window)):
                writer.writerow(row)
                done[str(path)] = row
            fh.flush()
            bar.update(len(batch))
        bar.close()
    failed = sum(1 for p in files if done[str(p)][-1])
    return len(files) - failed, failed


class _WindowRows:
    """The per-window CSV: rewritten by each run (a rerun rescored only the files it had not done)."""

    def __init__(self, path: str | Path, columns: list[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow(columns)

    def add(self, rows: list[list[str]]) -> None:
        """Append rows and flush them."""
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)


def _score_batch(det: Detector, files: list[Path], header: list[str], windows: Windows,
                 operating_point: dict[str, float] | None, per_window: _WindowRows | None) -> list[list[str]]:
    """One CSV row per file, in order: the task's columns, or empty columns and the error."""
    waves: list[np.ndarray] = []
    loaded: list[Path] = []
    errors: dict[str, str] = {}
    for path in files:
        try:
            waves.append(load_audio(path))
            loaded.append(path)
        except AudioError as exc:  # one bad file must not lose the others' scores
            errors[str(path)] = str(exc)
    scored = det.score(waves, windows, per_window=per_window is not None)
    errors.update({str(loaded[j]): message for j, message in scored.errors.items()})  # too short, non-finite output
    good = [j for j in range(len(loaded)) if j not in scored.errors]
    _, table = det.table(scored.logits[good], operating_point) if good else (header, [])
    rows = {str(loaded[j]): row for j, row in zip(good, table)}
    if per_window is not None and good:
        spans = [(loaded[j], a, b, logits) for j in good for a, b, logits in scored.windows.get(j, [])]
        _, window_table = det.table(np.stack([s[3] for s in spans]), operating_point) if spans else (header, [])
        per_window.add([[str(p), f"{a:.3f}", f"{b:.3f}", *row] for (p, a, b, _), row in zip(spans, window_table)])
    return [[str(p), *rows[str(p)], ""] if str(p) in rows else [str(p), *[""] * len(header), errors[str(p)]]
            for p in files]
