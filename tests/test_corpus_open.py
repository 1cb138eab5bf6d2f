"""Readers of the public corpora other than ASVspoof, on tiny fixture copies of their released layouts."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import soundfile as sf

import metadg.tasks.spoof.fake_or_real  # noqa: F401  registers the readers
import metadg.tasks.spoof.fakeavceleb  # noqa: F401
import metadg.tasks.spoof.in_the_wild  # noqa: F401
import metadg.tasks.spoof.mlaad  # noqa: F401
import metadg.tasks.spoof.open_corpora  # noqa: F401
import metadg.tasks.spoof.wavefake  # noqa: F401
from metadg.config import ConfigError, validate_plugin
from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError

SECONDS = 0.02  # 320 samples at 16 kHz: enough to check resampling, quick to write
MP3 = "MP3" in sf.available_formats()  # libsndfile >= 1.1 reads and writes MP3


def tone(path, sr=16000, fmt=None):
    """Write a short sine file (any soundfile format) and create its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SECONDS * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format=fmt)


def write(path, lines):
    """Write a text file (one line per item) and create its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def reader(name, **spec):
    """The configured reader, validated the way experiment configs are."""
    return validate_plugin(CORPORA, {"name": name, **spec}, "task.train").build()


def read(name, **spec):
    """The reader's utterances with filters applied."""
    return reader(name, **spec).utterances()


def assert_loads_16k(utts):
    """Every utterance loads as float32 mono at 16 kHz (files here are SECONDS long)."""
    for i in range(len(utts)):
        wave = utts.load(i)
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert abs(len(wave) - SECONDS * 16000) <= 2, (utts.ids[i], len(wave))
    pickle.dumps(utts.loader)  # data-loader workers need it


# --------------------------------------------------------------------------- In-the-Wild

ITW_HEADER = "file,speaker,label"


@pytest.fixture
def itw(tmp_path):
    """release_in_the_wild/ with three files and meta.csv."""
    release = tmp_path / "itw" / "release_in_the_wild"
    for i in range(3):
        tone(release / f"{i}.wav")
    write(release / "meta.csv", [ITW_HEADER, "0.wav,Alec Guinness,spoof", "1.wav,Alec Guinness,bona-fide",
                                 '2.wav,"Biden, Joe",spoof'])
    return tmp_path / "itw"


def test_in_the_wild_ids_labels_attributes_audio(itw):
    utts = read("in_the_wild", root=str(itw))
    assert utts.ids == ["0", "1", "2"]
    assert utts.labels.tolist() == [0, 1, 0]  # 'bona-fide' with a hyphen is bona fide
    assert utts.attr("speaker") == ["Alec Guinness", "Alec Guinness", "Biden, Joe"]
    assert utts.attr("attack") == ["spoof", "-", "spoof"] and utts.attr("corpus") == ["in_the_wild"] * 3
    assert_loads_16k(utts)


def test_in_the_wild_root_may_be_the_release_folder_and_meta_one_level_up(itw):
    assert read("in_the_wild", root=str(itw / "release_in_the_wild")).ids == ["0", "1", "2"]
    (itw / "release_in_the_wild" / "meta.csv").rename(itw / "meta.csv")
    assert read("in_the_wild", root=str(itw)).labels.tolist() == [0, 1, 0]


def test_in_the_wild_filters_keep_bona_fide(itw):
    kept = read("in_the_wild", root=str(itw), filters={"attack": ["spoof"]})
    assert "1" in kept.ids and len(kept.ids) == 3  # bona fide has no attack: an attack filter keeps it
    with pytest.raises(ConfigError, match=r"filters\.attack: unknown attack value 'none' \(valid: spoof\)"):
        read("in_the_wild", root=str(itw), filters={"attack": ["none"]})  # a value the corpus lacks: a typo
    assert read("in_the_wild", root=str(itw), filters={"speaker": ["Biden, Joe"]}).ids == ["2"]


