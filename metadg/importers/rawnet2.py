"""`metadg import rawnet2`: a checkpoint of clovaai/aasist's RawNet2Spoof (RawNet2_baseline.conf) as a run folder."""

from __future__ import annotations

from pathlib import Path

from metadg.importers.run_folder import import_run, renamer, spoof_config

#: published module → metadg module (the sinc filters are not in the state dict: they are not trained)
RENAMES: list[tuple[str, str]] = [
    (r"^first_bn\.", "backbone.first_bn."),
    (r"^block(\d)\.0\.conv_downsample\.", r"backbone.blocks.\1.skip."),
    (r"^block(\d)\.0\.", r"backbone.blocks.\1."),
    (r"^fc_attention(\d)\.0\.", r"backbone.scaling.\1.fc."),
    (r"^bn_before_gru\.", "backbone.bn_before_gru."),
    (r"^gru\.", "backbone.gru."),
    (r"^fc1_gru\.", "backbone.fc."),
    (r"^fc2_gru\.", "head.proj."),
]
metadg_key = renamer(RENAMES)


def import_rawnet2(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write a run folder holding the RawNet2 weights (the RawNet2_baseline.conf shape)."""
    model = {"backbone": {"name": "rawnet2"}, "head": {"name": "linear"}}
    return import_run(checkpoint, out_dir, "RawNet2", metadg_key, spoof_config(model),
                      "is it a RawNet2_baseline.conf model?")
