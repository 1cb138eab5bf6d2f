"""A TakHemlata/SSL_Anti-spoofing W2V2-AASIST state dict as a metadg run folder (the SSL-AASIST import).

The published files (`LA_model.pth`, `Best_LA_model_for_DF.pth`) are plain state dicts, read with
`torch.load(weights_only=True)`. They hold the fine-tuned XLS-R under `ssl_model.model.*` in fairseq's
layout (mapped with the converter's one key mapping, metadg.importers.fairseq_wav2vec2) and the
AASIST back-end (mapped onto metadg's `aasist` head). Every published key is mapped or an error names it.

The run folder this writes:

    OUT/backbone/        the fine-tuned XLS-R as a transformers folder (config.json, model.safetensors,
                         conversion.json): --backbone's config with the published weights
    OUT/config.yaml      model: {backbone: {name: ssl, pretrained: <absolute OUT/backbone>}, head: {name: aasist}},
                         adapter: head_only
    OUT/checkpoints/best the back-end's tensors (and BatchNorm statistics) + meta.json
    OUT/results.json

Why this layout: the fine-tuned encoder must travel with the run, and the one place metadg reads
backbone weights from is `pretrained`; saving them again as a `full` adapter checkpoint would store the
1.2 GB twice and load them twice. With `head_only` the checkpoint holds what is not in the backbone
folder, and its frozen-backbone fingerprint makes `metadg eval`/`score` refuse a backbone folder that
changed since the import. `model.init_from: OUT` then starts any adapter (lora, full, ...) from the merged
weights of both. `pretrained` is absolute because relative paths resolve against the working directory:
moving the run folder means editing it (in config.yaml and checkpoints/best/meta.json).

Only `config.json` of --backbone is read (its weights are replaced by the published ones). Nothing in the
state dict says whether the encoder is pre- or post-layer-norm, so --backbone must be the XLS-R the model
was trained from (XLS-R: feat_extract_norm "layer", do_stable_layer_norm true). SpecAugment is switched off
in the written backbone config (apply_spec_augment false), as SSL_Anti-spoofing calls fairseq with
mask=False: fine-tuning from the import continues the recipe's way.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from metadg.config import ConfigError
from metadg.engine.checkpoint import CheckpointError
from metadg.importers.aasist import SUFFIXES, graph_renames
from metadg.importers.fairseq_wav2vec2 import map_state_dict, write_hf_folder
from metadg.importers.run_folder import check_empty, load_published, renamer, spoof_config, write_run

SSL_PREFIX = "ssl_model.model."
#: published back-end module → metadg `aasist` head module (key prefixes; the rest of the key is unchanged)
RENAMES: list[tuple[str, str]] = [
    (r"^LL\.", "head.proj."),
    (r"^first_bn\.", "head.first_bn."),
    (r"^first_bn1\.", "head.encoder_bn."),
    (r"^encoder\.(\d+)\.0\.conv_downsample\.", r"head.encoder.\1.skip."),
    (r"^encoder\.(\d+)\.0\.", r"head.encoder.\1."),
    (r"^attention\.", "head.attention."),
    *graph_renames("head."),
    (r"^out_layer\.", "head.out."),
]
OTHER = "is it an SSL_Anti-spoofing W2V2-AASIST state dict, and --backbone the XLS-R it was fine-tuned from?"

metadg_key = renamer(RENAMES, SUFFIXES)


def _encoder_config(backbone: Path) -> Any:
    """The transformers config of --backbone (a local folder; only its config.json is read)."""
    from transformers import AutoConfig

    if not (backbone / "config.json").is_file():
        raise ConfigError(f"--backbone: {backbone} is not a Hugging Face model folder (no config.json); convert "
                          "the fairseq XLS-R checkpoint (xlsr2_300m.pt) to one first")
    config = AutoConfig.from_pretrained(str(backbone), local_files_only=True)
    if config.model_type != "wav2vec2":
        raise ConfigError(f"--backbone: {backbone} is a {config.model_type!r} model; SSL-AASIST's encoder is "
                          "wav2vec 2.0 (XLS-R)")
    config.apply_spec_augment = False  # the recipe fine-tunes without masking (fairseq mask=False)
    return config


def import_ssl_aasist(checkpoint: str | Path, out_dir: str | Path, *, backbone: str | Path) -> Path:
    """Write a run folder (backbone/, config.yaml, checkpoints/best, results.json) holding the published weights."""
    from transformers import Wav2Vec2Model

    checkpoint, out_dir, backbone = Path(checkpoint), Path(out_dir), Path(backbone).expanduser()
    check_empty(out_dir)
    config = _encoder_config(backbone)
    published = load_published(checkpoint)
    ssl = {k.removeprefix(SSL_PREFIX): v for k, v in published.items() if k.startswith(SSL_PREFIX)}
    if not ssl:
        raise CheckpointError(f"{checkpoint}: no {SSL_PREFIX}* keys: not an SSL-AASIST checkpoint ({OTHER})")
    encoder = Wav2Vec2Model(config).eval()
    mapped, record = map_state_dict(ssl, encoder.state_dict(), str(checkpoint), SSL_PREFIX)
    encoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}, strict=True)
    record = {"source": str(checkpoint.resolve()), "target": "transformers Wav2Vec2Model", "config_from": str(backbone),
              **record, "config": config.to_dict()}
    backend = {k: v for k, v in published.items() if not k.startswith(SSL_PREFIX)}
    del published, ssl, mapped
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_hf_folder(encoder, out_dir / "backbone", record)
        del encoder
        model = {"backbone": {"name": "ssl", "pretrained": str((out_dir / "backbone").resolve())},
                 "head": {"name": "aasist"}}
        return write_run(backend, checkpoint, out_dir, "SSL-AASIST", metadg_key,
                         spoof_config(model) | {"adapter": {"name": "head_only"}}, OTHER)
    except BaseException:
        # Leave nothing half-imported behind: the folder was empty (or absent) when we started.
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            for child in out_dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
