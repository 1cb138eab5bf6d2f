"""The `tau2020_mobile` reader on a tiny corpus in the exact TAU Urban Acoustic Scenes 2020 Mobile layout."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

import metadg.tasks.classification.tau  # noqa: F401  registers tau2020_mobile
from metadg.config import ConfigError, validate_plugin
from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError

CLASSES = ["airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
           "street_pedestrian", "street_traffic", "tram"]
INDEX = {c: i for i, c in enumerate(CLASSES)}
SR = 44100
SECONDS = 0.1
# (scene, city, location, segment, device): two scenes x every device kind, incl. the unseen s4-s6
CLIPS = [(scene, city, loc, seg, dev)
         for scene, city, loc in [("airport", "barcelona", 0), ("street_pedestrian", "lisbon", 1)]
         for seg, dev in enumerate(["a", "b", "s1", "s4", "s5", "s6"])]
UNSEEN = {"s4", "s5", "s6"}


def label_map(label):
    try:
        return INDEX[label]
    except KeyError:
        raise CorpusError(f"unknown label {label!r}") from None


def name_of(scene, city, loc, seg, dev):
    return f"audio/{scene}-{city}-{loc}-{seg}-{dev}.wav"


def meta_line(clip):
    scene, city, loc, _, dev = clip
    return f"{name_of(*clip)}\t{scene}\t{city}-{loc}\t{dev}"


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "TAU-urban-acoustic-scenes-2020-mobile-development"
    (root / "audio").mkdir(parents=True)
    t = np.arange(int(SECONDS * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for clip in CLIPS:
        sf.write(root / name_of(*clip), wave, SR, subtype="PCM_24")
    write(root / "meta.csv", ["filename\tscene_label\tidentifier\tsource_label", *map(meta_line, CLIPS)])
    train = [c for c in CLIPS if c[4] not in UNSEEN and c[3] % 2 == 0]  # segments 0 (a) and 2 (s1)
    evaluate = [c for c in CLIPS if c not in train]
    setup = root / "evaluation_setup"
    write(setup / "fold1_train.csv", ["filename\tscene_label", *(f"{name_of(*c)}\t{c[0]}" for c in train)])
    write(setup / "fold1_evaluate.csv", ["filename\tscene_label", *(f"{name_of(*c)}\t{c[0]}" for c in evaluate)])
    write(setup / "fold1_test.csv", ["filename", *(name_of(*c) for c in evaluate)])
    return root


def build(root, **fields):
    return validate_plugin(CORPORA, {"name": "tau2020_mobile", "root": str(root), **fields}, "task.train").build()


def read(root, **fields):
    return build(root, **fields).utterances(label_map)


def ids_of(clips):
    return [name_of(*c).removeprefix("audio/").removesuffix(".wav") for c in clips]


def test_train_split_ids_labels_and_attributes(root):
    utts = read(root, split="train")
    expected = [c for c in CLIPS if c[4] in ("a", "s1")]
    assert utts.ids == ids_of(expected)
    assert utts.ids[0] == "airport-barcelona-0-0-a"
    assert utts.labels.tolist() == [INDEX[c[0]] for c in expected] == [0, 0, 7, 7]
    assert utts.attr("scene") == [c[0] for c in expected]
    assert utts.attr("device") == ["a", "s1", "a", "s1"]
    assert utts.attr("identifier") == ["barcelona-0", "barcelona-0", "lisbon-1", "lisbon-1"]
    assert utts.attr("location") == utts.attr("identifier")
    assert utts.attr("city") == ["barcelona", "barcelona", "lisbon", "lisbon"]
    assert utts.attr("corpus") == ["tau2020_mobile"] * 4
    assert not UNSEEN & set(utts.attr("device"))


def test_evaluate_test_and_all_splits(root):
    evaluate = read(root, split="evaluate")
    assert UNSEEN <= set(evaluate.attr("device")) and set(evaluate.attr("device")) == {"b", "s4", "s5", "s6"}
    test = read(root, split="test")  # file names only: labels come from meta.csv
    assert test.ids == evaluate.ids and test.labels.tolist() == evaluate.labels.tolist()
    assert test.attr("device") == evaluate.attr("device")
    everything = read(root, split="all")
    assert everything.ids == ids_of(CLIPS) and len(everything) == 12
    assert everything.labels.tolist() == [INDEX[c[0]] for c in CLIPS]


def test_audio_is_resampled_to_16k(root):
    utts = read(root, split="all")
    wave = utts.load(0)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - int(SECONDS * 16000)) <= 2
    assert 0.25 < np.abs(wave).max() < 0.35


def test_device_filter_and_class_names(root):
    utts = read(root, split="all", filters={"device": ["a", "s4"]})
    assert utts.attr("device") == ["a", "s4", "a", "s4"]
    assert build(root).class_names() == CLASSES
    assert "tau2020_mobile" in CORPORA.names()


def test_config_is_typed_and_described():
    with pytest.raises(ConfigError, match="split"):
        validate_plugin(CORPORA, {"name": "tau2020_mobile", "root": "x", "split": "dev"}, "task.train")
    with pytest.raises(ConfigError, match="fold"):
        validate_plugin(CORPORA, {"name": "tau2020_mobile", "root": "x", "fold": 0}, "task.train")
    cfg = validate_plugin(CORPORA, {"name": "tau2020_mobile", "root": "x"}, "task.train").cfg
    assert cfg.split == "train" and cfg.fold == 1
    assert all(type(cfg).model_fields[f].description for f in ("root", "split", "fold"))


def test_missing_files_name_the_path_and_layout(root):
    with pytest.raises(CorpusError, match=r"evaluation_setup/fold2_train\.csv not found.*expected layout"):
        read(root, fold=2)
    (root / "meta.csv").unlink()
    with pytest.raises(CorpusError, match=r"meta\.csv not found .*expected layout.*evaluation_setup/fold"):
        read(root)
    with pytest.raises(CorpusError, match="corpus root .* does not exist"):
        read(root / "nope")


FIRST = CLIPS[0]  # airport-barcelona-0-0-a, in fold1_train
# reason → (file edited, line appended, pattern of the error); the line lands at line 14 of meta.csv
# (header + 12 rows) or line 6 of fold1_train.csv (header + 4 rows)
BAD = {
    "not in meta.csv": ("evaluation_setup/fold1_train.csv", "audio/bus-paris-3-0-a.wav\tbus",
                        r"fold1_train\.csv:6: audio/bus-paris-3-0-a\.wav is not listed in .*meta\.csv"),
    "scene mismatch": ("evaluation_setup/fold1_train.csv", f"{name_of(*CLIPS[1])}\tpark",
                       r"fold1_train\.csv:6: scene_label 'park' .*disagrees with .*meta\.csv:3 \('airport'\)"),
    "device mismatch": ("meta.csv", "audio/bus-paris-3-0-a.wav\tbus\tparis-3\tb",
                        r"meta\.csv:14: source_label 'b' is not the device of audio/bus-paris-3-0-a\.wav"),
    "duplicate file": ("meta.csv", meta_line(FIRST), r"meta\.csv:14: audio/airport-barcelona-0-0-a\.wav already "
                       r"listed at .*meta\.csv:2"),
    "duplicate setup file": ("evaluation_setup/fold1_train.csv", f"{name_of(*FIRST)}\tairport",
                             r"fold1_train\.csv:6: .*already listed at .*fold1_train\.csv:2"),
    "unknown label": ("meta.csv", "audio/cafe-paris-3-0-a.wav\tcafe\tparis-3\ta",
                      r"meta\.csv:14: unknown label 'cafe'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_naming_file_and_line_or_is_skipped(root, case):
    relative, line, pattern = BAD[case]
    with (root / relative).open("a") as fh:
        fh.write(line + "\n")
    if case == "unknown label":
        sf.write(root / "audio/cafe-paris-3-0-a.wav", np.full(100, 0.1, np.float32), SR, subtype="PCM_24")
    with pytest.raises(CorpusError, match=pattern):
        read(root, split="all" if relative == "meta.csv" else "train")
    reader = build(root, split="all" if relative == "meta.csv" else "train", on_error="skip")
    utts = reader.utterances(label_map)
    reason = "duplicate file" if case == "duplicate setup file" else case
    assert dict(reader.skips.counts) == {reason: 1}
    assert utts.skipped[reason] == 1
    assert len(utts) == (12 if relative == "meta.csv" else 4)


def test_rejected_meta_row_is_not_counted_twice(root):
    # A meta row with the wrong device, also listed in the train fold: one bad row, one count.
    name = "audio/bus-paris-3-0-a.wav"
    with (root / "meta.csv").open("a") as fh:
        fh.write(f"{name}\tbus\tparis-3\ts2\n")
    with (root / "evaluation_setup/fold1_train.csv").open("a") as fh:
        fh.write(f"{name}\tbus\n")
    reader = build(root, on_error="skip")
    assert len(reader.utterances(label_map)) == 4
    assert dict(reader.skips.counts) == {"device mismatch": 1}


def test_missing_audio_names_the_setup_line(root):
    (root / name_of(*CLIPS[2])).unlink()  # airport ... s1, line 3 of fold1_train.csv
    with pytest.raises(CorpusError, match=r"fold1_train\.csv:3: audio file .*-s1\.wav not found"):
        read(root)
