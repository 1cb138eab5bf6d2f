"""Hostile and broken input through metadg's public entry points: the whole bad-input policy in one place.

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

import csv
import io
import json
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import metadg.config
from metadg.engine.checkpoint import CheckpointError
from metadg.cli import main
from metadg.config import ConfigError, load_config, load_raw, validate_plugin
from metadg.tasks.audio.loading import AudioError, load_audio
from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError
from metadg.tasks.spoof.labels import normalize_label
from metadg.engine.trainer import Trainer, load_trained

SR = 16000


def tone(seconds: float = 0.25, sr: int = SR, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


class Sandbox:
    """cwd and TMPDIR moved into fresh folders; `written()` lists what appeared or changed under the watched roots."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, watch: tuple[Path, ...]) -> None:
        self.cwd, self.tmp = root / "sandbox-cwd", root / "sandbox-tmp"
        self.cwd.mkdir(exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        monkeypatch.chdir(self.cwd)
        monkeypatch.setenv("TMPDIR", str(self.tmp))
        monkeypatch.setattr(tempfile, "tempdir", str(self.tmp))
        self.roots = (root, *watch)
        self.before = self._state()

    def _state(self) -> dict[Path, tuple[int, int] | None]:
        # Folders count when they appear; files when they appear or change. torch makes an empty
        # `torchinductor_<user>` cache folder in TMPDIR on first use: torch's, not metadg's.
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
                for r in self.roots for p in r.rglob("*") if not p.relative_to(r).parts[-1].startswith("torchinductor_")}

    def written(self) -> set[Path]:
        """Paths created or modified since the sandbox was set up."""
        return {p for p, s in self._state().items() if p not in self.before or self.before[p] != s}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Call after writing the inputs: sandbox(*extra_roots_to_watch) → Sandbox."""
    return lambda *watch: Sandbox(tmp_path, monkeypatch, watch)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `metadg argv...` in-process; (exit status, stdout, stderr)."""
    status = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return status, out.out, out.err


# ---------------------------------------------------------------- audio