ITW_BAD = {
    "unknown label": ("0.wav,X,maybe", r"meta\.csv:3: unknown label 'maybe'"),
    "missing file": ("9.wav,X,spoof", r"meta\.csv:3: audio file .*9\.wav not found"),
    "path outside root": ("../../x.wav,X,spoof", r"meta\.csv:3: file name '\.\./\.\./x\.wav' is not a plain name"),
    "malformed line": ("0.wav,X,spoof,extra", r"meta\.csv:3: expected 3 fields, got 4"),
}


@pytest.mark.parametrize("reason", sorted(ITW_BAD))
def test_in_the_wild_bad_rows_raise_naming_file_and_line(itw, reason):
    line, pattern = ITW_BAD[reason]
    write(itw / "release_in_the_wild" / "meta.csv", [ITW_HEADER, "1.wav,A,bona-fide", line])
    with pytest.raises(CorpusError, match=pattern):
        read("in_the_wild", root=str(itw))


def test_in_the_wild_bad_rows_are_skipped_and_counted(itw, caplog):
    lines = [ITW_HEADER, "1.wav,A,bona-fide"] + [ITW_BAD[r][0] for r in sorted(ITW_BAD)] + ["\x00\x01garbage"]
    write(itw / "release_in_the_wild" / "meta.csv", lines)
    corpus = reader("in_the_wild", root=str(itw), on_error="skip")
    with caplog.at_level(logging.WARNING):
        utts = corpus.utterances()
    assert utts.ids == ["1"]
    assert dict(corpus.skips.counts) == {"unknown label": 1, "missing file": 1, "path outside root": 1,
                                         "malformed line": 2}
    assert "skipped 5" in caplog.text


def test_in_the_wild_missing_root_and_meta_name_the_layout(tmp_path):
    with pytest.raises(CorpusError, match=r"root .*nowhere does not exist \(expected layout: release_in_the_wild"):
        read("in_the_wild", root=str(tmp_path / "nowhere"))
    (tmp_path / "release_in_the_wild").mkdir()
    with pytest.raises(CorpusError, match=r"meta\.csv not found in .*release_in_the_wild \(expected layout"):
        read("in_the_wild", root=str(tmp_path))
    write(tmp_path / "release_in_the_wild" / "meta.csv", ["path,label"])
    with pytest.raises(CorpusError, match=r"meta\.csv:1: no column\(s\) file, speaker"):
        read("in_the_wild", root=str(tmp_path))


# --------------------------------------------------------------------------- FakeOrReal


@pytest.fixture
def fake_or_real(tmp_path):
    """for-norm nested one level deeper (a mirror), for-original with .mp3, for-2sec under its long name."""
    root = tmp_path / "FoR"
    norm = root / "for-norm" / "for-norm" / "training"
    tone(norm / "real" / "file2.wav")
    tone(norm / "real" / "file1.wav")
    tone(norm / "fake" / "file9.wav")
    (norm / "fake" / "notes.txt").write_text("not audio")
    original = root / "for-original" / "training"
    tone(original / "real" / "a.wav", sr=44100)
    if MP3:
        tone(original / "real" / "a.mp3", sr=22050, fmt="MP3")  # same stem as a.wav: ids keep the extension
        tone(original / "fake" / "b.MP3", sr=24000, fmt="MP3")
    tone(root / "for-2sec" / "for-2seconds" / "testing" / "real" / "r.wav")
    tone(root / "for-2sec" / "for-2seconds" / "testing" / "fake" / "f.wav")
    return root


