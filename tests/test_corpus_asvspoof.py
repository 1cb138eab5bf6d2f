"""ASVspoof 2019 LA, 2021 LA/DF and ASVspoof 5 readers on fixture corpora in the released layouts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import metadg.tasks.spoof.asvspoof  # noqa: F401  registers the readers
from metadg.config import validate_plugin
from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError


def flac(path: Path, samples: int = 160) -> None:
    """A few ms of 16 kHz noise as a real FLAC file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(path.name)).uniform(-0.3, 0.3, samples).astype(np.float32)
    sf.write(path, noise, 16000, format="FLAC")


def reader(name: str, root: Path, **fields):
    """A reader built through the config layer, as an experiment file would."""
    return validate_plugin(CORPORA, {"name": name, "root": str(root), **fields}, "task.train").build()


def write(path: Path, lines: list[str] | bytes) -> Path:
    """A protocol file (text lines, or raw bytes for binary garbage)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode())
    return path


# Per reader: config, protocol file, audio folder, and a line in the released format for
# (file, key, attack) — the same builder makes the good and the bad lines of every test.
SPECS = {
    "asvspoof2019_la": dict(
        cfg={"split": "train"},
        protocol="LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.train.trn.txt",
        audio="LA/ASVspoof2019_LA_train/flac",
        line=lambda f, key, att: f"LA_0079 {f} - {att} {key}",
    ),
    "asvspoof2021_la": dict(
        cfg={},
        protocol="keys/LA/CM/trial_metadata.txt",
        audio="ASVspoof2021_LA_eval/flac",
        line=lambda f, key, att: f"LA_0009 {f} alaw ita_tx {att} {key} notrim eval",
    ),
    "asvspoof2021_df": dict(
        cfg={},
        protocol="keys/DF/CM/trial_metadata.txt",
        audio="ASVspoof2021_DF_eval/flac",
        line=lambda f, key, att: f"LA_0023 {f} nocodec asvspoof {att} {key} notrim eval traditional_vocoder - - - -",
    ),
    "asvspoof5": dict(
        cfg={"split": "train"},
        protocol="ASVspoof5.train.tsv",
        audio="flac_T",
        line=lambda f, key, att: f"T_4850 {f} F - - - {'-' if att == '-' else 'AC3'} {att} {key} -",
    ),
}


def corpus(tmp_path: Path, name: str, extra: list[str] | None = None) -> Path:
    """Bona fide U0, spoofs U1 (A01) and U2 (A02), plus `extra` lines, in `name`'s layout."""
    spec = SPECS[name]
    for utt in ("U0", "U1", "U2"):
        flac(tmp_path / spec["audio"] / f"{utt}.flac")
    good = [spec["line"]("U0", "bonafide", "-"), spec["line"]("U1", "spoof", "A01"), spec["line"]("U2", "spoof", "A02")]
    write(tmp_path / spec["protocol"], good + (extra or []))
    return tmp_path


# ---------------------------------------------------------------- each reader, real lines


def test_2019_la_reads_ids_labels_attributes_and_audio(tmp_path):
    for utt in ("LA_T_1138215", "LA_T_1004644", "LA_T_1000001"):
        flac(tmp_path / "LA/ASVspoof2019_LA_train/flac" / f"{utt}.flac", samples=320)
    write(tmp_path / SPECS["asvspoof2019_la"]["protocol"],
          ["LA_0079 LA_T_1138215 - - bonafide", "LA_0079 LA_T_1004644 - A01 spoof", "", "LA_0080 LA_T_1000001 - A02 spoof"])
    utts = reader("asvspoof2019_la", tmp_path, split="train").utterances()
    assert utts.ids == ["LA_T_1138215", "LA_T_1004644", "LA_T_1000001"]
    assert utts.labels.tolist() == [1, 0, 0]
    assert utts.attr("speaker") == ["LA_0079", "LA_0079", "LA_0080"]
    assert utts.attr("attack") == ["-", "A01", "A02"] and utts.attr("corpus") == ["asvspoof2019_la"] * 3
    wave = utts.load(1)
    assert wave.dtype == np.float32 and wave.shape == (320,)
    # other splits read their own protocol and audio folder
    flac(tmp_path / "LA/ASVspoof2019_LA_eval/flac/LA_E_2834763.flac")
    write(tmp_path / "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.eval.trl.txt", ["LA_0039 LA_E_2834763 - A11 spoof"])
    assert reader("asvspoof2019_la", tmp_path, split="eval").utterances().attr("attack") == ["A11"]


