"""ASVspoof 2019 LA, 2021 LA/DF and ASVspoof 5 readers: official protocol files → utterances."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError, FileCorpus, FileCorpusConfig, Row
from metadg.tasks.spoof.labels import normalize_label

Split = Literal["train", "dev", "eval"]
_KEYS: dict[str, int] = {"bonafide": 1, "spoof": 0}  # the keys every ASVspoof file uses; others go the slow way


class _Protocol(FileCorpus):
    """Shared parts of the ASVspoof readers: whitespace-split lines of a fixed field count."""

    default_label_map = normalize_label
    #: field counts a protocol line may have
    n_fields: ClassVar[tuple[int, ...]] = ()

    def fields(self, line: str, where: str) -> list[str]:
        """Split on any whitespace (mirrors use tabs or spaces) and check the field count."""
        fields = line.split()
        if len(fields) not in self.n_fields:
            allowed = " or ".join(map(str, self.n_fields))
            got = f"got {len(fields)}: {line[:120]!r}"
            raise CorpusError(f"{where}: expected {allowed} whitespace-separated fields, {got}")
        return fields

    def audio(self, folder: Path, name: str, where: str) -> Path | None:
        """`folder/name.flac` for a plain file name; a name with path parts goes through on_error."""
        # Protocol names are bare ids; '/', '\\' or '..' could point outside the audio folder
        # (and 'flac/../../x' may stay inside the root, so the base's root check would miss it).
        if "/" in name or "\\" in name or name in (".", ".."):
            self.fail("path outside root", f"{where}: file name {name!r} is not a plain name (it could leave {folder})")
            return None
        return folder / f"{name}.flac"

    def row(self, utt: str, folder: Path, key: str, attrs: dict[str, str], where: str) -> Row | None:
        """A Row with an absolute path; bona fide rows get attack '-' so `filters: {attack: [...]}` keeps them."""
        path = self.audio(folder, utt, where)
        if path is None:
            return None
        label = _KEYS.get(key)
        if label is None:
            try:
                label = normalize_label(key)
            except CorpusError:
                label = key  # the base reports it as 'unknown label' with file and line
        if label == 1:
            attrs["attack"] = "-"
        return Row(utt, path, label, attrs, where)


def _find(reader: FileCorpus, base: Path, relative: str | Path) -> Path:
    """`base/relative`, else an error naming the path looked for and the expected layout."""
    path = base / relative
    if path.exists():
        return path
    expected = f"expected layout: {reader.layout}"
    if not base.is_dir():
        raise CorpusError(f"{reader.name}: corpus root {base} does not exist (looked for {path}; {expected})")
    raise CorpusError(f"{reader.name}: {path} not found ({expected})")


# ---------------------------------------------------------------- ASVspoof 2019 LA

_PROTOCOL_2019 = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}


class ASVspoof2019LAConfig(FileCorpusConfig):
    """ASVspoof 2019 logical access (LA), one split."""

    split: Split = Field(..., description="train (A01-A06), dev (A01-A06) or eval (A07-A19)")


@CORPORA.register("asvspoof2019_la")
class ASVspoof2019LA(_Protocol):
    """ASVspoof 2019 LA: attributes speaker, attack (A01-A19, '-' for bona fide), corpus."""

    Config = ASVspoof2019LAConfig
    n_fields = (5,)
    layout = (
        "root/LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{train.trn,dev.trl,eval.trl}.txt "
        "(lines 'SPEAKER FILE - SYSTEM KEY') and root/LA/ASVspoof2019_LA_{train,dev,eval}/flac/FILE.flac"
    )

    def __init__(self, cfg: ASVspoof2019LAConfig) -> None:
        super().__init__(cfg)
        self.folder = self.root.absolute() / "LA" / f"ASVspoof2019_LA_{cfg.split}" / "flac"

    def protocol_files(self) -> list[Path]:
        """The split's CM protocol."""
        name = f"ASVspoof2019.LA.cm.{_PROTOCOL_2019[self.cfg.split]}.txt"
        return [_find(self, self.root, Path("LA", "ASVspoof2019_LA_cm_protocols", name))]

    def parse_line(self, line: str, where: str) -> Row | None:
        """'LA_0079 LA_T_1004644 - A01 spoof' → Row."""
        speaker, utt, _, system, key = self.fields(line, where)
        return self.row(utt, self.folder, key, {"speaker": speaker, "attack": system}, where)


# ---------------------------------------------------------------- ASVspoof 2021 LA / DF

Subset = Literal["eval", "progress", "hidden"]


class ASVspoof2021Config(FileCorpusConfig):
    """ASVspoof 2021 evaluation data (LA or DF) read with the published keys."""

    subsets: list[Subset] = Field(
        ["eval"],
        min_length=1,
        description="key 'subset' values to keep: eval (the published numbers), progress, hidden; "
        "rows of other subsets are passed over",
    )
    audio_root: str | None = Field(
        None,
        description="folder holding ASVspoof2021_{LA,DF}_eval/ when it is not next to keys/ under root "
        "(the keys package is often unpacked separately)",
    )