def test_fake_or_real_nested_mirror(fake_or_real):
    utts = read("fake_or_real", root=str(fake_or_real), version="for-norm", split="training")
    assert utts.ids == ["for-norm/training/fake/file9.wav", "for-norm/training/real/file1.wav",
                        "for-norm/training/real/file2.wav"]
    assert utts.labels.tolist() == [0, 1, 1]
    assert utts.attr("attack") == ["fake", "-", "-"]
    assert set(utts.attr("version")) == {"for-norm"} and set(utts.attr("split")) == {"training"}
    assert_loads_16k(utts)
    # A version folder as root gives the same ids.
    same = read("fake_or_real", root=str(fake_or_real / "for-norm"), version="for-norm", split="training")
    assert same.ids == utts.ids


@pytest.mark.skipif(not MP3, reason="this libsndfile cannot write/read MP3 (needs libsndfile >= 1.1)")
def test_fake_or_real_original_mixes_wav_and_mp3(fake_or_real):
    utts = read("fake_or_real", root=str(fake_or_real), version="for-original", split="training")
    assert utts.ids == ["for-original/training/fake/b.MP3", "for-original/training/real/a.mp3",
                        "for-original/training/real/a.wav"]
    assert utts.labels.tolist() == [0, 1, 1]
    assert_loads_16k(utts)  # 22.05/24/44.1 kHz, resampled


def test_fake_or_real_long_folder_names_and_filters(fake_or_real):
    utts = read("fake_or_real", root=str(fake_or_real), version="for-2sec", split="testing")
    assert utts.ids == ["for-2sec/testing/fake/f.wav", "for-2sec/testing/real/r.wav"]
    kept = read("fake_or_real", root=str(fake_or_real), version="for-2sec", split="testing", filters={"attack": ["fake"]})
    assert kept.ids == utts.ids  # the real clip has no attack and passes
    with pytest.raises(ConfigError, match=r"unknown attack value 'x' \(valid: fake\)"):
        read("fake_or_real", root=str(fake_or_real), version="for-2sec", split="testing", filters={"attack": ["x"]})


def test_fake_or_real_missing_folders_name_the_layout(fake_or_real, tmp_path):
    with pytest.raises(ConfigError, match=r"task\.train\.version"):
        reader("fake_or_real", root=str(fake_or_real), split="training")
    with pytest.raises(CorpusError, match=r"corpus root .*nowhere does not exist \(expected layout: <version>"):
        read("fake_or_real", root=str(tmp_path / "nowhere"), version="for-norm", split="training")
    with pytest.raises(CorpusError, match=r"no validation/ folder for for-norm under .*expected layout"):
        read("fake_or_real", root=str(fake_or_real), version="for-norm", split="validation")
    with pytest.raises(CorpusError, match=r"no training/ folder for for-rerec"):
        read("fake_or_real", root=str(fake_or_real), version="for-rerec", split="training")
    (fake_or_real / "for-2sec" / "for-2seconds" / "testing" / "fake" / "f.wav").unlink()
    (fake_or_real / "for-2sec" / "for-2seconds" / "testing" / "fake").rmdir()
    with pytest.raises(CorpusError, match=r"testing/fake not found"):
        read("fake_or_real", root=str(fake_or_real), version="for-2sec", split="testing")


# --------------------------------------------------------------------------- FakeAVCeleb

# The released meta_data.csv: the header ends in a comma, `path` holds the file name and the
# unnamed tenth column the folder, prefixed by a dataset folder name that differs from the release's.
FAVC_HEADER = "source,target1,target2,method,category,type,race,gender,path,"


def favc_row(method, letter, category, name, race="African", gender="men", source="id00076"):
    """One meta_data.csv row in the released shape."""
    folder = f"FakeAVCeleb/{category}/{race}/{gender}/{source}"
    return f"{source},-,-,{method},{letter},{category},{race},{gender},{name},{folder}"