def _audio_cases(d: Path) -> dict[str, tuple[Path, str, str]]:
    """name → (file, reason, message pattern): every kind of unusable audio, written into `d`."""
    d.mkdir(exist_ok=True)
    good_wav, good_flac = d / "good.wav", d / "good-flac.flac"
    sf.write(good_wav, tone(1.0), SR)
    sf.write(good_flac, tone(1.0), SR)
    wav, flac = good_wav.read_bytes(), good_flac.read_bytes()
    raw = {
        "truncated WAV header": ("wav-header.wav", wav[:20], "unreadable audio", "unreadable audio"),
        "truncated WAV data": ("wav-data.wav", wav[: 44 + 1000], "truncated audio",
                               "truncated: the header announces 32000 bytes"),
        "truncated FLAC header": ("flac-header.flac", flac[:30], "unreadable audio", "unreadable audio"),
        "truncated FLAC stream": ("flac-stream.flac", flac[: len(flac) // 2], "unreadable audio", "unreadable audio"),
        "random bytes named .wav": ("random.wav", np.random.default_rng(0).bytes(5000), "unreadable audio", "unreadable audio"),
        "zero-byte WAV": ("zero-wav.wav", b"", "empty audio", r"empty file \(0 bytes\)"),
        "zero-byte FLAC": ("zero-flac.flac", b"", "empty audio", r"empty file \(0 bytes\)"),
    }
    cases = {}
    for name, (file, data, reason, pattern) in raw.items():
        (d / file).write_bytes(data)
        cases[name] = (d / file, reason, pattern)
    spikes = np.arange(SR) % 100 == 0
    sf.write(d / "nan.wav", np.where(spikes, np.nan, tone(1.0)).astype(np.float32), SR, subtype="FLOAT")
    sf.write(d / "inf.wav", np.where(spikes, np.inf, tone(1.0)).astype(np.float32), 44100, subtype="FLOAT")
    sf.write(d / "no-samples.wav", np.zeros(0, dtype=np.float32), SR)
    sf.write(d / "1hz.wav", tone(1.0), 1)  # 16,000 samples at 1 Hz would become 256 M samples at 16 kHz
    (d / "folder.wav").mkdir(exist_ok=True)
    cases |= {
        "NaN samples": (d / "nan.wav", "non-finite samples", "NaN or infinite samples"),
        "Inf samples at 44.1 kHz": (d / "inf.wav", "non-finite samples", "NaN or infinite samples"),
        "no samples": (d / "no-samples.wav", "empty audio", r"empty audio \(no samples\)"),
        "sample rate 1 Hz": (d / "1hz.wav", "unsupported sample rate", "sample rate 1 Hz is below 4000 Hz"),
        "a folder named .wav": (d / "folder.wav", "unreadable audio", "not a regular file"),
    }
    return cases


AUDIO_CASES = ["truncated WAV header", "truncated WAV data", "truncated FLAC header", "truncated FLAC stream",
               "random bytes named .wav", "zero-byte WAV", "zero-byte FLAC", "NaN samples", "Inf samples at 44.1 kHz",
               "no samples", "sample rate 1 Hz", "a folder named .wav"]


@pytest.mark.parametrize("case", AUDIO_CASES)
def test_unusable_audio_raises_naming_the_file_and_reason(tmp_path, case):
    cases = _audio_cases(tmp_path)
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
    cases = _audio_cases(tmp_path / "audio")
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


# ---------------------------------------------------------------- YAML


@pytest.fixture
def experiment_yaml(tmp_path, tiny_config):
    """A valid experiment file (the base that the hostile cases modify)."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


TAGS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/apply:subprocess.call [['touch', '{marker}']]",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!include /etc/passwd",
    "!env HOME",
]


@pytest.mark.parametrize("tag", TAGS)
def test_yaml_tags_are_refused_and_never_run(experiment_yaml, sandbox, capsys, tag):
    marker = experiment_yaml.parent / "MARKER"
    value = tag.format(marker=marker)
    evil = experiment_yaml.with_name("evil.yaml")
    evil.write_text(experiment_yaml.read_text().replace("seed: 0\n", f"seed: {value}\n"))
    box = sandbox()
    status, _, err = cli(capsys, "run", str(evil), "--dry-run")
    assert status == 2 and re.search(r"evil\.yaml:\d+:\d+: invalid YAML: could not determine a constructor", err), err
    status, _, err = cli(capsys, "run", str(experiment_yaml), "--dry-run", "-o", f"seed={value}")
    assert status == 2 and re.search(r"exp\.yaml: override .seed=.*invalid YAML: could not determine a constructor", err), err
    assert not marker.exists() and not (box.cwd / marker.name).exists()
    assert box.written() == set()


def _laughs(levels: int = 9, indent: str = "") -> str:
    """The classic billion-laughs document: 9 aliases per level, 9**levels strings once expanded."""
    lines = [f"{indent}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_within_bounded_memory(tmp_path, experiment_yaml):
    experiment_yaml.write_text(experiment_yaml.read_text() + "vars:\n" + _laughs(indent="  "))
    # A separate process with a memory cap: if the bomb ever expanded, it would die there, not take the test run with it.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from metadg.config import ConfigError, load_config\n"
            "try:\n    load_config(sys.argv[1])\nexcept ConfigError as exc:\n    sys.exit(f'error: {exc}')")
    proc = subprocess.run([sys.executable, "-c", code, str(experiment_yaml)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"exp\.yaml:\d+: anchors and aliases here expand to more than 100,000 values", proc.stderr)


def test_alias_bombs_are_refused_in_includes_overrides_and_recursion(tmp_path, experiment_yaml):
    (tmp_path / "bomb.yaml").write_text("vars:\n" + _laughs(indent="  "))
    (tmp_path / "with-include.yaml").write_text("include: [exp.yaml, bomb.yaml]\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml:\d+: anchors and aliases .* \(included from .*with-include\.yaml\)"):
        load_config(tmp_path / "with-include.yaml")
    names = "abcdef"  # 10**6 strings from a one-line override
    items = ["&a [" + ", ".join(["lol"] * 10) + "]"] + [f"&{n} [{', '.join([f'*{p}'] * 10)}]" for p, n in zip(names, names[1:])]
    flow = "[" + ", ".join(items) + "]"
    with pytest.raises(ConfigError, match=r"override 'vars\.x=.*value:1: anchors and aliases"):
        load_config(experiment_yaml, [f"vars.x={flow}"])
    (tmp_path / "recursive.yaml").write_text("task: &t {name: spoof_detection, train: *t}\n")
    with pytest.raises(ConfigError, match=r"recursive\.yaml:1: an alias refers to a node that contains it"):
        load_raw(tmp_path / "recursive.yaml")
    # Shared anchors of normal size stay fine.
    (tmp_path / "shared.yaml").write_text(
        "include: exp.yaml\ntask:\n  dev: &c {name: synthetic, split: dev}\n  eval: {a: *c, b: *c}\n")
    shared = load_raw(tmp_path / "shared.yaml")["task"]
    assert shared["eval"]["a"] == shared["eval"]["b"] == {"name": "synthetic", "split": "dev"}


def test_var_expansion_bomb_is_refused(experiment_yaml):
    bomb = "vars:\n  v0: xxxxxxxxxx\n" + "".join(f"  v{i + 1}: '{'${v%d}' % i * 4}'\n" for i in range(30))
    experiment_yaml.write_text(experiment_yaml.read_text().replace("name: tiny", "name: ${v30}") + bomb)
    with pytest.raises(ConfigError, match=r"exp\.yaml: vars\.v\d+: \$\{\.\.\.\} expansion exceeds 1,000,000 characters"):
        load_config(experiment_yaml)


def test_include_fan_out_reads_each_file_once(tmp_path, experiment_yaml, monkeypatch):
    for level in range(10):  # level k includes level k+1 ten times: 10**10 reads if nothing were shared
        nxt = "exp.yaml" if level == 9 else f"level{level + 1}.yaml"
        (tmp_path / f"level{level}.yaml").write_text(yaml.safe_dump({"include": [nxt] * 10}))
    reads: list[Path] = []
    real = metadg.config.read_yaml
    monkeypatch.setattr(metadg.config, "read_yaml", lambda p: reads.append(Path(p)) or real(p))
    assert load_config(tmp_path / "level0.yaml").name == "tiny"
    assert len(reads) == len(set(reads)) == 11


BAD_CONFIGS = {  # name → (file text, or a patch of the valid experiment, and the expected message)
    "steps is a word": ({"train": {"steps": "many"}}, r"train\.steps: Input should be a valid integer.*'many'"),
    "list for a mapping": ({"train": [1, 2]}, r"train: Input should be a valid dictionary"),
    "list for a plugin section": ({"adapter": ["lora"]}, r"adapter: expected a mapping with a 'name' key, got list"),
    "plugin name is a list": ({"algorithm": {"name": ["erm"]}}, r"algorithm\.name: must be a plugin name, got list"),
    "seed out of range": ({"seed": 10**30}, r"seed: must be an integer from 0 to 2\*\*63 - 1"),
    "name leaves output_dir": ({"name": "../../elsewhere"}, r"name: '\.\./\.\./elsewhere' must be a relative folder name"),
    "absolute name": ({"name": "/tmp/elsewhere"}, r"name: '/tmp/elsewhere' must be a relative folder name"),
    "top level is a list": ("- task\n- model\n", r"exp\.yaml: top level must be a mapping, got list"),
    "top level is a string": ("just words\n", r"exp\.yaml: top level must be a mapping, got str"),
    "empty file": ("", r"exp\.yaml: task: missing section"),
    "non-string top key": ("1: one\n", r"exp\.yaml: 1: unknown key"),
    "duplicate key": ("seed: 1\nseed: 2\n", r"exp\.yaml:2: duplicate key 'seed' \(first on line 1\)"),
    "nested too deeply": ("a: " + "[" * 3000 + "]" * 3000 + "\n", r"exp\.yaml: invalid YAML: nested too deeply"),
    "include cycle": ("include: exp.yaml\n", r"exp\.yaml: include cycle"),
    "include of a folder": ("include: [.]\n", r"cannot read config file: .*Is a directory.*\(included from .*exp\.yaml\)"),
}


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_naming_the_key(experiment_yaml, tiny_config, sandbox, capsys, case):
    content, pattern = BAD_CONFIGS[case]
    text = content if isinstance(content, str) else yaml.safe_dump(_merge(tiny_config, content))
    experiment_yaml.write_text(text)
    box = sandbox()
    # Without --dry-run: a config error must stop `run` before anything is built or written.
    status, _, err = cli(capsys, "run", str(experiment_yaml))
    assert status == 2 and re.search(pattern, err), err
    assert box.written() == set()


@pytest.mark.parametrize(("override", "pattern"), [
    ("task.train.filters={atack: [A01]}", r"task\.train\.filters\.atack: unknown attribute 'atack'; did you mean 'attack'"),
    ("task.domain_key=speakr", r"task\.domain_key: unknown attribute 'speakr'; did you mean 'speaker'"),
])
def test_attribute_typos_found_when_reading_the_corpus_exit_2(experiment_yaml, tiny_config, sandbox, capsys, override, pattern):
    box = sandbox()
    status, _, err = cli(capsys, "run", str(experiment_yaml), "-o", override)
    assert status == 2 and re.search(pattern, err), err
    runs = Path(tiny_config["output_dir"])
    assert all(p == runs or runs in p.parents for p in box.written()), box.written()  # at most the run folder was started


def test_config_that_is_a_folder(tmp_path, capsys):
    status, _, err = cli(capsys, "run", str(tmp_path), "--dry-run")  # `run` resumes run folders, not any folder
    assert status == 2 and f"{tmp_path}: a folder but not a run folder to resume (no config.yaml)" in err
    status, _, err = cli(capsys, "params", str(tmp_path))
    assert status == 2 and f"{tmp_path}: cannot read config file" in err


PLUGINS = [  # dotted key, wrong name, kind in the message, the suggestion
    ("algorithm.name", "mdlg", "algorithm", "mldg"),
    ("adapter.name", "lroa", "adapter", "lora"),
    ("task.name", "spoof_detect", "task", "spoof_detection"),
    ("model.backbone.name", "ssll", "backbone", "ssl"),
    ("model.head.name", "aasits", "head", "aasist"),
    ("task.train.name", "synthetik", "corpus", "synthetic"),
]


@pytest.mark.parametrize(("key", "wrong", "kind", "right"), PLUGINS)
def test_unknown_plugin_name_suggests_and_lists_choices(experiment_yaml, capsys, key, wrong, kind, right):
    status, _, err = cli(capsys, "run", str(experiment_yaml), "--dry-run", "-o", f"{key}={wrong}")
    assert status == 2
    assert re.search(rf"{re.escape(key)}: unknown {kind} '{wrong}'; did you mean '{right}'\? \(valid: .*{right}", err), err


# ---------------------------------------------------------------- checkpoints, `metadg eval` and `metadg score`


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synthetic_cache) -> Path:
    """A run folder trained for one step (its checkpoint is the real thing the hostile ones imitate)."""
    corpus = {"name": "synthetic", "cache_dir": synthetic_cache, "duration_s": 0.5}
    cfg = {
        "name": "trained", "seed": 0, "output_dir": str(tmp_path_factory.mktemp("runs")),
        "task": {"name": "spoof_detection", "crop_samples": 8000,
                 "train": {**corpus, "split": "train", "n_bonafide": 40, "n_per_attack": 20},
                 "dev": {**corpus, "split": "dev", "n_bonafide": 20, "n_per_attack": 10}},
        "model": {"backbone": {"name": "ssl", "preset": "tiny"}, "head": {"name": "linear"}},
        "adapter": {"name": "lora", "r": 4}, "algorithm": {"name": "erm"},
        "train": {"steps": 1, "eval_every": 1, "batch_per_domain": 2, "progress": False},
        "tracking": {"enabled": False},
    }
    return Path(Trainer(metadg.config.build_experiment(cfg)).fit().run_dir)


class Evil:
    """Unpickling this creates MARKER: the proof that a file was (wrongly) unpickled."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickles(marker: Path) -> tuple[bytes, bytes]:
    """A plain pickle and a torch .pt file that create `marker` when unpickled."""
    Evil.marker = str(marker)
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": Evil()}, buf)
    return pickle.dumps(Evil()), buf.getvalue()


def _checkpoint_cases(d: Path, good: Path) -> dict[str, Path]:
    meta, weights = (good / "meta.json").read_bytes(), (good / "trainable.safetensors").read_bytes()
    plain_pickle, torch_pt = _pickles(d / "MARKER")
    rng = np.random.default_rng(0)
    layouts = {
        "random bytes": {"meta.json": rng.bytes(200), "trainable.safetensors": rng.bytes(200)},
        "JSON of another format": {"meta.json": json.dumps({"architectures": ["Wav2Vec2Model"]}).encode(),
                                   "trainable.safetensors": weights},
        "a pickle under the safetensors name": {"meta.json": meta, "trainable.safetensors": plain_pickle},
        "a torch .pt under the safetensors name": {"meta.json": meta, "trainable.safetensors": torch_pt},
        "only .pt/.bin pickles": {"model.pt": torch_pt, "pytorch_model.bin": torch_pt, "checkpoint.pkl": plain_pickle},
        "empty folder": {},
    }
    cases = {}
    for name, files in layouts.items():
        folder = d / re.sub(r"\W+", "-", name)
        folder.mkdir()
        for file, data in files.items():
            (folder / file).write_bytes(data)
        cases[name] = folder
    (d / "a-file").write_bytes(torch_pt)
    cases["a file, not a folder"] = d / "a-file"
    return cases


CHECKPOINT_CASES = ["random bytes", "JSON of another format", "a pickle under the safetensors name",
                    "a torch .pt under the safetensors name", "only .pt/.bin pickles", "empty folder", "a file, not a folder"]


def test_the_marker_pickles_would_fire_if_unpickled(tmp_path):
    plain, pt = _pickles(tmp_path / "MARKER")
    pickle.loads(plain)
    assert (tmp_path / "MARKER").exists()
    (tmp_path / "MARKER").unlink()
    torch.load(io.BytesIO(pt), weights_only=False)
    assert (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_not_a_checkpoint_is_refused_and_never_unpickled(tmp_path, run_dir, sandbox, capsys, case):
    folder = _checkpoint_cases(tmp_path, run_dir / "checkpoints" / "best")[case]
    with pytest.raises(CheckpointError, match=re.escape(str(folder))):
        load_trained(folder)
    sf.write(tmp_path / "clip.wav", tone(), SR)
    box = sandbox(run_dir)
    for command in (["score", str(folder), str(tmp_path / "clip.wav"), "--out", str(tmp_path / "out.csv")],
                    ["eval", str(folder), "--out", str(tmp_path / "eval")]):
        status, _, err = cli(capsys, *command)
        assert status == 1 and str(folder) in err
    assert not (tmp_path / "MARKER").exists()
    assert box.written() == set()


def _patched_checkpoint(tmp_path: Path, good: Path, meta_text: str | None = None, tensors=None) -> Path:
    """A copy of `good` with meta.json replaced by `meta_text` and/or the tensors mapped through `tensors`."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "meta.json").write_text(meta_text if meta_text is not None else (good / "meta.json").read_text())
    weights = load_file(str(good / "trainable.safetensors"))
    save_file(tensors(weights) if tensors else weights, str(folder / "trainable.safetensors"))
    return folder


BROKEN_CHECKPOINTS = {  # a metadg checkpoint broken one way: how its meta.json and/or tensors are replaced
    "meta.json is a JSON list": dict(meta_text="[1, 2]"),
    "meta.json nested 100,000 deep": dict(meta_text="[" * 100_000 + "]" * 100_000),
    "meta.json without config": dict(meta_text=json.dumps({"format": "metadg-checkpoint/1"})),
    "tensors of another model": dict(tensors=lambda w: {"x": torch.zeros(3)}),
    "tensors of the wrong shape": dict(tensors=lambda w: {k: torch.zeros(1) for k in w}),
    "NaN tensors": dict(tensors=lambda w: {k: torch.full_like(v, float("nan")) for k, v in w.items()}),
}


@pytest.mark.parametrize("case", list(BROKEN_CHECKPOINTS))
def test_corrupt_metadg_checkpoint_is_refused(tmp_path, run_dir, capsys, case):
    good = run_dir / "checkpoints" / "best"
    folder = _patched_checkpoint(tmp_path, good, **BROKEN_CHECKPOINTS[case])
    with pytest.raises(CheckpointError, match=re.escape(str(folder))):
        load_trained(folder)


def test_score_reports_each_unreadable_file_in_its_own_row(tmp_path, run_dir, sandbox, capsys):
    inbox = tmp_path / "inbox"
    bad = {p.name: pattern for p, _, pattern in _audio_cases(inbox).values() if p.is_file()}
    out = tmp_path / "scores.csv"
    box = sandbox(run_dir)
    status, stdout, _ = cli(capsys, "score", str(run_dir), str(inbox), "--out", str(out))
    assert status == 0 and f"{len(bad)} unreadable" in stdout
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert set(rows) == set(bad) | {"good.wav", "good-flac.flac"}  # every file has a row, none lost
    for name, pattern in bad.items():
        assert rows[name]["score"] == "" and re.search(pattern, rows[name]["error"]), (name, rows[name])
    for name in ("good.wav", "good-flac.flac"):
        assert np.isfinite(float(rows[name]["score"])) and rows[name]["error"] == ""
    assert box.written() == {out}


def test_score_reports_a_dangling_symlink(tmp_path, run_dir, capsys):
    (tmp_path / "inbox").mkdir()
    sf.write(tmp_path / "inbox" / "good.wav", tone(), SR)
    (tmp_path / "inbox" / "gone.wav").symlink_to(tmp_path / "unmounted" / "gone.wav")
    cli(capsys, "score", str(run_dir), str(tmp_path / "inbox"), "--out", str(tmp_path / "s.csv"))
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "s.csv").open())}
    assert "file not found" in rows["gone.wav"]["error"]


@pytest.fixture
def eval_sets(tmp_path) -> dict[str, Path]:
    """`--sets` files for a list corpus with two unusable files (NaN samples, truncated), per on_error policy."""
    _audio_cases(tmp_path / "audio")
    sf.write(tmp_path / "audio" / "other.wav", tone(hz=440.0), SR)
    lines = ["path,label", "audio/good.wav,bonafide", "audio/good-flac.flac,spoof", "audio/other.wav,spoof",
             "audio/nan.wav,spoof", "audio/wav-data.wav,bonafide"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    sets = {}
    for policy in ("raise", "skip"):
        sets[policy] = tmp_path / f"{policy}.yaml"
        spec = {"name": "list", "path": str(tmp_path / "list.csv"), "on_error": policy}
        sets[policy].write_text(yaml.safe_dump({"eval": {"x": spec}}))
    return sets


def test_eval_on_unreadable_audio_names_the_file(tmp_path, run_dir, eval_sets, sandbox, capsys):
    out = run_dir / "eval-raise"
    box = sandbox(run_dir)
    status, _, err = cli(capsys, "eval", str(run_dir), "--sets", str(eval_sets["raise"]), "--out", str(out))
    assert status == 1 and re.search(rf"{re.escape(str(tmp_path / 'audio' / 'nan.wav'))}: NaN or infinite samples", err)
    assert all(p == out or out in p.parents for p in box.written())


def test_eval_skips_and_counts_unreadable_audio(run_dir, eval_sets, sandbox, capsys):
    out = run_dir / "eval-skip"
    box = sandbox(run_dir)
    status, stdout, _ = cli(capsys, "eval", str(run_dir), "--sets", str(eval_sets["skip"]), "--out", str(out))
    assert status == 0 and re.search(r"^x +\d+\.\d+$", stdout, re.MULTILINE)
    assert json.loads((out / "metrics.json").read_text())["x"]["skipped"] == 2  # nan.wav and the truncated wav-data.wav
    written = box.written()
    assert out / "metrics.json" in written and all(p == out or out in p.parents for p in written)