def test_2021_la_reads_eval_subset_by_default(tmp_path):
    lines = ["LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval",
             "LA_0009 LA_E_5932896 pstn sin_tx bonafide bonafide trim eval",
             "LA_0012 LA_E_1000002 ulaw loc_tx A08 spoof notrim progress",
             "LA_0013 LA_E_1000003 g722 mad_tx A09 spoof notrim hidden"]
    for line in lines:
        flac(tmp_path / "ASVspoof2021_LA_eval/flac" / f"{line.split()[1]}.flac")
    write(tmp_path / "keys/LA/CM/trial_metadata.txt", lines)
    utts = reader("asvspoof2021_la", tmp_path).utterances()
    assert utts.ids == ["LA_E_9332881", "LA_E_5932896"] and utts.labels.tolist() == [0, 1]
    assert {k: utts.attr(k)[0] for k in ("speaker", "codec", "transmission", "attack", "trim", "subset")} == {
        "speaker": "LA_0009", "codec": "alaw", "transmission": "ita_tx", "attack": "A07", "trim": "notrim", "subset": "eval"}
    assert utts.attr("attack")[1] == "-"  # the key's 'bonafide' attack column, normalised
    assert utts.load(0).dtype == np.float32
    more = reader("asvspoof2021_la", tmp_path, subsets=["eval", "progress"]).utterances()
    assert more.ids == ["LA_E_9332881", "LA_E_5932896", "LA_E_1000002"]
    assert reader("asvspoof2021_la", tmp_path, subsets=["hidden"]).utterances().attr("subset") == ["hidden"]


def test_2021_df_reads_all_13_columns(tmp_path):
    lines = ["LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder - - - -",
             "LA_0031 DF_E_2000027 mp3m4a asvspoof A09 spoof notrim eval neural_vocoder_nonautoregressive - - - -",
             "VCC2020_TEF1 DF_E_2000053 ogg vcc2020 Task1-team20 spoof notrim eval unknown Task1 team20 FF English",
             "LA_0043 DF_E_2000148 nocodec asvspoof bonafide bonafide notrim eval bonafide - - - -"]
    for line in lines:
        flac(tmp_path / "ASVspoof2021_DF_eval/flac" / f"{line.split()[1]}.flac")
    write(tmp_path / "keys/DF/CM/trial_metadata.txt", lines)
    utts = reader("asvspoof2021_df", tmp_path).utterances()
    assert utts.ids == ["DF_E_2000027", "DF_E_2000053", "DF_E_2000148"] and utts.labels.tolist() == [0, 0, 1]
    assert {k: utts.attr(k)[1] for k in ("speaker", "codec", "source", "attack", "trim", "subset", "vocoder",
                                          "task", "team", "gender_pair", "language")} == {
        "speaker": "VCC2020_TEF1", "codec": "ogg", "source": "vcc2020", "attack": "Task1-team20", "trim": "notrim",
        "subset": "eval", "vocoder": "unknown", "task": "Task1", "team": "team20", "gender_pair": "FF",
        "language": "English"}
    assert utts.attr("attack")[2] == "-" and utts.attr("corpus") == ["asvspoof2021_df"] * 3
    both = reader("asvspoof2021_df", tmp_path, subsets=["eval", "progress"]).utterances()
    assert both.ids[0] == "DF_E_2000011" and len(both) == 4