FAVC_ROWS = [
    favc_row("real", "A", "RealVideo-RealAudio", "00109.mp4"),
    favc_row("rtvc", "B", "RealVideo-FakeAudio", "00109_fake.mp4"),
    favc_row("faceswap", "C", "FakeVideo-RealAudio", "00109_id1_faceswap.mp4", race="Asian (South)", gender="women"),
    favc_row("wav2lip", "D", "FakeVideo-FakeAudio", "00109_2_id00001_wavtolip.mp4"),
    favc_row("faceswap-wav2lip", "D", "FakeVideo-FakeAudio", "00109_2_id00001_wavtolip.mp4"),  # listed twice
]


@pytest.fixture(params=[".wav", ".flac"])
def favc(tmp_path, request):
    """FakeAVCeleb_v1.2/ with meta_data.csv and audio extracted beside (absent) videos."""
    base = tmp_path / "favc" / "FakeAVCeleb_v1.2"
    write(base / "meta_data.csv", [FAVC_HEADER, *FAVC_ROWS])
    for row in FAVC_ROWS:
        fields = row.split(",")
        video = base / fields[-1].split("/", 1)[1] / fields[-2]
        tone(video.with_suffix(request.param))
    return tmp_path / "favc", request.param


def test_fakeavceleb_labels_from_the_audio_half(favc):
    root, ext = favc
    utts = read("fakeavceleb", root=str(root), audio_ext=ext)
    assert utts.ids == ["RealVideo-RealAudio/African/men/id00076/00109",
                        "RealVideo-FakeAudio/African/men/id00076/00109_fake",
                        "FakeVideo-RealAudio/Asian (South)/women/id00076/00109_id1_faceswap",
                        "FakeVideo-FakeAudio/African/men/id00076/00109_2_id00001_wavtolip"]
    assert utts.labels.tolist() == [1, 0, 1, 0]
    assert utts.attr("attack") == ["-", "rtvc", "-", "wav2lip"]  # first of the duplicated rows wins
    assert utts.attr("category")[2] == "FakeVideo-RealAudio"
    assert utts.attr("race")[2] == "Asian (South)" and utts.attr("gender")[2] == "women"
    assert utts.attr("speaker") == ["id00076"] * 4
    assert_loads_16k(utts)
    # The release folder itself as root; filters on category and attack.
    same = read("fakeavceleb", root=str(root / "FakeAVCeleb_v1.2"), audio_ext=ext, filters={"attack": ["rtvc"]})
    assert same.labels.tolist() == [1, 0, 1]
    by_cat = read("fakeavceleb", root=str(root), audio_ext=ext, filters={"category": ["RealVideo-FakeAudio"]})
    assert by_cat.ids == ["RealVideo-FakeAudio/African/men/id00076/00109_fake"]


FAVC_BAD = {
    "missing file": (favc_row("rtvc", "B", "RealVideo-FakeAudio", "nope.mp4"),
                     r"meta_data\.csv:3: audio file .*nope\.wav not found"),
    "path outside root": (favc_row("rtvc", "B", "RealVideo-FakeAudio", "../../../../../x.mp4"),
                          r"meta_data\.csv:3: .*/\.\./\.\./.*x\.mp4 has a '\.\.' part"),
    "malformed line": ("id1,-,-,rtvc,B,RealVideo-FakeAudio,African", r"meta_data\.csv:3: expected 10 fields, got 7"),
    "no category": ("id1,-,-,rtvc,B,Other,African,men,x.mp4,FakeAVCeleb/Other/African/men/id1",
                    r"meta_data\.csv:3: no RealVideo-RealAudio/.* folder in this row's path"),
}


@pytest.mark.parametrize("reason", sorted(FAVC_BAD))
def test_fakeavceleb_bad_rows_under_both_policies(tmp_path, reason):
    base = tmp_path / "FakeAVCeleb_v1.2"
    tone(base / "RealVideo-RealAudio" / "African" / "men" / "id00076" / "00109.wav")
    write(base / "meta_data.csv", [FAVC_HEADER, FAVC_ROWS[0], FAVC_BAD[reason][0]])
    with pytest.raises(CorpusError, match=FAVC_BAD[reason][1]):
        read("fakeavceleb", root=str(tmp_path))
    corpus = reader("fakeavceleb", root=str(tmp_path), on_error="skip")
    assert corpus.utterances().ids == ["RealVideo-RealAudio/African/men/id00076/00109"]
    assert corpus.skips.total == 1


