"""`wavefake`: WaveFake (Frank & Schönherr 2021) vocoder spoofs with optional LJSpeech bona fide."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError, FileCorpusConfig, Row
from metadg.tasks.spoof.open_corpora import BONAFIDE, OpenCorpus, Parts, audio_files, locate, stem_id


class WaveFakeConfig(FileCorpusConfig):
    """WaveFake (Frank & Schönherr 2021) vocoder spoofs, optionally with LJSpeech bona fide."""

    root: str = Field(description="WaveFake folder containing generated_audio/ (or generated_audio/ itself)")
    ljspeech_root: str | None = Field(
        None, description="folder containing LJSpeech-1.1/wavs/ (or LJSpeech-1.1/, or wavs/); default: spoofs only"
    )


@CORPORA.register("wavefake")
class WaveFakeCorpus(OpenCorpus):
    """WaveFake: attack = vocoder = generated_audio subfolder; LJSpeech (22.05 kHz) is resampled on load."""

    Config = WaveFakeConfig
    layout = "generated_audio/<ljspeech_melgan|ljspeech_hifiGAN|...>/*.wav; bona fide: LJSpeech-1.1/wavs/*.wav"

    def parts(self) -> Parts:
        """generated_audio/, then the LJSpeech wavs folder if configured."""
        cfg: WaveFakeConfig = self.cfg
        self.require(".")
        generated = locate(self.root, ["generated_audio"])
        vocoders = sorted(d for d in generated.iterdir() if d.is_dir())
        if not vocoders:
            raise CorpusError(
                f"{self.name}: no vocoder folders in {generated} (expected layout under {self.root}: {self.layout})"
            )
        parts = [(generated, lambda: self._spoofs(vocoders))]
        if cfg.ljspeech_root is not None:
            lj = locate(Path(cfg.ljspeech_root).expanduser(), ["LJSpeech-1.1"])
            wavs = lj / "wavs" if (lj / "wavs").is_dir() else lj
            if not wavs.is_dir() or not any(p.suffix.lower() == ".wav" for p in wavs.iterdir()):
                raise CorpusError(
                    f"{self.name}: no LJSpeech wavs under {cfg.ljspeech_root} (expected LJSpeech-1.1/wavs/*.wav)"
                )
            parts.append((wavs, lambda: self._bonafide(wavs)))
        return parts

    def _spoofs(self, vocoders: list[Path]) -> Iterator[Row]:
        """One spoof Row per wav of every vocoder folder."""
        for folder in vocoders:
            for path in audio_files(folder, (".wav",)):
                relative = Path(folder.name, path.name)
                attrs = {"attack": folder.name, "vocoder": folder.name}
                yield Row(stem_id(relative), relative, 0, attrs, str(path))

    def _bonafide(self, wavs: Path) -> Iterator[Row]:
        """One bona fide Row per LJSpeech wav."""
        for path in audio_files(wavs, (".wav",)):
            attrs = {"attack": BONAFIDE, "vocoder": BONAFIDE}
            yield Row(f"ljspeech/{path.stem}", Path(path.name), 1, attrs, str(path))
