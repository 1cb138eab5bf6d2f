"""Hostile and broken input through metadg's public entry points: the bad-input policy, audio and protocol lines here.

YAML and plugin names: tests/test_bad_input_config.py; checkpoints, `metadg eval` and `metadg score`:
tests/test_bad_input_checkpoints.py; shared helpers: tests/hostile.py.

Policy per input kind (each is asserted below):

* **Audio** (`load_audio`; corpus loaders; `metadg score`). Unreadable bytes, a truncated header, a
  truncated WAV data chunk or FLAC stream, a zero-byte file, a folder, no samples, NaN/Inf samples,
  all-zero samples and sample rates under 4 kHz (upsampling would let a tiny file claim gigabytes)
  raise `AudioError`, naming the file and giving a reason. Under `on_error: skip` the utterance is
  skipped, and `Utterances.skipped` counts it by reason. Any other rate (8 kHz, 44.1 kHz) is resampled
  to 16 kHz, and any channel count is averaged to mono.
* **Protocol and list lines** (ASVspoof protocols, `list` CSVs, In-the-Wild `meta.csv`). Too few or
  too many fields, an unknown label, a path that leaves the corpus root (`..`, or an absolute path
  outside it), a line over 10,000 bytes, NUL bytes, invalid UTF-8 or a quote left open: under
  `on_error: raise` each is a `CorpusError` naming `file:line`. Under `skip` the line is counted by
  reason and the rest of the file is still read. A line never swallows the lines after it. Absolute
  paths inside the root are accepted.
* **YAML** (`load_config`, `include:`, `-o` overrides, `metadg run`). Parsing uses the safe loader only,
  so `!!python/*` tags and unknown tags are refused and never run. These are refused at parse time
  with `file:line`: anchors/aliases that expand to more than 100,000 values, recursive aliases,
  nesting too deep, and duplicate keys. `${var}` expansion past 1,000,000 characters and include
  cycles are errors. An include tree reads each file once. Wrong types, a list where a mapping is
  expected, a file that is not a mapping, an empty file, a folder and run names that leave
  `output_dir` are `ConfigError`s naming the key. The CLI exits 2 and prints no traceback.
* **Plugin names**: unknown or non-string names → did-you-mean and the valid choices, exit status 2.
* **Checkpoints**: metadg reads only `meta.json` (JSON) and `trainable.safetensors`. It never unpickles
  a pickle (`.pt`, `.bin`, or a pickle saved under the safetensors name). Anything else is a
  `CheckpointError` naming the file; the CLI exits 1.
* **`metadg score`**: each unreadable file gets its own CSV row with the reason; the other files are
  still scored.
* **Nothing is written outside the run folder**: commands run with cwd and TMPDIR in a sandbox. The
  sandbox is compared before and after each command.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metadg.config import validate_plugin
from metadg.tasks.audio.loading import AudioError, load_audio
from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError
from metadg.tasks.spoof.labels import normalize_label
from hostile import SR, audio_cases, tone


# ---------------------------------------------------------------- audio


AUDIO_CASES = ["truncated WAV header", "truncated WAV data", "truncated FLAC header", "truncated FLAC stream",
               "random bytes named .wav", "zero-byte WAV", "zero-byte FLAC", "NaN samples", "Inf samples at 44.1 kHz",
               "no samples", "sample rate 1 Hz", "a folder named .wav"]


@pytest.mark.parametrize("case", AUDIO_CASES)
def test_unusable_audio_raises_naming_the_file_and_reason(tmp_path, case):
    cases = audio_cases(tmp_path)
    assert sorted(cases) == sorted(AUDIO_CASES)
    path, reason, pattern = cases[case]
    with pytest.raises(AudioError, match=rf"{re.escape(str(path))}: {pattern}") as info:
        load_audio(path)
    assert info.value.reason == reason


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_sample_rates_are_resampled_to_16k(tmp_path, rate):
    sf.write(tmp_path / "x.wav", tone(0.5, rate, hz=1000.0), rate)
    wave = load_audio(tmp_path / "x.wav")
    assert wave.dtype == np.float32 and abs(wave.shape[0] - SR // 2) <= 2
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * SR / wave.shape[0] - 1000.0) < 5  # the same pitch at the new rate


@pytest.mark.parametrize("channels", [2, 6])
def test_any_channel_count_is_averaged_to_mono(tmp_path, channels):
    gains = np.arange(1, channels + 1) / channels
    sf.write(tmp_path / "x.wav", tone()[:, None] * gains[None, :], SR, subtype="FLOAT")
    wave = load_audio(tmp_path / "x.wav")
    assert wave.ndim == 1 and np.allclose(wave, tone() * gains.mean(), atol=1e-6)


def test_unusable_audio_in_a_corpus_is_skipped_and_counted_by_reason(tmp_path):
    cases = audio_cases(tmp_path / "audio")
    lines = ["path,label", "audio/good.wav,bonafide", "audio/good-flac.flac,spoof"]
    lines += [f"{p.relative_to(tmp_path).as_posix()},spoof" for p, _, _ in cases.values() if p.is_file()]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    spec = {"name": "list", "path": str(tmp_path / "list.csv"), "on_error": "skip"}
    utts = validate_plugin(CORPORA, spec, "task.eval.x").build().utterances(normalize_label)
    loaded = [utts.try_load(i) for i in range(len(utts))]
    assert [w is not None for w in loaded] == [True, True] + [False] * (len(utts) - 2)
    assert dict(utts.skipped) == {"unreadable audio": 4, "truncated audio": 1, "empty audio": 3,
                                  "non-finite samples": 2, "unsupported sample rate": 1}


# ---------------------------------------------------------------- protocol and list lines

HUGE = "x" * (10 * 1024 * 1024)


def _list_layout(root: Path) -> dict:
    for name in ("a", "b"):
        (root / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "audio" / f"{name}.wav", tone(), SR)
    return dict(spec={"name": "list", "path": str(root / "list.csv")}, file=root / "list.csv", header="path,label",
                line=lambda f, label: f"{f},{label}", good=["audio/a.wav", "audio/b.wav"], ids=["audio/a", "audio/b"])


def _itw_layout(root: Path) -> dict:
    release = root / "release_in_the_wild"
    release.mkdir(parents=True, exist_ok=True)
    for name in ("0", "1"):
        sf.write(release / f"{name}.wav", tone(), SR)
    return dict(spec={"name": "in_the_wild", "root": str(root)}, file=release / "meta.csv", header="file,speaker,label",
                line=lambda f, label: f"{f},Some One,{label}", good=["0.wav", "1.wav"], ids=["0", "1"])


def _asv_layout(root: Path) -> dict:
    audio = root / "LA" / "ASVspoof2019_LA_train" / "flac"
    audio.mkdir(parents=True, exist_ok=True)
    for name in ("LA_T_1", "LA_T_2"):
        sf.write(audio / f"{name}.flac", tone(), SR, format="FLAC")
    protocol = root / "LA" / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.train.trn.txt"
    protocol.parent.mkdir(parents=True, exist_ok=True)
    return dict(spec={"name": "asvspoof2019_la", "root": str(root), "split": "train"}, file=protocol, header=None,
                line=lambda f, label: f"LA_0079 {f} - {'-' if label == 'bonafide' else 'A01'} {label}",
                good=["LA_T_1", "LA_T_2"], ids=["LA_T_1", "LA_T_2"])


READERS = {"list": _list_layout, "in_the_wild": _itw_layout, "asvspoof2019_la": _asv_layout}

# case → (bad line from the reader's line builder, skip reason, message pattern after 'file:line: ')
HOSTILE_LINES = {
    "too few fields": (lambda line: line("x", "spoof").rpartition("spoof")[0].rstrip(", ").encode(),
                       "malformed line", r"expected \d+ .*fields, got"),
    "unknown label": (lambda line: line("x", "maybe").encode(), "unknown label", "unknown label 'maybe'"),
    "path traversal": (lambda line: line("../../etc/passwd", "spoof").encode(), "path outside root",
                       r".*(escapes the corpus root|is not a plain name)"),
    "absolute path": (lambda line: line("/etc/passwd", "spoof").encode(), "path outside root",
                      r".*(escapes the corpus root|is not a plain name)"),
    "10 MB line": (lambda line: line(HUGE, "spoof").encode(), "malformed line", r"line of \d{8} bytes is not a protocol line"),
    "NUL bytes": (lambda line: line("a\x00b", "spoof").encode(), "malformed line", "NUL byte"),
    "binary garbage": (lambda line: b"\x89PNG\r\x1a\xff\xfe\x00\x01 garbage \xc3\x28", "malformed line", "not UTF-8 text"),
    "invalid UTF-8": (lambda line: line("caf\xe9", "spoof").encode("latin-1"), "malformed line", "not UTF-8 text"),
}


def _write_protocol(layout: dict, bad: bytes) -> int:
    """Header (if any), the bad line, then the good rows; returns the bad line's number."""
    head = [layout["header"]] if layout["header"] else []
    good = [layout["line"](f, "bonafide" if i == 0 else "spoof") for i, f in enumerate(layout["good"])]
    text = b"\n".join([h.encode() for h in head] + [bad] + [g.encode() for g in good]) + b"\n"
    layout["file"].write_bytes(text)
    return len(head) + 1


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_hostile_protocol_line_raises_naming_file_and_line(tmp_path, reader, case):
    layout = READERS[reader](tmp_path)
    bad, _, pattern = HOSTILE_LINES[case]
    number = _write_protocol(layout, bad(layout["line"]))
    with pytest.raises(CorpusError, match=rf"{re.escape(layout['file'].name)}:{number}: {pattern}"):
        validate_plugin(CORPORA, layout["spec"], "task.train").build().utterances(normalize_label)


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_hostile_protocol_line_is_skipped_and_counted(tmp_path, reader, case):
    layout = READERS[reader](tmp_path)
    bad, reason, _ = HOSTILE_LINES[case]
    _write_protocol(layout, bad(layout["line"]))
    corpus = validate_plugin(CORPORA, {**layout["spec"], "on_error": "skip"}, "task.train").build()
    utts = corpus.utterances(normalize_label)
    assert utts.ids == layout["ids"]  # the rows after the bad line are all read
    assert dict(corpus.skips.counts) == {reason: 1}


@pytest.mark.parametrize("reader", ["list", "in_the_wild"])
def test_an_open_quote_does_not_swallow_the_following_rows(tmp_path, reader):
    layout = READERS[reader](tmp_path)
    number = _write_protocol(layout, layout["line"]('"x.wav', "spoof").encode())
    with pytest.raises(CorpusError, match=rf"{layout['file'].name}:{number}: not a valid delimited line"):
        validate_plugin(CORPORA, layout["spec"], "task.train").build().utterances(normalize_label)
    corpus = validate_plugin(CORPORA, {**layout["spec"], "on_error": "skip"}, "task.train").build()
    assert corpus.utterances(normalize_label).ids == layout["ids"] and dict(corpus.skips.counts) == {"malformed line": 1}


def test_absolute_path_inside_the_root_is_accepted(tmp_path):
    layout = _list_layout(tmp_path)
    _write_protocol(layout, f"{tmp_path / 'audio' / 'b.wav'},spoof".encode())
    utts = validate_plugin(CORPORA, layout["spec"], "task.train").build().utterances(normalize_label)
    assert utts.ids == [str(tmp_path / "audio" / "b"), "audio/a", "audio/b"]