def test_fakeavceleb_missing_root_and_metadata(tmp_path):
    with pytest.raises(CorpusError, match=r"root .*nowhere does not exist \(expected layout: FakeAVCeleb_v1\.2/"):
        read("fakeavceleb", root=str(tmp_path / "nowhere"))
    (tmp_path / "FakeAVCeleb_v1.2").mkdir()
    with pytest.raises(CorpusError, match=r"FakeAVCeleb_v1\.2/meta_data\.csv not found \(expected layout"):
        read("fakeavceleb", root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"task\.train\.audio_ext"):
        reader("fakeavceleb", root=str(tmp_path), audio_ext="wav")


# --------------------------------------------------------------------------- MLAAD + M-AILABS

MLAAD_HEADER = ("path|original_file|language|is_original_language|duration|training_data|model_name|architecture"
                "|transcript")
VITS = "tts_models_en_ljspeech_vits"


def mlaad_row(path, model="tts_models/en/ljspeech/vits", arch="VITS", lang="en"):
    """One pipe-delimited meta.csv row; the transcript holds a stray quote, as real ones do."""
    original = "en_US/by_book/female/judy_bieber/dorothy/wavs/dorothy_01_f000001.wav"
    return f"{path}|{original}|{lang}|True|2.1|ljspeech|{model}|{arch}|He said \"hi"


@pytest.fixture
def mlaad(tmp_path):
    """MLAAD fake/en (two files) and fake/de (one row naming the wrong language folder), plus M-AILABS."""
    fake = tmp_path / "mlaad" / "fake"
    tone(fake / "en" / VITS / "a.wav", sr=22050)
    tone(fake / "en" / VITS / "b.wav", sr=22050)
    write(fake / "en" / VITS / "meta.csv", [MLAAD_HEADER, mlaad_row(f"./fake/en/{VITS}/a.wav"),
                                            mlaad_row(f"./fake/en/{VITS}/b.wav")])
    tone(fake / "de" / "thorsten" / "c.wav")
    write(fake / "de" / "thorsten" / "meta.csv",
          [MLAAD_HEADER, mlaad_row("./fake/deu/thorsten/c.wav", model="thorsten", arch="Tacotron2", lang="de")])
    mailabs = tmp_path / "mailabs"
    tone(mailabs / "en_US" / "by_book" / "female" / "judy_bieber" / "dorothy" / "wavs" / "d1.wav")
    tone(mailabs / "en_US" / "by_book" / "mix" / "sherlock" / "wavs" / "m1.wav")  # no reader level
    tone(mailabs / "de_DE" / "by_book" / "male" / "karlsson" / "kleinzaches" / "wavs" / "k1.wav", sr=22050)
    return tmp_path / "mlaad", mailabs


def test_mlaad_with_mailabs_bona_fide(mlaad):
    root, mailabs = mlaad
    utts = read("mlaad", root=str(root), mailabs_root=str(mailabs))
    assert utts.ids == ["de/thorsten/c", f"en/{VITS}/a", f"en/{VITS}/b",
                        "mailabs/de_DE/by_book/male/karlsson/kleinzaches/wavs/k1",
                        "mailabs/en_US/by_book/female/judy_bieber/dorothy/wavs/d1",
                        "mailabs/en_US/by_book/mix/sherlock/wavs/m1"]
    assert utts.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert utts.attr("language") == ["de", "en", "en", "de", "en", "en"]
    assert utts.attr("model") == ["thorsten", *["tts_models/en/ljspeech/vits"] * 2, "-", "-", "-"]
    assert utts.attr("attack") == utts.attr("model")
    assert utts.attr("architecture")[:3] == ["Tacotron2", "VITS", "VITS"]
    assert utts.attr("speaker")[3:] == ["karlsson", "judy_bieber", ""]
    assert utts.attr("corpus") == ["mlaad"] * 6
    assert_loads_16k(utts)
    # rows() on its own walks both roots, as read() does one root at a time.
    assert len(list(reader("mlaad", root=str(root), mailabs_root=str(mailabs)).rows())) == 6