def test_2021_audio_root_apart_from_keys(tmp_path):
    keys, audio = tmp_path / "keys_pkg", tmp_path / "audio"
    flac(audio / "ASVspoof2021_LA_eval/flac/LA_E_9332881.flac")
    write(keys / "keys/LA/CM/trial_metadata.txt", ["LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval"])
    utts = reader("asvspoof2021_la", keys, audio_root=str(audio)).utterances()
    assert utts.ids == ["LA_E_9332881"] and utts.load(0).dtype == np.float32
    with pytest.raises(CorpusError, match="LA_E_9332881.flac not found"):  # without it: audio looked for under root
        reader("asvspoof2021_la", keys).utterances()


def test_asvspoof5_space_separated_tsv(tmp_path):
    lines = ["T_4850 T_0000000000 F - - - AC3 A05 spoof -", "T_4850 T_0000000001 F - - - - bonafide bonafide -"]
    for name in ("T_0000000000", "T_0000000001"):
        flac(tmp_path / "flac_T" / f"{name}.flac")
    write(tmp_path / "ASVspoof5.train.tsv", lines)
    utts = reader("asvspoof5", tmp_path, split="train").utterances()
    assert utts.ids == ["T_0000000000", "T_0000000001"] and utts.labels.tolist() == [0, 1]
    assert {k: utts.attr(k) for k in ("speaker", "gender", "codec", "codec_q", "codec_seed", "attack_tag", "attack")} == {
        "speaker": ["T_4850"] * 2, "gender": ["F"] * 2, "codec": ["-"] * 2, "codec_q": ["-"] * 2,
        "codec_seed": ["-"] * 2, "attack_tag": ["AC3", "-"], "attack": ["A05", "-"]}
    assert utts.attr("corpus") == ["asvspoof5"] * 2 and utts.load(1).dtype == np.float32


def test_asvspoof5_dev_eval_tabs_and_protocol_option(tmp_path):
    flac(tmp_path / "flac_D/D_0000000190.flac")
    write(tmp_path / "ASVspoof5.dev.track_1.tsv", ["D_0461 D_0000000190 M - - - - bonafide bonafide -"])
    dev = reader("asvspoof5", tmp_path, split="dev").utterances()
    assert dev.ids == ["D_0000000190"] and dev.attr("gender") == ["M"] and dev.labels.tolist() == [1]
    flac(tmp_path / "flac_E_eval/E_0000000007.flac")
    tabbed = "E_1234\tE_0000000007\tF\tC05\t3\t1337\tAT5\tA21\tspoof\t-"  # a tab-separated mirror
    write(tmp_path / "ASVspoof5.eval.track_1.tsv", [tabbed])
    ev = reader("asvspoof5", tmp_path, split="eval").utterances()
    assert [ev.attr(k)[0] for k in ("codec", "codec_q", "codec_seed", "attack")] == ["C05", "3", "1337", "A21"]
    write(tmp_path / "protocols/eval_v2.txt", [tabbed.replace("A21", "A22")])
    renamed = reader("asvspoof5", tmp_path, split="eval", protocol="protocols/eval_v2.txt").utterances()
    assert renamed.attr("attack") == ["A22"]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_attack_filter_keeps_bonafide(tmp_path, name):
    utts = reader(name, corpus(tmp_path, name), filters={"attack": ["A01"]}, **SPECS[name]["cfg"]).utterances()
    assert utts.ids == ["U0", "U1"] and utts.labels.tolist() == [1, 0]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_relative_root(tmp_path, monkeypatch, name):
    corpus(tmp_path / "data", name)
    monkeypatch.chdir(tmp_path)
    utts = reader(name, Path("data"), **SPECS[name]["cfg"]).utterances()
    assert len(utts) == 3 and utts.load(2).dtype == np.float32


# ---------------------------------------------------------------- bad input