class _ASVspoof2021(_Protocol):
    """Shared 2021 reader: `root` holds keys/{LA,DF}/CM/trial_metadata.txt; audio under audio_root or root."""

    Config = ASVspoof2021Config
    track: ClassVar[str] = ""
    #: attribute names of the key columns, in file order; 'label' is the key
    columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: ASVspoof2021Config) -> None:
        super().__init__(cfg)
        self.keys_root = self.root
        if cfg.audio_root is not None:
            # The base resolves audio paths against (and keeps them inside) self.root.
            self.root = Path(cfg.audio_root).expanduser()
        self.folder = self.root.absolute() / f"ASVspoof2021_{self.track}_eval" / "flac"
        self.subsets = frozenset(cfg.subsets)

    def protocol_files(self) -> list[Path]:
        """The track's CM key file."""
        return [_find(self, self.keys_root, Path("keys", self.track, "CM", "trial_metadata.txt"))]

    def parse_line(self, line: str, where: str) -> Row | None:
        """One key line → Row; rows of subsets not asked for → None."""
        record = dict(zip(self.columns, self.fields(line, where)))
        if record["subset"] not in self.subsets:
            return None
        utt, key = record.pop("trial"), record.pop("label")
        return self.row(utt, self.folder, key, record, where)


@CORPORA.register("asvspoof2021_la")
class ASVspoof2021LA(_ASVspoof2021):
    """ASVspoof 2021 LA eval: speaker, codec, transmission, attack, trim, subset."""

    track = "LA"
    n_fields = (8,)
    # file columns: spk trial codec trans attack label trim subset
    columns = ("speaker", "trial", "codec", "transmission", "attack", "label", "trim", "subset")
    layout = (
        "root/keys/LA/CM/trial_metadata.txt (8 columns 'spk trial codec trans attack label trim subset') and "
        "root/ASVspoof2021_LA_eval/flac/TRIAL.flac (or audio_root/ASVspoof2021_LA_eval/flac/TRIAL.flac)"
    )


@CORPORA.register("asvspoof2021_df")
class ASVspoof2021DF(_ASVspoof2021):
    """ASVspoof 2021 DF eval: speaker, codec (the 'compr' column), source, attack, trim, subset, vocoder, ..."""

    track = "DF"
    n_fields = (13,)
    # file columns: speaker trial compr source attack label trim subset vocoder task team gender-pair language;
    # 'compr' is named codec like LA's and ASVspoof 5's column so one filter works across corpora.
    columns = (
        "speaker", "trial", "codec", "source", "attack", "label", "trim", "subset",
        "vocoder", "task", "team", "gender_pair", "language",
    )  # fmt: skip
    layout = (
        "root/keys/DF/CM/trial_metadata.txt (13 columns 'speaker trial compr source attack label trim subset "
        "vocoder task team gender-pair language') and root/ASVspoof2021_DF_eval/flac/TRIAL.flac "
        "(the four eval parts unpacked into one folder; or audio_root/ASVspoof2021_DF_eval/flac/TRIAL.flac)"
    )


# ---------------------------------------------------------------- ASVspoof 5

_PROTOCOL_5 = {"train": "ASVspoof5.train.tsv", "dev": "ASVspoof5.dev.track_1.tsv", "eval": "ASVspoof5.eval.track_1.tsv"}
_AUDIO_5 = {"train": "flac_T", "dev": "flac_D", "eval": "flac_E_eval"}


class ASVspoof5Config(FileCorpusConfig):
    """ASVspoof 5 track 1 (countermeasures), one split."""

    split: Split = Field(..., description="train (A01-A08), dev (A09-A16) or eval (A17-A32, codecs C01-C11)")
    protocol: str | None = Field(
        None, description="protocol file relative to root (or absolute) when it is not named or placed as released"
    )


@CORPORA.register("asvspoof5")
class ASVspoof5(_Protocol):
    """ASVspoof 5: speaker, gender, codec, codec_q, codec_seed, attack_tag, attack (A01-A32, '-' bona fide)."""

    Config = ASVspoof5Config
    n_fields = (10,)
    layout = (
        "root/ASVspoof5.{train,dev.track_1,eval.track_1}.tsv (10 space- or tab-separated columns "
        "'SPEAKER_ID FLAC_FILE_NAME SPEAKER_GENDER CODEC CODEC_Q CODEC_SEED ATTACK_TAG ATTACK_LABEL KEY TMP') "
        "and root/{flac_T,flac_D,flac_E_eval}/FLAC_FILE_NAME.flac"
    )

    def __init__(self, cfg: ASVspoof5Config) -> None:
        super().__init__(cfg)
        self.folder = self.root.absolute() / _AUDIO_5[cfg.split]

    def protocol_files(self) -> list[Path]:
        """The configured protocol file, else the split's released one."""
        return [_find(self, self.root, self.cfg.protocol or _PROTOCOL_5[self.cfg.split])]

    def parse_line(self, line: str, where: str) -> Row | None:
        """'T_4850 T_0000000000 F - - - AC3 A05 spoof -' → Row."""
        speaker, utt, gender, codec, codec_q, codec_seed, tag, attack, key, _ = self.fields(line, where)
        attrs = {"speaker": speaker, "gender": gender, "codec": codec, "codec_q": codec_q,
                 "codec_seed": codec_seed, "attack_tag": tag, "attack": attack}  # fmt: skip
        return self.row(utt, self.folder, key, attrs, where)