def test_mlaad_languages_and_filters(mlaad):
    root, mailabs = mlaad
    utts = read("mlaad", root=str(root), mailabs_root=str(mailabs), languages=["en"], filters={"architecture": ["VITS"]})
    assert {"mailabs/en_US/by_book/female/judy_bieber/dorothy/wavs/d1",
            "mailabs/en_US/by_book/mix/sherlock/wavs/m1"} <= set(utts.ids)  # bona fide passes architecture filters
    with pytest.raises(ConfigError, match=r"unknown architecture value 'X' \(valid: VITS\)"):
        read("mlaad", root=str(root), mailabs_root=str(mailabs), languages=["en"], filters={"architecture": ["X"]})
    spoofs = read("mlaad", root=str(root / "fake"), languages=["de", "en"], filters={"attack": ["thorsten"]})
    assert spoofs.ids == ["de/thorsten/c"] and spoofs.labels.tolist() == [0]


MLAAD_BAD = {
    "missing file": (mlaad_row(f"./fake/en/{VITS}/zz.wav"), r"meta\.csv:3: audio file .*zz\.wav not found"),
    "path outside root": (mlaad_row("../../x.wav"), r"meta\.csv:3: \.\./\.\./x\.wav escapes the model folder"),
    "malformed line": (mlaad_row(f"./fake/en/{VITS}/b.wav") + "|extra", r"meta\.csv:3: expected 9 fields, got 10"),
}


@pytest.mark.parametrize("reason", sorted(MLAAD_BAD))
def test_mlaad_bad_rows_raise_naming_file_and_line(mlaad, reason):
    root, _ = mlaad
    write(root / "fake" / "en" / VITS / "meta.csv", [MLAAD_HEADER, mlaad_row(f"./fake/en/{VITS}/a.wav"),
                                                      MLAAD_BAD[reason][0]])
    with pytest.raises(CorpusError, match=MLAAD_BAD[reason][1]):
        read("mlaad", root=str(root), languages=["en"])


def test_mlaad_bad_rows_are_skipped_across_both_roots(mlaad, caplog):
    root, mailabs = mlaad
    write(root / "fake" / "en" / VITS / "meta.csv",
          [MLAAD_HEADER, mlaad_row(f"./fake/en/{VITS}/a.wav"), *(MLAAD_BAD[r][0] for r in sorted(MLAAD_BAD))])
    (root / "fake" / "en" / "no_meta_model").mkdir()
    corpus = reader("mlaad", root=str(root), mailabs_root=str(mailabs), languages=["en"], on_error="skip")
    with caplog.at_level(logging.WARNING):
        utts = corpus.utterances()
    assert utts.ids[0] == f"en/{VITS}/a" and utts.labels.tolist() == [0, 1, 1]
    assert dict(corpus.skips.counts) == {"missing file": 1, "path outside root": 1, "malformed line": 1,
                                         "missing meta.csv": 1}
    assert "skipped 4" in caplog.text
    with pytest.raises(CorpusError, match=r"no_meta_model/meta\.csv not found"):
        read("mlaad", root=str(root), languages=["en"])