# reason → (the bad protocol line for a reader's line builder, error pattern); the line is line 4
BAD = {
    "malformed line": (lambda line: line("U3", "spoof", "A01").rsplit(" ", 1)[0], r"expected \d+ [a-z-]+ fields, got"),
    "unknown label": (lambda line: line("U1x", "maybe", "A01"), "unknown label 'maybe'"),
    "missing file": (lambda line: line("U9", "spoof", "A01"), r"audio file .*U9\.flac not found"),
    "path outside root": (lambda line: line("../../x", "spoof", "A01"), r"file name '\.\./\.\./x' is not a plain name"),
}
GARBAGE = b"\x89PNG\xff\xfe\x00\x01 garbage \xc3\x28\n"  # not UTF-8: a binary file in place of a protocol


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_line_raises_naming_file_and_line(tmp_path, name, reason):
    bad, pattern = BAD[reason]
    root = corpus(tmp_path, name, [bad(SPECS[name]["line"])])
    protocol = re.escape(Path(SPECS[name]["protocol"]).name)
    with pytest.raises(CorpusError, match=rf"{protocol}:4: {pattern}"):
        reader(name, root, **SPECS[name]["cfg"]).utterances()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_binary_garbage_raises_naming_file_and_line(tmp_path, name):
    root = corpus(tmp_path, name)
    protocol = root / SPECS[name]["protocol"]
    protocol.write_bytes(protocol.read_bytes() + GARBAGE)
    with pytest.raises(CorpusError, match=rf"{re.escape(protocol.name)}:4: not UTF-8"):
        reader(name, root, **SPECS[name]["cfg"]).utterances()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bad_lines_are_skipped_and_counted(tmp_path, name):
    line = SPECS[name]["line"]
    root = corpus(tmp_path, name, [bad(line) for bad, _ in BAD.values()] + ["\x00\x01\x02"])
    protocol = root / SPECS[name]["protocol"]
    protocol.write_bytes(protocol.read_bytes() + GARBAGE)
    r = reader(name, root, on_error="skip", **SPECS[name]["cfg"])
    utts = r.utterances()
    assert utts.ids == ["U0", "U1", "U2"]
    assert dict(r.skips.counts) == {"malformed line": 3, "unknown label": 1, "missing file": 1, "path outside root": 1}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_missing_root_and_protocol_name_the_file_and_layout(tmp_path, name):
    spec = SPECS[name]
    looked_for = re.escape(str(Path(spec["protocol"])))
    missing_root = rf"corpus root .*nowhere does not exist \(looked for .*{looked_for}; expected layout: "
    with pytest.raises(CorpusError, match=missing_root):
        reader(name, tmp_path / "nowhere", **spec["cfg"]).utterances()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=rf"{looked_for} not found .*expected layout: .*flac"):
        reader(name, tmp_path / "empty", **spec["cfg"]).utterances()


def test_bad_config_is_a_config_error(tmp_path):
    from metadg.config import ConfigError

    with pytest.raises(ConfigError, match=r"task\.train\.subsets"):
        reader("asvspoof2021_la", tmp_path, subsets=["evaluation"])
    with pytest.raises(ConfigError, match=r"task\.train\.split"):
        reader("asvspoof5", tmp_path, split="test")


# ---------------------------------------------------------------- indexing speed


def test_indexing_many_lines_keeps_every_row_in_order(tmp_path):
    # Speed and linear scaling of indexing are measured by benchmarks/perf/data.py, not here.
    n = 20_000
    lines = (f"LA_{i % 1000:04d} LA_T_{i:07d} - {'-' if i % 10 == 0 else f'A0{i % 6 + 1}'} "
             f"{'bonafide' if i % 10 == 0 else 'spoof'}\n" for i in range(n))
    write(tmp_path / SPECS["asvspoof2019_la"]["protocol"], "".join(lines).encode())
    utts = reader("asvspoof2019_la", tmp_path, split="train", check_files=False).utterances()
    assert len(utts) == n and int(utts.labels.sum()) == n // 10
    assert utts.ids[-1] == f"LA_T_{n - 1:07d}" and utts.attr("attack")[:2] == ["-", "A02"]