def test_mlaad_missing_folders_name_the_layout(mlaad, tmp_path):
    root, _ = mlaad
    with pytest.raises(CorpusError, match=r"corpus root .*nowhere does not exist \(expected layout: fake/<lang>"):
        read("mlaad", root=str(tmp_path / "nowhere"))
    with pytest.raises(CorpusError, match=r"language folder\(s\) xx not found in .*fake \(have: de, en"):
        read("mlaad", root=str(root), languages=["en", "xx"])
    with pytest.raises(CorpusError, match=r"M-AILABS root .*nowhere does not exist"):
        read("mlaad", root=str(root), mailabs_root=str(tmp_path / "nowhere"))
    # A comma-separated meta.csv: one column named 'path,model_name,architecture'.
    write(root / "fake" / "de" / "thorsten" / "meta.csv", ["path,model_name,architecture", "c.wav,x,y"])
    with pytest.raises(CorpusError, match=r"thorsten/meta\.csv:1: no column\(s\) path, model_name, architecture"):
        read("mlaad", root=str(root), languages=["de"])
    corpus = reader("mlaad", root=str(root), on_error="skip")
    assert corpus.utterances().ids == [f"en/{VITS}/a", f"en/{VITS}/b"]
    assert dict(corpus.skips.counts) == {"malformed meta.csv": 1}


# --------------------------------------------------------------------------- WaveFake + LJSpeech


@pytest.fixture
def wavefake(tmp_path):
    """generated_audio/ with two vocoders, LJSpeech-1.1/wavs at 22.05 kHz."""
    generated = tmp_path / "wavefake" / "generated_audio"
    tone(generated / "ljspeech_melgan" / "LJ001-0001_gen.wav", sr=22050)
    tone(generated / "ljspeech_hifiGAN" / "LJ001-0001_gen.wav", sr=22050)
    lj = tmp_path / "lj" / "LJSpeech-1.1"
    tone(lj / "wavs" / "LJ001-0001.wav", sr=22050)
    tone(lj / "wavs" / "LJ001-0002.wav", sr=22050)
    write(lj / "metadata.csv", ["LJ001-0001|Printing|Printing", "LJ001-0002|in|in"])
    return tmp_path / "wavefake", tmp_path / "lj"


def test_wavefake_with_ljspeech_resampled(wavefake):
    root, lj = wavefake
    utts = read("wavefake", root=str(root), ljspeech_root=str(lj))
    assert utts.ids == ["ljspeech_hifiGAN/LJ001-0001_gen", "ljspeech_melgan/LJ001-0001_gen",
                        "ljspeech/LJ001-0001", "ljspeech/LJ001-0002"]
    assert utts.labels.tolist() == [0, 0, 1, 1]
    assert utts.attr("attack") == ["ljspeech_hifiGAN", "ljspeech_melgan", "-", "-"] == utts.attr("vocoder")
    assert utts.attr("corpus") == ["wavefake"] * 4
    assert sf.info(str(lj / "LJSpeech-1.1" / "wavs" / "LJ001-0001.wav")).samplerate == 22050
    assert_loads_16k(utts)  # 441 samples at 22.05 kHz → 320 at 16 kHz
    melgan = read("wavefake", root=str(root / "generated_audio"), ljspeech_root=str(lj / "LJSpeech-1.1" / "wavs"),
                  filters={"attack": ["ljspeech_melgan"]})
    assert melgan.ids == ["ljspeech_melgan/LJ001-0001_gen", "ljspeech/LJ001-0001", "ljspeech/LJ001-0002"]
    assert read("wavefake", root=str(root)).labels.tolist() == [0, 0]  # spoofs only


def test_wavefake_missing_folders_name_the_layout(wavefake, tmp_path):
    root, _ = wavefake
    with pytest.raises(CorpusError, match=r"root .*nowhere does not exist \(expected layout: generated_audio/"):
        read("wavefake", root=str(tmp_path / "nowhere"))
    with pytest.raises(CorpusError, match=r"no LJSpeech wavs under .*nowhere \(expected LJSpeech-1\.1/wavs"):
        read("wavefake", root=str(root), ljspeech_root=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no vocoder folders in .*empty"):
        read("wavefake", root=str(tmp_path / "empty"))
